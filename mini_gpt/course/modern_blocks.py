"""The modern-blocks chapter's pieces: the two models of its experiment, the KV-cache memory
table, and the exercise checks (RMSNorm, SwiGLU, sharing keys and values across heads, the
KV cache's bytes per token)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import KVCache
from ..config import GPTConfig
from .checking import Answer, Case, as_int, probably, random_generator, run_check

__all__ = [
    "experiment_configs", "kv_cache_table",
    "check_rms_norm", "check_swiglu", "check_repeat_kv", "check_kv_cache_bytes",
]

# the experiment's shape: small enough that both models train in the chapter on a 2-core CPU
_EXPERIMENT = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)
# SwiGLU width that brings the Llama-style model to the GPT-2-style one's parameter count
# (108,480 against 108,352: 0.1% apart): the untied head and RMSNorm-without-bias, GQA's smaller
# c_attn and RoPE's missing position table all change the count, and the MLP width evens it out
_EXPERIMENT_SWIGLU_HIDDEN = 196


def experiment_configs() -> dict[str, GPTConfig]:
    """The chapter's two models, of (almost) the same parameter count: GPT-2's blocks (LayerNorm,
    GELU, learned positions, biases, tied head) and Llama's (RMSNorm, SwiGLU, RoPE, 2 kv heads
    for 4 query heads, no biases, untied head)."""
    return {
        "GPT-2-style": GPTConfig(**_EXPERIMENT),
        "Llama-style": GPTConfig(**_EXPERIMENT, bias=False, pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
                                 mlp_hidden=_EXPERIMENT_SWIGLU_HIDDEN, n_kv_head=2, tie_embeddings=False),
    }


# real model shapes for the memory table: (n_layer, n_head, n_kv_head, head_dim)
_TABLE_SHAPES = {
    "GPT-2 124M": (12, 12, 12, 64),
    "GPT-2 XL 1.5B": (48, 25, 25, 64),
    "Llama 2 7B": (32, 32, 32, 128),
    "Llama 3 8B": (32, 32, 8, 128),
    "Llama 3 70B": (80, 64, 8, 128),
    "TinyLlama 1.1B": (22, 32, 4, 64),
}


def kv_cache_table(context: int = 8192, dtype: torch.dtype = torch.bfloat16) -> list[dict[str, object]]:
    """One row per model shape: its heads, the KV cache's bytes per token (from
    `KVCache.bytes_per_token`) and the GiB one sequence of `context` tokens takes, in `dtype`."""
    rows = []
    for name, (n_layer, n_head, n_kv_head, head_dim) in _TABLE_SHAPES.items():
        config = GPTConfig(vocab_size=1, block_size=1, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim,
                           n_kv_head=n_kv_head)
        per_token = KVCache.bytes_per_token(config, dtype)
        rows.append({"model": name, "n_head": n_head, "n_kv_head": n_kv_head, "KiB/token": per_token / 1024,
                     f"GiB at {context} tokens": per_token * context / 2**30})
    return rows


# ---------------------------------------------------------------------------- RMSNorm


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def _rms_mistakes(x: torch.Tensor, weight: torch.Tensor, eps: float):
    ms = x.pow(2).mean(-1, keepdim=True)
    return [
        ("the mean is subtracted first: that is LayerNorm; RMSNorm only divides by sqrt(mean(x^2) + eps)",
         lambda: F.layer_norm(x, (x.shape[-1],), weight, None, eps)),
        ("the gain is missing: multiply by weight at the end", lambda: x * torch.rsqrt(ms + eps)),
        ("the square root is missing: divide by sqrt(mean(x^2) + eps), the root mean square",
         lambda: weight * x / (ms + eps)),
        ("eps is added outside the square root: sqrt(mean(x^2) + eps), not sqrt(mean(x^2)) + eps",
         lambda: weight * x / (ms.sqrt() + eps)),
        ("the squares are summed, not averaged: mean over the last dimension",
         lambda: weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)),
        ("the mean runs over the wrong dimension: normalise each vector over its last dimension",
         lambda: weight * x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps)),
    ]


def check_rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """fn(x, weight, eps) -> RMSNorm of x (..., d) over its last dimension:
    x / sqrt(mean(x^2) + eps) * weight. Compared with `torch.nn.functional.rms_norm`."""
    g = random_generator(19)
    inputs = (((2, 5, 8), 1e-5), ((3, 16), 1e-6), ((1, 4, 3, 32), 0.1))
    cases = []
    for shape, eps in inputs:
        x = torch.randn(shape, generator=g) * 3 + 0.5  # a mean away from 0, so LayerNorm differs
        weight = torch.rand(shape[-1], generator=g) + 0.5
        cases.append(Case(f"x of shape {shape}, eps={eps:g}", (x, weight, eps)))
    run_check(fn, "check_rms_norm", cases, reference=_rms_norm, against="torch.nn.functional.rms_norm", atol=1e-5,
              mistakes=_rms_mistakes, passed=f"matches torch's RMSNorm on {len(inputs)} shapes")


# ---------------------------------------------------------------------------- SwiGLU


def _swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def _swiglu_mistakes(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor):
    gate, up = F.linear(x, w_gate), F.linear(x, w_up)
    return [
        ("SiLU is applied to the up branch: the gate is silu(x @ w_gate.T), the up branch stays linear",
         lambda: F.linear(gate * F.silu(up), w_down)),
        ("the activation is a plain sigmoid: SiLU is z * sigmoid(z)", lambda: F.linear(torch.sigmoid(gate) * up, w_down)),
        ("the activation is GELU: Llama's gate uses SiLU (z * sigmoid(z))", lambda: F.linear(F.gelu(gate) * up, w_down)),
        ("the up branch is missing: multiply the gate by x @ w_up.T", lambda: F.linear(F.silu(gate), w_down)),
        ("the gate is added to the up branch: a gated unit multiplies them", lambda: F.linear(F.silu(gate) + up, w_down)),
        ("the weights are used untransposed: nn.Linear computes x @ W.T (F.linear(x, W))",
         lambda: (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down),
    ]


def check_swiglu(fn: Callable[..., torch.Tensor]) -> None:
    """fn(x, w_gate, w_up, w_down) -> Llama's MLP, (silu(x W_gate^T) * (x W_up^T)) W_down^T, with
    the weights shaped as nn.Linear's: w_gate and w_up (hidden, d), w_down (d, hidden)."""
    g = random_generator(20)
    inputs = ((2, 3, 8, 12), (1, 5, 16, 40), (3, 1, 4, 4))
    cases = []
    for B, T, d, hidden in inputs:
        x = torch.randn(B, T, d, generator=g)
        w_gate, w_up = torch.randn(2, hidden, d, generator=g) / math.sqrt(d)
        w_down = torch.randn(d, hidden, generator=g) / math.sqrt(hidden)
        cases.append(Case(f"x of shape {(B, T, d)}, hidden={hidden}", (x, w_gate, w_up, w_down)))
    run_check(fn, "check_swiglu", cases, reference=_swiglu, against="SwiGLU written with F.linear and F.silu",
              atol=1e-5, mistakes=_swiglu_mistakes, passed=f"matches SwiGLU on {len(inputs)} shapes")


