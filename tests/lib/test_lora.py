import copy
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

from mini_gpt import GPT, GPTConfig
from mini_gpt.lora import (
    LoRALinear,
    add_lora,
    base_fingerprint,
    load_lora,
    lora_layers,
    merge_lora,
    save_lora,
    trainable_parameters,
)
from mini_gpt.train import TrainConfig, configure_optimizer

CFG = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32)


def make_base(seed=0, **changes):
    torch.manual_seed(seed)
    return GPT(CFG.replace(**changes)).eval()


def tokens(B=3, T=20, seed=1):
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed=2):
    """B = 0 makes every adapter a no-op; give them values so the tests see them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
    return model


# ------------------------------------------------------------------------------ the layer


def test_lora_linear_is_w_x_plus_scaled_b_a_x():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = LoRALinear(copy.deepcopy(base), rank=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 4, 12)
    by_hand = x @ base.weight.T + base.bias + (6 / 3) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), by_hand, rtol=1e-5, atol=1e-5)
    assert layer.weight is layer.base.weight and not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


@settings(max_examples=25, deadline=None)
@given(
    n_in=st.integers(1, 24), n_out=st.integers(1, 24), rank=st.integers(1, 8),
    alpha=st.floats(0.1, 64), bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_merged_layer_equals_layer(n_in, n_out, rank, alpha, bias, seed):
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(n_in, n_out, bias=bias), rank, alpha)
    with torch.no_grad():
        layer.lora_B.normal_()
    merged = layer.merged()
    assert type(merged) is nn.Linear and (merged.bias is None) == (not bias)
    x = torch.randn(6, n_in)
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ add_lora


@pytest.mark.parametrize("targets", ["attn", "all", ("mlp.c_fc",)])
def test_starts_as_the_identity(targets):
    base = make_base()
    model = add_lora(copy.deepcopy(base), rank=4, alpha=8, targets=targets, dropout=0.1)
    x = tokens()
    assert torch.equal(model(x), base(x))  # exactly: B = 0
    model.train()  # dropout on the LoRA branch only, and it is multiplied by B = 0
    assert torch.equal(model(x), base(x))


def test_only_adapters_train_and_base_stays_bit_identical():
    base = make_base()
    model = add_lora(copy.deepcopy(base), rank=4, alpha=8, targets="all")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith((".lora_A", ".lora_B")) for n in names)
    assert len(names) == 2 * 4 * CFG.n_layer

    # weight decay 0.1 would shrink frozen weights if they were in the optimizer
    opt = configure_optimizer(model, TrainConfig(learning_rate=1e-2, weight_decay=0.1), "cpu")
    x = tokens(B=4, T=16)
    before_adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    for _ in range(5):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, CFG.vocab_size), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    merged_names = {n.replace(".base.", "."): p for n, p in model.named_parameters()}
    for name, p in base.named_parameters():  # embeddings, LayerNorms, Linear weights and biases
        assert torch.equal(merged_names[name], p), name
    assert all(not torch.equal(before_adapters[n], p) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("targets, per_layer", [
    ("attn", lambda r, C: r * (C + 3 * C) + r * (C + C)),  # c_attn: C -> 3C, c_proj: C -> C
    ("all", lambda r, C: r * (C + 3 * C) + r * (C + C) + r * (C + 4 * C) + r * (4 * C + C)),
])
def test_trainable_count_by_hand(targets, per_layer):
    base = make_base()
    r, C, L = 4, CFG.n_embd, CFG.n_layer
    model = add_lora(copy.deepcopy(base), rank=r, alpha=8, targets=targets)
    trainable, total = trainable_parameters(model)
    assert trainable == L * per_layer(r, C)
    assert total == base.num_parameters() + trainable  # the tied head counts once


def test_targets_by_suffix_regex_and_shortcut():
    model = add_lora(make_base(), targets=r"transformer\.h\.0\.attn\.c_attn")
    assert list(lora_layers(model)) == ["transformer.h.0.attn.c_attn"]
    model = add_lora(make_base(), targets="mlp")
    assert sorted(lora_layers(model)) == [f"transformer.h.{i}.mlp.{n}" for i in range(2) for n in ("c_fc", "c_proj")]
    model = add_lora(make_base(), targets="c_proj")  # a suffix: both attention's and the MLP's
    assert len(lora_layers(model)) == 2 * CFG.n_layer


def test_verbose_prints_the_count(capsys):
    add_lora(make_base(), rank=2, alpha=4, verbose=True)
    out = capsys.readouterr().out
    assert "4 layers" in out and f"{CFG.n_layer * 2 * (4 * 32 + 2 * 32):,} trainable" in out


@pytest.mark.parametrize("kwargs, word", [
    ({"rank": 0}, "rank"), ({"rank": 2.0}, "rank"), ({"rank": True}, "rank"),
    ({"alpha": 0}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"alpha": float("nan")}, "alpha"),
    ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout"),
    ({"targets": "nothing.like.this"}, "targets"), ({"targets": ()}, "targets"), ({"targets": [3]}, "targets"),
    ({"targets": "attn.c_attn["}, "targets"),  # neither a name nor a valid regex
    ({"targets": "ln_f"}, "targets"),  # matches, but not an nn.Linear
    ({"targets": "lm_head"}, "targets"),  # tied to the token embedding
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        add_lora(make_base(), **kwargs)


def test_adding_twice_is_refused():
    model = add_lora(make_base())
    with pytest.raises(ValueError, match="model already has LoRA"):
        add_lora(model, targets="mlp")


def test_lora_works_with_rope_and_activation_checkpointing():
    x = tokens(B=2, T=16)
    grads = []
    for ckpt in (False, True):
        model = add_lora(make_base(pos_encoding="rope", activation_checkpointing=ckpt), rank=4, alpha=8)
        randomize_adapters(model).train()
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ merge


def test_merge_equals_unmerged_and_is_a_plain_gpt():
    base = make_base()
    model = randomize_adapters(add_lora(copy.deepcopy(base), rank=4, alpha=8, targets="all"))
    x = tokens()
    expected = model(x)
    merged = merge_lora(model)
    assert not lora_layers(merged) and not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert type(merged.transformer.h[0].attn.c_attn) is type(base.transformer.h[0].attn.c_attn)  # as in a plain GPT
    torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-5)
    # the same names as a plain GPT: a fresh GPT loads the merged weights as they are
    fresh = GPT(CFG).eval()
    fresh.load_state_dict(merged.state_dict())
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=1e-5)
    assert not torch.equal(fresh.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(merged)


# ------------------------------------------------------------------------------ fingerprint, save, load


def test_fingerprint_is_of_the_base_weights():
    base = make_base()
    fp = base_fingerprint(base)
    assert fp == base_fingerprint(copy.deepcopy(base)) == base_fingerprint(make_base())  # deterministic
    model = randomize_adapters(add_lora(copy.deepcopy(base)))
    assert base_fingerprint(model) == fp  # the adapters are not part of it
    other = copy.deepcopy(base)
    with torch.no_grad():
        w = other.transformer.h[1].mlp.c_fc.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))  # one float, one ulp
    assert base_fingerprint(other) != fp


def test_save_load_reproduces_outputs_exactly(tmp_path):
    base = make_base()
    model = randomize_adapters(add_lora(copy.deepcopy(base), rank=4, alpha=8, targets="all", dropout=0.05))
    x = tokens()
    expected = model(x)
    save_lora(model, tmp_path / "adapters")

    fresh = load_lora(copy.deepcopy(base), tmp_path / "adapters")  # the plain base: adapters are added
    assert torch.equal(fresh(x), expected)
    assert sorted(lora_layers(fresh)) == sorted(lora_layers(model))
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    layer = fresh.transformer.h[0].mlp.c_fc
    assert (layer.rank, layer.alpha, layer.dropout.p) == (4, 8.0, 0.05)

    # onto a model that already has (other values of) the same adapters
    again = add_lora(copy.deepcopy(base), rank=4, alpha=8, targets="all")
    assert torch.equal(load_lora(again, tmp_path / "adapters")(x), expected)


def test_saved_files_are_json_and_safetensors(tmp_path):
    model = randomize_adapters(add_lora(make_base(), rank=4, alpha=8))
    folder = save_lora(model, tmp_path / "a")
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and names[1] == "adapter.json" and names[0].endswith(".safetensors")
    config = json.loads((folder / "adapter.json").read_text())
    assert (config["rank"], config["alpha"], config["dropout"]) == (4, 8.0, 0.0)
    assert config["targets"] == ["attn.c_attn", "attn.c_proj"]
    assert len(config["base_fingerprint"]) == 64 and config["base_fingerprint"] == base_fingerprint(model)
    with safe_open(str(folder / names[0]), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {f"transformer.h.{i}.attn.{n}.lora_{ab}" for i in range(2) for n in ("c_attn", "c_proj")
                    for ab in "AB"}  # the adapters alone: no base weight
    for name in names:
        assert not (folder / name).read_bytes().startswith(b"\x80")  # no pickle protocol header


def test_loading_onto_another_base_raises(tmp_path):
    model = randomize_adapters(add_lora(make_base(seed=0)))
    save_lora(model, tmp_path / "a")
    with pytest.raises(ValueError, match="different base weights"):
        load_lora(make_base(seed=1), tmp_path / "a")
    with pytest.raises(ValueError, match="different model architecture"):
        load_lora(make_base(n_embd=64), tmp_path / "a")
    with pytest.raises(ValueError, match="different model architecture"):
        load_lora(make_base(n_layer=3), tmp_path / "a")
    # check_base=False skips only the weights check
    loaded = load_lora(make_base(seed=1), tmp_path / "a", check_base=False)
    assert len(lora_layers(loaded)) == 4
    # adapters of another rank already on the model
    with pytest.raises(ValueError, match="already has LoRA adapters that differ"):
        load_lora(add_lora(make_base(seed=0), rank=2, alpha=8), tmp_path / "a")


def test_tampered_folder_is_refused(tmp_path):
    model = randomize_adapters(add_lora(make_base()))
    folder = save_lora(model, tmp_path / "a")
    config = json.loads((folder / "adapter.json").read_text())
    tensor_file = folder / config["tensors"]["file"]

    bad = dict(config, tensors={"file": "../../etc/passwd", "sha256": "0" * 64})
    (folder / "adapter.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="bad tensor file name"):
        load_lora(make_base(), folder)

    (folder / "adapter.json").write_text(json.dumps(config))
    data = bytearray(tensor_file.read_bytes())
    data[-1] ^= 1
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_lora(make_base(), folder)

    (folder / "adapter.json").write_text("not json")
    with pytest.raises(ValueError, match="not a valid LoRA adapter config"):
        load_lora(make_base(), folder)
    with pytest.raises(FileNotFoundError):
        load_lora(make_base(), tmp_path / "nothing here")


def test_resave_is_atomic(tmp_path, monkeypatch):
    base = make_base()
    model = randomize_adapters(add_lora(copy.deepcopy(base)), seed=3)
    x = tokens()
    first = model(x)
    folder = save_lora(model, tmp_path / "a")
    randomize_adapters(model, seed=4)
    assert not torch.equal(model(x), first)

    # a crash at the switch (replacing adapter.json) leaves the previous set whole
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith("adapter.json"):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(OSError, match="simulated"):
        save_lora(model, folder)
    monkeypatch.setattr(os, "replace", real_replace)
    assert torch.equal(load_lora(copy.deepcopy(base), folder)(x), first)

    # a good save replaces it, and leaves one tensor file and no temp files
    second = model(x)
    save_lora(model, folder)
    assert torch.equal(load_lora(copy.deepcopy(base), folder)(x), second)
    assert len(list(folder.glob("*.safetensors"))) == 1 and not list(folder.glob(".tmp-*"))


def test_save_without_adapters_and_onto_a_file_raise(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_lora(make_base(), tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="path must be a folder"):
        save_lora(add_lora(make_base()), tmp_path / "file")
