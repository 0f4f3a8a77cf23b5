"""CausalSelfAttention: both paths equal PyTorch's own SDPA; the weights are causal distributions;
the KV cache and the padding mask give the same numbers as plain attention."""

import math

import pytest
import torch
import torch.nn.functional as F

from mini_gpt import GPTConfig
from mini_gpt.attention import CausalSelfAttention, KVCache


def make_attention(pos_encoding="learned", dtype=torch.float32, seed=0, **overrides):
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=10, block_size=32, n_layer=1, n_head=4, n_embd=32, pos_encoding=pos_encoding, **overrides
    )
    attn = CausalSelfAttention(config).to(dtype).eval()
    with torch.no_grad():  # larger weights than the default init, so differences would show
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


def reference(attn, x):
    """The same layer computed independently with PyTorch's fused attention, is_causal=True."""
    B, T, C = x.shape
    q, k, v = F.linear(x, attn.c_attn.weight, attn.c_attn.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, T, attn.n_head, -1).permute(0, 2, 1, 3) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y = y.permute(0, 2, 1, 3).reshape(B, T, C)
    return F.linear(y, attn.c_proj.weight, attn.c_proj.bias)


# fp32: 1e-6 absolute plus 1e-6 relative (outputs reach ~10, where one fp32 ulp is ~1e-6)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_explicit_equals_sdpa_equals_reference(dtype, tol, seed):
    attn = make_attention(dtype=dtype, seed=seed)
    x = torch.randn(3, 17, 32, dtype=dtype)
    with torch.no_grad():
        ref = reference(attn, x)
        attn.impl = "sdpa"
        fused = attn(x)
        attn.impl = "explicit"
        explicit = attn(x)
        attn.impl = "sdpa"
        forced, _ = attn(x, return_attention=True)  # forces the explicit path
    torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(explicit, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(forced, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(explicit, fused, rtol=tol, atol=tol)
    assert ref.abs().max() > 0.1  # the comparison is not between near-zero tensors


def test_attention_weights_are_causal_distributions():
    attn = make_attention(dtype=torch.float64)
    attn.impl = "sdpa"  # return_attention forces the explicit path anyway
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        _, w = attn(x, return_attention=True)
    assert w.shape == (2, 4, 9, 9)  # (B, H, T, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9, dtype=torch.float64))
    above = torch.ones(9, 9, dtype=torch.bool).triu(1)
    assert (w[..., above] == 0).all()  # exactly zero weight on the future
    assert (w[..., ~above] > 0).all()
    # and they are softmax(q k^T / sqrt(hs)) over the past, computed by hand
    q, k, _ = F.linear(x, attn.c_attn.weight, attn.c_attn.bias).chunk(3, dim=-1)
    q, k = (t.reshape(2, 9, 4, 8).transpose(1, 2) for t in (q, k))
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores[..., above] = float("-inf")
    torch.testing.assert_close(w, scores.softmax(-1), rtol=0, atol=1e-12)


def test_dropout_only_in_training():
    attn = make_attention(dropout=0.5)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        ref = reference(attn, x)
        torch.testing.assert_close(attn.eval()(x), ref, rtol=0, atol=1e-6)
        attn.train()
        assert not torch.allclose(attn(x), ref, atol=1e-3)


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_kv_cache_matches_full_attention(pos_encoding, impl):
    attn = make_attention(pos_encoding)
    attn.impl = impl
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        full = attn(x)
        for chunk in (1, 4, 13):
            cache = KVCache(n_layer=1, max_len=20)
            parts = [attn(x[:, i : i + chunk], kv_cache=cache) for i in range(0, 13, chunk)]
            assert cache.length == 13
            torch.testing.assert_close(torch.cat(parts, 1), full, rtol=0, atol=1e-5)


def test_kv_cache_weights_with_offset_are_causal():
    attn = make_attention()
    x = torch.randn(1, 7, 32)
    cache = KVCache(n_layer=1, max_len=8)
    with torch.no_grad():
        _, full = attn(x, return_attention=True)
        attn(x[:, :4], kv_cache=cache)
        _, w = attn(x[:, 4:], kv_cache=cache, return_attention=True)
    assert w.shape == (1, 4, 3, 7)  # 3 new queries, 7 keys
    torch.testing.assert_close(w, full[:, :, 4:], rtol=0, atol=1e-6)


def test_kv_cache_writes_in_place_and_errors_when_full():
    cache = KVCache(n_layer=2, max_len=5)
    k = torch.randn(3, 2, 4, 8)
    k_all, v_all = cache.update(0, k, k + 1)
    assert cache.length == 0  # moves on only after the last layer
    assert k_all.shape == (3, 2, 4, 8) and torch.equal(k_all, k) and torch.equal(v_all, k + 1)
    storage = cache.k.data_ptr()
    cache.update(1, k, k)
    assert cache.length == 4 and cache.k.shape == (2, 3, 2, 5, 8)  # (n_layer, B, H, max_len, hs)
    one = torch.randn(3, 2, 1, 8)
    k_all, _ = cache.update(0, one, one)
    cache.update(1, one, one)
    assert cache.length == 5 and cache.k.data_ptr() == storage  # no reallocation, no cat
    assert torch.equal(k_all[:, :, :4], k) and torch.equal(k_all[:, :, 4:], one)
    with pytest.raises(ValueError, match="full.*max_len=5"):
        cache.update(0, one, one)
    cache.reset()
    assert cache.length == 0
    cache.update(0, one, one)
    with pytest.raises(ValueError, match="same number of positions"):
        cache.update(1, k, k)
    other = KVCache(1, 4)
    other.update(0, one, one)
    two = torch.randn(2, 2, 1, 8)
    with pytest.raises(ValueError, match="reset"):
        other.update(0, two, two)  # a different batch size in the middle of a sequence
    other.reset()
    k_all, _ = other.update(0, two, two)  # after reset() a new batch shape is fine
    assert other.batch_size == 2 and torch.equal(k_all, two)


def test_kv_cache_reorder_follows_index_select():
    cache = KVCache(n_layer=2, max_len=6)
    k = torch.randn(4, 2, 3, 8)
    v = torch.randn(4, 2, 3, 8)
    for layer in range(2):
        cache.update(layer, k + layer, v - layer)
    index = torch.tensor([2, 2, 0, 3])
    cache.reorder(index)
    for layer in range(2):
        assert torch.equal(cache.k[layer, :, :, :3], (k + layer)[index])
        assert torch.equal(cache.v[layer, :, :, :3], (v - layer)[index])
    cache.reorder(torch.tensor([1, 0]))  # shrinking the batch also works
    assert cache.batch_size == 2 and torch.equal(cache.k[0, :, :, :3], k[index][[1, 0]])


@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_padding_mask_ignores_left_padding(impl):
    # a left-padded row must give, at its real positions, what the unpadded sequence gives
    attn = make_attention("rope")
    attn.impl = impl
    x = torch.randn(1, 6, 32)
    pad = 3
    padded = torch.cat([torch.randn(1, pad, 32) * 100, x], dim=1)  # junk where the padding is
    mask = torch.tensor([[False] * pad + [True] * 6])
    position_ids = torch.tensor([[0] * pad + list(range(6))])
    with torch.no_grad():
        ref = attn(x)
        out = attn(padded, attention_mask=mask, position_ids=position_ids)
    assert torch.isfinite(out).all()  # padding queries see themselves: no NaN rows
    torch.testing.assert_close(out[:, pad:], ref, rtol=0, atol=1e-5)


def test_bad_arguments():
    attn = make_attention()
    with pytest.raises(ValueError, match="impl"):
        attn.impl = "flash"
    with pytest.raises(ValueError, match="attention_mask"):
        attn(torch.randn(1, 4, 32), attention_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_len"):
        KVCache(n_layer=1, max_len=0)
