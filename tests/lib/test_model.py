"""GPT: causal for every position encoding and attention path, KV-cache decoding equals the full
forward, GPT-2's parameter count and init, activation checkpointing, and clear input errors."""

import math

import pytest
import torch

from mini_gpt import GPT, GPTConfig
from mini_gpt.attention import KVCache
from mini_gpt.loss import autoregressive_loss
from mini_gpt.model import sinusoidal_positions

POS_ENCODINGS = ["learned", "sinusoidal", "rope"]


def tiny(pos_encoding="learned", seed=0, **overrides):
    torch.manual_seed(seed)
    fields = {"vocab_size": 64, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32}
    model = GPT(GPTConfig(**{**fields, "pos_encoding": pos_encoding, **overrides}))
    with torch.no_grad():  # larger than GPT-2's init, so that every path matters to the logits
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_future_tokens_never_change_past_logits(pos_encoding, impl, seed):
    model = tiny(pos_encoding, seed)
    model.set_attention_impl(impl)
    gen = torch.Generator().manual_seed(100 + seed)
    idx = torch.randint(0, 64, (2, 20), generator=gen)
    with torch.no_grad():
        base = model(idx)
        for t in (0, 7, 18):
            changed = idx.clone()
            changed[:, t + 1 :] = torch.randint(0, 64, (2, 19 - t), generator=gen)
            out = model(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
            # ...while changing token t itself does change the logits at t (the test can fail)
            changed[:, t] = (idx[:, t] + 1) % 64
            assert (model(changed)[:, t] - base[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_kv_cache_decoding_equals_full_forward(pos_encoding, impl):
    model = tiny(pos_encoding)
    model.set_attention_impl(impl)
    idx = torch.randint(0, 64, (3, 23))
    with torch.no_grad():
        full = model(idx)
        for chunk in (1, 5):  # one token at a time, then several per step
            cache = KVCache.for_model(model)
            steps = [model(idx[:, i : i + chunk], kv_cache=cache) for i in range(0, 23, chunk)]
            assert cache.length == 23
            torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)


def test_kv_cache_with_left_padding_and_positions():
    # a left-padded batch, prefilled then decoded through the cache, equals each row run alone
    for pos_encoding in POS_ENCODINGS:
        model = tiny(pos_encoding)
        rows = [torch.randint(0, 64, (1, n)) for n in (9, 5)]
        pad = 9 - 5
        idx = torch.cat([rows[0], torch.cat([torch.zeros(1, pad, dtype=torch.long), rows[1]], 1)])
        mask = torch.tensor([[True] * 9, [False] * pad + [True] * 5])
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)  # each row starts at position 0
        with torch.no_grad():
            cache = KVCache.for_model(model)
            prefill = model(idx[:, :6], kv_cache=cache, attention_mask=mask[:, :6], position_ids=position_ids[:, :6])
            steps = [
                model(
                    idx[:, i : i + 1],
                    kv_cache=cache,
                    attention_mask=mask[:, : i + 1],
                    position_ids=position_ids[:, i : i + 1],
                )
                for i in range(6, 9)
            ]
            out = torch.cat([prefill] + steps, 1)
            for b, row in enumerate(rows):
                alone = model(row)
                torch.testing.assert_close(out[b, 9 - row.shape[1] :], alone[0], rtol=0, atol=1e-5)


def test_rope_and_sinusoidal_have_no_length_limit_but_learned_does():
    for pos_encoding in ("rope", "sinusoidal"):
        model = tiny(pos_encoding)
        idx = torch.randint(0, 64, (1, 50))  # block_size is 32
        with torch.no_grad():
            full = model(idx)
            cache = KVCache.for_model(model, max_len=50)
            steps = torch.cat([model(idx[:, i : i + 10], kv_cache=cache) for i in range(0, 50, 10)], 1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"length 33.*block_size=32.*crop"):
        tiny("learned")(torch.zeros(1, 33, dtype=torch.long))


def test_sinusoidal_positions_follow_the_paper():
    pos = torch.arange(0, 300, 37)
    pe = sinusoidal_positions(pos, 16)
    for row, p in enumerate(pos.tolist()):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert math.isclose(pe[row, 2 * i].item(), math.sin(angle), abs_tol=1e-4)
            assert math.isclose(pe[row, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-4)
    model = tiny("sinusoidal")
    assert "wpe" not in model.transformer and not any("pe" in n for n, _ in model.named_buffers())


def test_return_attention_shapes_and_impl_switch():
    model = tiny()
    idx = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        logits, atts = model(idx, return_attention=True)
        torch.testing.assert_close(logits, model(idx), rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 11, 64)
    assert len(atts) == 2 and all(a.shape == (2, 4, 11, 11) for a in atts)
    model.set_attention_impl("explicit")
    assert all(b.attn.impl == "explicit" for b in model.transformer.h)
    with pytest.raises(ValueError, match="impl"):
        model.set_attention_impl("flash")


def test_gpt2_parameter_count():
    with torch.device("meta"):  # no memory, no init time
        model = GPT(GPTConfig.preset("gpt2"))
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters(include_position_embeddings=False) == 124_439_808 - 1024 * 768


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_parameter_count_by_hand(pos_encoding):
    V, B, L, C = 64, 32, 2, 32
    model = tiny(pos_encoding)
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    positions = B * C if pos_encoding == "learned" else 0
    expected = V * C + positions + L * per_block + 2 * C  # wte (= lm_head), wpe, blocks, ln_f
    assert model.num_parameters() == expected
    assert model.num_parameters(include_position_embeddings=False) == expected - positions
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


def test_gpt2_initialisation():
    torch.manual_seed(0)
    L = 4
    model = GPT(GPTConfig(vocab_size=2000, block_size=256, n_layer=L, n_head=4, n_embd=256))
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            std = 0.02 / math.sqrt(2 * L)  # scaled residual projections
        elif p.dim() == 2:
            std = 0.02
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert (p == 1).all(), name
            continue
        else:
            assert (p == 0).all(), name  # biases
            continue
        assert abs(p.std().item() - std) < 0.03 * std, name
        assert abs(p.mean().item()) < 0.05 * std, name


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_gradients(dropout):
    idx = torch.randint(0, 64, (2, 16))
    grads, losses = [], []
    for checkpointing in (False, True):
        model = tiny("rope", dropout=dropout, activation_checkpointing=checkpointing).train()
        calls = []
        model.transformer.h[0].ln_1.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(123)  # same dropout masks in both runs
        loss = autoregressive_loss(model(idx), idx)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        # with checkpointing the block really is recomputed during backward
        assert len(calls) == (2 if checkpointing else 1)
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6, msg=name)


def test_crop_block_size():
    model = tiny()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        before = model(idx)
        model.crop_block_size(16)
        torch.testing.assert_close(model(idx), before, rtol=0, atol=0)
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape == (16, 32)
    with pytest.raises(ValueError, match="block_size=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bad_input_errors():
    model = tiny()
    with pytest.raises(TypeError, match=r"idx.*torch.float32"):
        model(torch.zeros(1, 4))
    with pytest.raises(TypeError, match=r"idx.*list"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"idx.*\(B, T\).*\(4,\).*idx\[None\]"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx.*64.*\[0, 63\]"):
        model(torch.tensor([[1, 64, 2]]))
    with pytest.raises(ValueError, match=r"idx.*-1.*\[0, 63\]"):
        model(torch.tensor([[1, -1, 2]]))
    with pytest.raises(ValueError, match=r"sequence length 40.*block_size=32.*crop"):
        model(torch.zeros(1, 40, dtype=torch.long))
    cache = KVCache.for_model(model, max_len=64)
    with torch.no_grad():
        model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"33 \(30 cached \+ 3 new\).*block_size=32"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache is full"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=KVCache.for_model(model, max_len=2))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.zeros(1, 3, dtype=torch.long), position_ids=torch.tensor([[0, 1, 32]]))
    # narrower integer dtypes are fine
    with torch.no_grad():
        torch.testing.assert_close(
            model(torch.tensor([[1, 2, 3]], dtype=torch.int32)), model(torch.tensor([[1, 2, 3]]))
        )
