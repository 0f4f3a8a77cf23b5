"""Causal masks: the right triangle, the SDPA convention, and -inf where attention is forbidden."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_gpt.masks import apply_mask, causal_bias, causal_mask, offset_causal_mask


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 40))
def test_causal_mask_is_lower_triangle(T):
    mask = causal_mask(T)
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    expected = [[j <= i for j in range(T)] for i in range(T)]  # query i may see key j iff j <= i
    assert mask.tolist() == expected


def test_causal_mask_follows_sdpa_convention():
    # True = may attend, as in F.scaled_dot_product_attention: masking with it == is_causal=True
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8, dtype=torch.float64)
    with_mask = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(7))
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(with_mask, causal, rtol=0, atol=1e-12)


def test_causal_bias_is_zero_or_minus_inf_and_matches_apply_mask():
    T = 6
    bias = causal_bias(T, dtype=torch.float64)
    assert bias.dtype == torch.float64
    for i in range(T):
        for j in range(T):
            assert bias[i, j].item() == (0.0 if j <= i else float("-inf"))
    scores = torch.randn(2, 3, T, T, dtype=torch.float64)
    torch.testing.assert_close(torch.softmax(scores + bias, -1), torch.softmax(apply_mask(scores, causal_mask(T)), -1))


def test_apply_mask_fills_only_disallowed_positions():
    scores = torch.randn(2, 3, 5, 5)
    out = apply_mask(scores, causal_mask(5))
    allowed = causal_mask(5).expand_as(scores)
    assert torch.equal(out[allowed], scores[allowed])  # untouched where allowed
    assert torch.isneginf(out[~allowed]).all()
    weights = torch.softmax(out, dim=-1)
    assert (weights[~allowed] == 0).all()  # exactly zero weight on the future
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))
    assert torch.equal(scores, scores.clone())  # input not modified in place


def test_offset_causal_mask_is_the_last_rows_of_the_full_mask():
    for S in (1, 4, 9):
        for T in range(1, S + 1):
            assert torch.equal(offset_causal_mask(T, S), causal_mask(S)[S - T :])
    assert offset_causal_mask(1, 7).all()  # the newest token sees everything before it


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4", None])
def test_bad_lengths_name_T(bad):
    with pytest.raises(ValueError, match=r"\bT\b.*positive int"):
        causal_mask(bad)
    with pytest.raises(ValueError, match=r"\bT\b"):
        causal_bias(bad)


def test_bad_mask_arguments():
    with pytest.raises(TypeError, match="bool"):
        apply_mask(torch.zeros(3, 3), torch.ones(3, 3))  # a float mask is ambiguous
    with pytest.raises(ValueError, match="does not broadcast"):
        apply_mask(torch.zeros(3, 3), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="S"):
        offset_causal_mask(5, 3)
    with pytest.raises(ValueError, match="floating"):
        causal_bias(3, dtype=torch.int64)