# ---------------------------------------------------------------------------- sharing keys and values


def _repeat_kv(k: torch.Tensor, n_rep: int) -> torch.Tensor:
    return k.repeat_interleave(n_rep, dim=1)


def _repeat_mistakes(k: torch.Tensor, n_rep: int):
    return [
        ("the kv heads are tiled (head h gets kv head h % n_kv_head): query heads 0 .. n_rep-1 share kv "
         "head 0, so repeat each head in place (repeat_interleave on dim 1), not the whole block",
         lambda: k.repeat(1, n_rep, 1, 1)),
        ("the copies go along the positions (dim 2): repeat the heads, dim 1", lambda: k.repeat_interleave(n_rep, dim=2)),
        ("the copies go along the batch (dim 0): repeat the heads, dim 1", lambda: k.repeat_interleave(n_rep, dim=0)),
    ]


def check_repeat_kv(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """fn(k, n_rep) -> k with every kv head repeated n_rep times in place: k (B, n_kv_head, T, hs)
    becomes (B, n_kv_head * n_rep, T, hs), query head h reading kv head h // n_rep (as in Llama's
    `repeat_kv` and mini_gpt's explicit attention path)."""
    g = random_generator(21)
    inputs = (((1, 2, 3, 4), 2), ((2, 1, 5, 8), 4), ((2, 3, 2, 4), 3), ((1, 4, 3, 2), 1))
    cases = [Case(f"k of shape {shape}, n_rep={n}", (torch.randn(shape, generator=g), n)) for shape, n in inputs]
    run_check(fn, "check_repeat_kv", cases, reference=_repeat_kv, against="k.repeat_interleave(n_rep, dim=1)",
              atol=0.0, mistakes=_repeat_mistakes, passed=f"shares the kv heads right on {len(inputs)} shapes")


# ---------------------------------------------------------------------------- cache memory


def _cache_bytes(n_layer: int, n_head: int, n_kv_head: int, head_dim: int, bytes_per_number: int) -> int:
    config = GPTConfig(vocab_size=1, block_size=1, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim,
                       n_kv_head=n_kv_head)
    dtype = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32, 8: torch.float64}[bytes_per_number]
    return KVCache.bytes_per_token(config, dtype)


def _cache_mistakes(n_layer: int, n_head: int, n_kv_head: int, head_dim: int, b: int):
    return [
        ("the query heads are counted: the cache keeps only the n_kv_head heads of keys and values",
         lambda: 2 * n_layer * n_head * head_dim * b),
        ("only the keys are counted: the cache holds a key *and* a value per head (the factor 2)",
         lambda: n_layer * n_kv_head * head_dim * b),
        ("one layer is counted: every layer keeps its own keys and values (times n_layer)",
         lambda: 2 * n_kv_head * head_dim * b),
        ("the answer is in numbers, not bytes: multiply by bytes_per_number",
         lambda: 2 * n_layer * n_kv_head * head_dim),
    ]


def _cache_call(answer: Answer, case: Case):
    out = answer.call(case.args, case.where)
    return None if out is None else as_int(answer, out, case.where)


def check_kv_cache_bytes(fn: Callable[[int, int, int, int, int], int]) -> None:
    """fn(n_layer, n_head, n_kv_head, head_dim, bytes_per_number) -> the bytes one token adds to
    one sequence's KV cache. Compared with `mini_gpt.attention.KVCache.bytes_per_token`."""
    shapes = ((12, 12, 12, 64, 4), (32, 32, 8, 128, 2), (22, 32, 4, 64, 2), (80, 64, 8, 128, 1), (2, 4, 1, 16, 4))
    cases = [Case(f"n_layer={L}, n_head={H}, n_kv_head={K}, head_dim={d}, bytes_per_number={b}", (L, H, K, d, b))
             for L, H, K, d, b in shapes]
    run_check(fn, "check_kv_cache_bytes", cases, reference=_cache_bytes, call=_cache_call, convert=lambda a, o, w: o,
              agree=lambda a, b: a == b, mistakes=_cache_mistakes,
              report=lambda answer, out, expected, case, hints: answer.fail(
                  f"on {case.where} expected {expected:,} bytes, got {out:,}" + probably(hints[:1])),
              passed=f"matches KVCache.bytes_per_token on {len(shapes)} model shapes")
