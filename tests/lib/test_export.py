"""mini_gpt.export: a Hugging Face folder transformers loads with the same logits, greedy text and
tokens; the reverse trip through GPT.from_gpt2; ONNX in onnxruntime; and every bad input."""

import dataclasses
import json

import pytest
import torch

from mini_gpt import GPT, GPTConfig, generate
from mini_gpt import export as export_mod
from mini_gpt.bpe import train_bpe
from mini_gpt.cli import main as cli_main
from mini_gpt.export import gpt2_incompatibilities, to_hf, to_onnx, traced_program
from mini_gpt.tokenizer import BPETokenizer, CharTokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n"
        "You are all resolved rather to die than to famish?")
# GPT-2's tokenizer must agree on text with numbers, accents, emoji and its end-of-text token
BPE_TEXT = TEXT + " It's 2024 \u2014 na\u00efve caf\u00e9 \U0001F600 <|endoftext|>and after"


def small(vocab_size=65, seed=0, **overrides):
    config = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, **overrides)
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():  # GPT-2's init (std 0.02) makes nearly uniform logits, whose argmax float noise
        torch.nn.init.normal_(model.transformer.wte.weight, std=1.0)  # can flip; these have clear winners
    return model


def char_tokenizer():
    return CharTokenizer.from_text(TEXT)


