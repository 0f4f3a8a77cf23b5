"""The modern-blocks chapter's exercise checks: each accepts right answers written in different
ways, rejects the usual wrong ones with the matching explanation, and reminds when unanswered;
and the chapter's experiment models really are of the same size."""

import pytest
import torch
import torch.nn.functional as F

from mini_gpt import GPT, course
from mini_gpt.attention import KVCache

from check_helpers import fails, passes

CHECKS = [course.check_rms_norm, course.check_swiglu, course.check_repeat_kv, course.check_kv_cache_bytes]


@pytest.mark.parametrize("check", CHECKS)
def test_none_gets_the_reminder(check, capsys):
    assert check(lambda *args: None) is None
    assert capsys.readouterr().out.startswith("\u270e ")


# ---------------------------------------------------------------------------- RMSNorm


def test_rms_norm_right_answers(capsys):
    def by_hand(x, weight, eps):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def with_torch(x, weight, eps):
        norm = torch.nn.RMSNorm(x.shape[-1], eps=eps)
        norm.weight.data.copy_(weight)
        return norm(x)

    assert "3 shapes" in passes(course.check_rms_norm, by_hand, capsys)
    passes(course.check_rms_norm, with_torch, capsys)


@pytest.mark.parametrize("wrong, match", [
    (lambda x, w, e: F.layer_norm(x, (x.shape[-1],), w, None, e), r"the mean is subtracted first: that is LayerNorm"),
    (lambda x, w, e: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + e), r"the gain is missing"),
    (lambda x, w, e: w * x / (x.pow(2).mean(-1, keepdim=True) + e), r"the square root is missing"),
    (lambda x, w, e: w * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + e), r"eps is added outside"),
    (lambda x, w, e: w * x / (x.pow(2).sum(-1, keepdim=True) + e).sqrt(), r"summed, not averaged"),
    (lambda x, w, e: w * x / (x.pow(2).mean(0, keepdim=True) + e).sqrt(), r"the wrong dimension"),
    (lambda x, w, e: x.sum(-1), r"has shape"),
])
def test_rms_norm_wrong_answers(wrong, match):
    fails(course.check_rms_norm, wrong, match)


# ---------------------------------------------------------------------------- SwiGLU


def test_swiglu_right_answers(capsys):
    def by_hand(x, w_gate, w_up, w_down):
        gate = x @ w_gate.T
        return (gate * torch.sigmoid(gate) * (x @ w_up.T)) @ w_down.T

    def stacked(x, w_gate, w_up, w_down):  # one matmul for both branches, as mini_gpt's c_fc
        g, u = F.linear(x, torch.cat([w_gate, w_up])).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, w_down)

    passes(course.check_swiglu, by_hand, capsys)
    passes(course.check_swiglu, stacked, capsys)


@pytest.mark.parametrize("wrong, match", [
    (lambda x, g, u, d: F.linear(F.linear(x, g) * F.silu(F.linear(x, u)), d), r"SiLU is applied to the up branch"),
    (lambda x, g, u, d: F.linear(torch.sigmoid(F.linear(x, g)) * F.linear(x, u), d), r"a plain sigmoid"),
    (lambda x, g, u, d: F.linear(F.gelu(F.linear(x, g)) * F.linear(x, u), d), r"the activation is GELU"),
    (lambda x, g, u, d: F.linear(F.silu(F.linear(x, g)), d), r"the up branch is missing"),
    (lambda x, g, u, d: F.linear(F.silu(F.linear(x, g)) + F.linear(x, u), d), r"the gate is added"),
])
def test_swiglu_wrong_answers(wrong, match):
    fails(course.check_swiglu, wrong, match)


def test_swiglu_untransposed_weights_are_named():
    # shapes only fit untransposed for a square layer: the (3, 1, 4, 4) case
    def untransposed(x, g, u, d):
        if g.shape[0] != g.shape[1]:
            return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)
        return (F.silu(x @ g) * (x @ u)) @ d

    fails(course.check_swiglu, untransposed, r"untransposed")


# ---------------------------------------------------------------------------- sharing kv heads


def test_repeat_kv_right_answers(capsys):
    def expand(k, n_rep):  # Llama's repeat_kv: expand a new axis, then merge it into the heads
        B, H, T, hs = k.shape
        return k[:, :, None].expand(B, H, n_rep, T, hs).reshape(B, H * n_rep, T, hs)

    passes(course.check_repeat_kv, expand, capsys)
    passes(course.check_repeat_kv, lambda k, n: torch.repeat_interleave(k, n, dim=1), capsys)


@pytest.mark.parametrize("wrong, match", [
    (lambda k, n: k.repeat(1, n, 1, 1), r"tiled"),
    (lambda k, n: k.repeat_interleave(n, dim=2), r"along the positions"),
    (lambda k, n: k.repeat_interleave(n, dim=0), r"along the batch"),
    (lambda k, n: k, r"has shape"),
])
def test_repeat_kv_wrong_answers(wrong, match):
    fails(course.check_repeat_kv, wrong, match)


# ---------------------------------------------------------------------------- cache bytes


def test_kv_cache_bytes_right_answers(capsys):
    passes(course.check_kv_cache_bytes, lambda L, H, K, d, b: 2 * L * K * d * b, capsys)
    passes(course.check_kv_cache_bytes, lambda L, H, K, d, b: torch.tensor(2 * L * K * d * b), capsys)


@pytest.mark.parametrize("wrong, match", [
    (lambda L, H, K, d, b: 2 * L * H * d * b, r"the query heads are counted"),
    (lambda L, H, K, d, b: L * K * d * b, r"only the keys"),
    (lambda L, H, K, d, b: 2 * K * d * b, r"one layer is counted"),
    (lambda L, H, K, d, b: 2 * L * K * d, r"in numbers, not bytes"),
    (lambda L, H, K, d, b: 2 * L * K * d * b + 1, r"expected 73,728 bytes, got 73,729"),
])
def test_kv_cache_bytes_wrong_answers(wrong, match):
    fails(course.check_kv_cache_bytes, wrong, match)


# ---------------------------------------------------------------------------- the experiment


def test_experiment_models_have_the_same_size():
    configs = course.experiment_configs()
    gpt2, llama = (GPT(c).num_parameters() for c in configs.values())
    assert abs(gpt2 - llama) / gpt2 < 0.005
    c = configs["Llama-style"]
    assert (c.norm, c.mlp, c.kv_heads, c.bias, c.tie_embeddings, c.pos_encoding) == (
        "rmsnorm", "swiglu", 2, False, False, "rope")


def test_kv_cache_table_uses_the_library():
    rows = {r["model"]: r for r in course.kv_cache_table(context=1024, dtype=torch.bfloat16)}
    assert rows["GPT-2 124M"]["KiB/token"] == 2 * 12 * 12 * 64 * 2 / 1024
    assert rows["Llama 3 8B"]["KiB/token"] * 4 == rows["Llama 2 7B"]["KiB/token"]  # 8 kv heads of 32
    cfg = course.experiment_configs()["Llama-style"]
    assert KVCache.bytes_per_token(cfg) == 2 * 2 * 2 * 16 * 4
