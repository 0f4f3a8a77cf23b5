"""RoPE: rotations by position, relative-position scores, and agreement with Llama's functions."""

import math

import pytest
import torch

from mini_gpt.rope import RotaryEmbedding


def rotate_by_pairs(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Independent reference in float64: a 2x2 rotation of each pair (j, j + d/2), one at a time."""
    d = x.shape[-1]
    out = x.clone().double()
    for j in range(d // 2):
        theta = base ** (-2 * j / d)
        angle = positions.double() * theta  # (T,)
        c, s = torch.cos(angle), torch.sin(angle)
        a, b = x[..., j].double(), x[..., j + d // 2].double()
        out[..., j] = a * c - b * s
        out[..., j + d // 2] = a * s + b * c
    return out


def test_matches_explicit_pair_rotations():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, max_len=64, base=10000)
    q, k = torch.randn(2, 2, 3, 10, 16)
    rq, rk = rope(q, k, offset=7)
    pos = torch.arange(7, 17)
    torch.testing.assert_close(rq.double(), rotate_by_pairs(q, pos, 10000), rtol=0, atol=1e-5)
    torch.testing.assert_close(rk.double(), rotate_by_pairs(k, pos, 10000), rtol=0, atol=1e-5)


def test_scores_depend_only_on_relative_position():
    torch.manual_seed(1)
    d = 32
    rope = RotaryEmbedding(d, max_len=16)  # small on purpose: positions below grow the cache
    q = torch.randn(1, 1, 1, d, dtype=torch.float64)
    k = torch.randn(1, 1, 1, d, dtype=torch.float64)

    def score(m, n):
        rq, _ = rope(q, q, offset=m)
        _, rk = rope(k, k, offset=n)
        return (rq * rk).sum().item()

    for delta in (0, 1, 5, 13):
        ref = score(delta, 0)
        for shift in (3, 40, 250):
            assert math.isclose(score(delta + shift, shift), ref, rel_tol=0, abs_tol=1e-4)
    # and it really does depend on the distance
    assert abs(score(5, 0) - score(1, 0)) > 1e-3
    # rotations keep lengths
    rq, _ = rope(q, q, offset=123)
    torch.testing.assert_close(rq.norm(), q.norm(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("base", [10000.0, 500.0])
def test_matches_transformers_llama(base):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    d, H, T = 32, 2, 12
    config = transformers.LlamaConfig(
        hidden_size=d * H,
        num_attention_heads=H,
        head_dim=d,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    hf_rope = LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(d, max_len=64, base=base)
    torch.manual_seed(2)
    q, k = torch.randn(2, 3, H, T, d)

    offset = 9
    position_ids = torch.arange(offset, offset + T).expand(3, T)
    cos, sin = hf_rope(q, position_ids)
    hq, hk = apply_rotary_pos_emb(q, k, cos, sin)
    oq, ok = ours(q, k, offset=offset)
    torch.testing.assert_close(oq, hq, rtol=0, atol=1e-6)
    torch.testing.assert_close(ok, hk, rtol=0, atol=1e-6)

    # per-sequence positions (left-padded batches) agree too
    position_ids = torch.tensor([[0, 0, 0] + list(range(T - 3)), list(range(20, 20 + T)), list(range(T))])
    cos, sin = hf_rope(q, position_ids)
    hq, hk = apply_rotary_pos_emb(q, k, cos, sin)
    oq, ok = ours(q, k, position_ids=position_ids)
    torch.testing.assert_close(oq, hq, rtol=0, atol=1e-6)
    torch.testing.assert_close(ok, hk, rtol=0, atol=1e-6)


def test_cache_grows_beyond_max_len():
    torch.manual_seed(3)
    small, big = RotaryEmbedding(8, max_len=4), RotaryEmbedding(8, max_len=200)
    q, k = torch.randn(2, 1, 1, 30, 8)
    a = small(q, k, offset=100)
    b = big(q, k, offset=100)
    assert small.max_len >= 130
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # non-persistent: the tables are not saved in checkpoints
    assert small.state_dict() == {}


def test_offset_equals_position_ids():
    torch.manual_seed(4)
    rope = RotaryEmbedding(8, max_len=32)
    q, k = torch.randn(2, 2, 3, 5, 8)
    a = rope(q, k, offset=6)
    b = rope(q, k, position_ids=torch.arange(6, 11).expand(2, 5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [7, 0, -2, 3.0])
def test_head_dim_must_be_even(bad):
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(bad, max_len=8)


def test_bad_shapes():
    rope = RotaryEmbedding(8, max_len=8)
    with pytest.raises(ValueError, match="head_dim=8"):
        rope(torch.zeros(1, 1, 3, 6), torch.zeros(1, 1, 3, 6))
    with pytest.raises(ValueError, match="position_ids"):
        rope(torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8), position_ids=torch.zeros(1, 4, dtype=torch.long))
