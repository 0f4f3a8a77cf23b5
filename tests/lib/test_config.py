import dataclasses

import pytest

from mini_gpt import GPTConfig

BASE = dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64)


def make(**changes):
    return GPTConfig(**{**BASE, **changes})


@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("bad", [0, -3])
def test_sizes_must_be_positive(field, bad):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field} must be a positive int \(>= 1\), got {bad}"):
        make(**{field: bad})


@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("bad", [2.0, "8", True, None])
def test_sizes_must_be_ints(field, bad):
    with pytest.raises(TypeError, match=rf"GPTConfig\.{field} must be a positive int"):
        make(**{field: bad})


def test_n_embd_must_split_into_heads():
    with pytest.raises(ValueError, match=r"n_embd \(66\) must be divisible by n_head \(4\)"):
        make(n_embd=66)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_dropout_range(bad):
    with pytest.raises(ValueError, match=r"GPTConfig\.dropout must be a number in \[0, 1\), got "):
        make(dropout=bad)


def test_dropout_type():
    with pytest.raises(TypeError, match=r"GPTConfig\.dropout must be a number"):
        make(dropout="0.1")


def test_pos_encoding_choices():
    for ok in ("learned", "sinusoidal", "rope"):
        assert make(pos_encoding=ok).pos_encoding == ok
    with pytest.raises(ValueError, match=r"pos_encoding must be one of 'learned', 'sinusoidal', 'rope', got 'alibi'"):
        make(pos_encoding="alibi")


def test_rope_needs_even_head_dim():
    with pytest.raises(ValueError, match=r"even head size"):
        make(n_embd=60, n_head=4, pos_encoding="rope")  # head_dim 15


@pytest.mark.parametrize("field", ["bias", "activation_checkpointing"])
def test_flags_must_be_bool(field):
    with pytest.raises(TypeError, match=rf"GPTConfig\.{field} must be True or False"):
        make(**{field: 1})


@pytest.mark.parametrize("field,bad", [("rope_base", 1.0), ("layer_norm_eps", 0.0)])
def test_positive_floats(field, bad):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field} must be"):
        make(**{field: bad})


def test_frozen_and_replace_revalidates():
    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3
    assert cfg.replace(n_layer=3).n_layer == 3
    with pytest.raises(ValueError, match="n_layer"):
        cfg.replace(n_layer=0)
    with pytest.raises(TypeError, match="no field"):
        cfg.replace(layers=3)


def test_dict_round_trip():
    cfg = make(pos_encoding="rope", dropout=0.1)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        GPTConfig.from_dict({**cfg.to_dict(), "extra": 1})


def test_presets():
    gpt2 = GPTConfig.preset("gpt2")
    assert (gpt2.vocab_size, gpt2.block_size, gpt2.n_layer, gpt2.n_head, gpt2.n_embd) == (50257, 1024, 12, 12, 768)
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert GPTConfig.preset(name).head_dim == 64  # GPT-2's head size
    medium = GPTConfig.preset("gpt2-medium")
    assert (medium.n_layer, medium.n_embd) == (24, 1024)
    char = GPTConfig.preset("shakespeare-char")
    assert char.vocab_size == 65
    assert GPTConfig.preset("shakespeare-char", n_layer=2).n_layer == 2
    assert {"shakespeare-char", "gpt2", "gpt2-medium", "gpt2-large"} <= set(GPTConfig.preset_names())
    with pytest.raises(ValueError, match=r"unknown preset 'gpt3'; choose one of 'shakespeare-char'"):
        GPTConfig.preset("gpt3")