def hf_round_trip(model, folder, ids, new_tokens=24):
    """transformers' logits and greedy continuation of `ids` against mini_gpt's."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=1e-5)
        ours = generate(model, x, new_tokens, do_sample=False)
        theirs = hf.generate(x, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    assert theirs.tolist() == ours.tolist()


# ---------------------------------------------------------------------------------------------
# transformers round trips


def test_char_run_round_trips_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = char_tokenizer()
    model = small(tok.vocab_size)
    out = to_hf(model, tmp_path / "hf", tok)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == tok.encode(TEXT)
    assert hf_tok.decode(tok.encode(TEXT)) == TEXT  # no spaces between characters, newlines kept
    hf_round_trip(model, out, tok.encode(TEXT)[:20])


def test_gpt2_bpe_run_round_trips_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = BPETokenizer("gpt2")
    model = small(tok.vocab_size)
    out = to_hf(model, tmp_path / "hf", tok)
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok.encode(BPE_TEXT)  # tiktoken, the reference
    assert 50256 in ids
    assert hf_tok(BPE_TEXT)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids) == BPE_TEXT
    assert hf_tok.eos_token_id == 50256
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    hf_round_trip(model, out, ids[:16])


def test_trained_byte_level_bpe_round_trips_through_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = train_bpe(TEXT * 20, 300)
    model = small(tok.vocab_size)
    out = to_hf(model, tmp_path / "hf", tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = TEXT + " caf\u00e9 \U0001F600"  # bytes the merges never saw still encode, byte by byte
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    hf_round_trip(model, out, tok.encode(TEXT)[:16])


def test_exported_folder_loads_back_with_from_gpt2_unchanged(tmp_path):
    model = small(dropout=0.1, layer_norm_eps=1e-6)
    out = to_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["n_positions"], config["n_embd"], config["layer_norm_epsilon"], config["resid_pdrop"]) == (
        64, 32, 1e-6, 0.1)
    back = GPT.from_gpt2(out)  # the head count, which the weights do not record, is config.json's
    # from_gpt2 reads the sizes (and the head count): dropout and the epsilon come back as GPT-2's defaults
    assert back.config == model.config.replace(dropout=0.0, layer_norm_eps=1e-5)
    theirs, ours = back.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert torch.equal(theirs[key], ours[key]), key
    assert back.lm_head.weight is back.transformer.wte.weight


def test_a_model_on_another_dtype_or_wrapped_exports_as_float32(tmp_path):
    model = small()
    out = to_hf(torch.compile(small().to(torch.bfloat16)), tmp_path / "bf16")
    back = GPT.from_gpt2(out, n_head=4)
    torch.testing.assert_close(back.transformer.wte.weight, model.transformer.wte.weight.bfloat16().float())


# ---------------------------------------------------------------------------------------------
# what GPT-2 cannot hold


# each option of GPTConfig that GPT-2 has no place for, with a value that turns it on
NOT_GPT2 = {"pos_encoding": "rope", "bias": False, "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2,
            "qk_norm": True, "tie_embeddings": False, "mlp_hidden": 48, "rope_base": 500.0}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(GPTConfig) if f.name in NOT_GPT2])
def test_options_gpt2_cannot_hold_are_refused_by_name(tmp_path, field):
    model = small(**{field: NOT_GPT2[field]})
    with pytest.raises(ValueError, match=rf"GPT-2 cannot hold: {field}="):
        to_hf(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_every_field_beyond_the_sizes_must_be_at_its_default():
    # a field added to GPTConfig later is refused until export learns it: only these are allowed to vary
    varying = {f.name for f in dataclasses.fields(GPTConfig)} - set(NOT_GPT2)
    assert varying == {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "layer_norm_eps",
                       "activation_checkpointing"}
    assert gpt2_incompatibilities(GPTConfig(**{**GPTConfig.preset("gpt2").to_dict(), "pos_encoding": "sinusoidal"})
                                  ) == ["pos_encoding='sinusoidal' (GPT-2: 'learned')"]
    assert gpt2_incompatibilities(GPTConfig.preset("gpt2", dropout=0.2, activation_checkpointing=True)) == []


def test_lora_model_must_be_merged_first(tmp_path):
    from mini_gpt.lora import add_lora

    model = add_lora(small(), rank=2, alpha=4)
    with pytest.raises(ValueError, match="merge LoRA"):
        to_hf(model, tmp_path / "hf")


# ---------------------------------------------------------------------------------------------
# bad input: nothing half-written


def test_a_non_empty_folder_needs_force_and_force_replaces_only_an_export(tmp_path):
    out = tmp_path / "hf"
    to_hf(small(seed=0), out)
    first = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="not empty; pass force=True"):
        to_hf(small(seed=1), out)
    assert (out / "model.safetensors").read_bytes() == first
    to_hf(small(seed=1), out, force=True)
    assert (out / "model.safetensors").read_bytes() != first
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="only a folder written by an export"):
        to_hf(small(), mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file"):
        to_hf(small(), tmp_path / "file")
    with pytest.raises(TypeError, match="force must be True or False"):
        to_hf(small(), tmp_path / "x", force="yes")


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tokenizer has 50257 ids but the model's vocab_size is 65"):
        to_hf(small(65), tmp_path / "hf", BPETokenizer("gpt2"))
    with pytest.raises(TypeError, match="tokenizer must be"):
        to_hf(small(65), tmp_path / "hf", "char")
    with pytest.raises(TypeError, match="model must be a mini_gpt GPT"):
        to_hf(torch.nn.Linear(2, 2), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_an_error_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        to_hf(small(), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temp folder
    monkeypatch.undo()
    to_hf(small(seed=0), tmp_path / "hf")
    before = (tmp_path / "hf" / "model.safetensors").read_bytes()
    monkeypatch.setattr(export_mod, "save_file", full_disk)
    with pytest.raises(OSError):
        to_hf(small(seed=1), tmp_path / "hf", force=True)
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == before  # the old export stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


# ---------------------------------------------------------------------------------------------
# mini-gpt export


def trained_run(tmp_path):
    from mini_gpt.data import TextDataset
    from mini_gpt.train import TrainConfig, train

    tok = char_tokenizer()
    data = TextDataset.from_text(TEXT * 30, tok)
    model = small(tok.vocab_size)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), batch_size=4, block_size=16, max_iters=6, eval_interval=2,
                      eval_iters=1, warmup_iters=1, device="cpu", dtype="float32", progress=False)
    train(model, data, cfg)
    return tmp_path / "run", tok


def test_export_command_writes_what_transformers_loads(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    run, tok = trained_run(tmp_path)
    for ckpt, name in ((run, "latest"), (run / "best", "best")):
        assert cli_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / name)]) == 0
        assert "exported" in capsys.readouterr().out
    from mini_gpt.checkpoint import load_checkpoint, load_model

    model, _ = load_model(run / "best")
    hf_round_trip(model, tmp_path / "best", tok.encode(TEXT)[:10], new_tokens=8)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "best").decode(tok.encode(TEXT)) == TEXT
    assert load_checkpoint(run / "best").step <= load_checkpoint(run).step == 6

    assert cli_main(["export", "--ckpt", str(run), "--out", str(tmp_path / "latest")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main(["export", "--ckpt", str(run), "--out", str(tmp_path / "latest"), "--force"]) == 0
    # a folder of another format (here the Hugging Face export itself) is not a mini_gpt checkpoint
    assert cli_main(["export", "--ckpt", str(tmp_path / "best"), "--out", str(tmp_path / "again")]) == 2
    assert "not a loadable mini_gpt checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


def test_export_command_refuses_a_model_gpt2_cannot_hold(tmp_path, capsys):
    from mini_gpt.checkpoint import save_checkpoint

    model = small(pos_encoding="rope")
    save_checkpoint(tmp_path / "run", step=1, model=model, model_config=model.config)
    assert cli_main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert "pos_encoding='rope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# ONNX


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_the_graph_for_onnx_takes_any_batch_and_length(pos_encoding):
    # what to_onnx hands torch.onnx.export: one graph for every batch size and length
    model = small(pos_encoding=pos_encoding)
    program = traced_program(model)
    longest = 100 if pos_encoding == "sinusoidal" else 64  # sinusoidal positions have no table to outgrow
    for shape in ((1, 5), (3, 17), (2, longest)):
        x = torch.randint(0, 65, shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_onnx_without_its_extra_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name in ("onnx", "onnxscript"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ImportError, match=r"mini_gpt\[onnx\]"):
        to_onnx(small(), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_onnx_runs_in_onnxruntime_with_the_same_logits(tmp_path, pos_encoding):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    tokenizer = char_tokenizer()
    V = tokenizer.vocab_size
    model = small(V, pos_encoding=pos_encoding)  # ONNX holds any GPT, not only GPT-2's layout
    out = to_onnx(model, tmp_path / "onnx", tokenizer)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 5), (3, 17), (2, 64)):  # the example it was traced with was (2, 8)
        x = torch.randint(0, V, shape, generator=torch.Generator().manual_seed(1))
        (logits,) = session.run(["logits"], {"input_ids": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), atol=1e-4, rtol=0)


def test_export_command_says_when_the_onnx_extra_is_missing(tmp_path, capsys):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        pytest.skip("onnx and onnxscript are installed")
    except ImportError:
        pass
    from mini_gpt.checkpoint import save_checkpoint

    model = small()
    save_checkpoint(tmp_path / "run", step=1, model=model, model_config=model.config)
    out = tmp_path / "onnx"
    assert cli_main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(out), "--format", "onnx"]) == 2
    assert "pip install 'mini_gpt[onnx]'" in capsys.readouterr().err
    assert not out.exists()
