"""Taking a trained model out of mini_gpt: a Hugging Face folder, or an ONNX graph.

`to_hf(model, out_dir, tokenizer)` writes the folder `transformers.AutoModelForCausalLM` (a
`GPT2LMHeadModel`) and `AutoTokenizer` load:

    config.json              GPT-2's sizes (n_positions = block_size, n_embd, n_layer, n_head, ...)
    model.safetensors        the weights under GPT-2's names; attention and MLP matrices are stored
                             transposed, as GPT-2's Conv1D layers keep them (in, out)
    generation_config.json   the end-of-text token, when the tokenizer has one
    tokenizer files          a character tokenizer: `tokenizer.json` (a `tokenizers` BPE with no
                             merges, so each character is one token); GPT-2's BPE: its own
                             `vocab.json` and `merges.txt`; a byte-level BPE trained here: the same
                             two files written from its merges; plus `tokenizer_config.json`

The model must be one GPT-2 can hold: every `GPTConfig` field other than the sizes, dropout and
the norm's epsilon must keep its default (GPT-2's), so an option added to GPTConfig later is refused
until this module learns it. A RoPE, RMSNorm, SwiGLU, grouped-query, QK-norm, bias-free, untied or
sinusoidal model gets a ValueError naming the option.

`to_onnx(model, out_dir, tokenizer)` writes `model.onnx` (input_ids (batch, sequence) -> logits
(batch, sequence, vocab), with the batch size and the length free) through `torch.onnx.export`; it
holds any GPT, since the graph is traced from the model's own forward (`traced_program`). It needs
the `onnx` extra (onnx, onnxscript; onnxruntime runs the result).

Both write into a temp folder beside `out_dir` and rename it into place (`atomic.folder_swap`): an
error or a kill midway leaves no half-written export, and the folder that was there stays.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import atomic
from .bpe import BytePairTokenizer, gpt2_bytes_to_unicode
from .checkpoint import unwrap_model
from .config import GPTConfig
from .files import course_file
from .model import GPT
from .tokenizer import BPETokenizer, CharTokenizer
from .validation import check_bool

__all__ = ["to_hf", "to_onnx", "traced_program", "gpt2_incompatibilities", "hf_config", "hf_state_dict"]

# GPTConfig fields that GPT-2's config.json has a place for; every other field must be at its default
_GPT2_HOLDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "layer_norm_eps",
               "activation_checkpointing")  # the last only changes how training saves memory

# GPT-2's checkpoints store these as Conv1D weights, shaped (in, out): the transpose of nn.Linear
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# what an export folder may hold: --force replaces only a folder made of these, never anything else
_EXPORT_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "vocab.json",
                 "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "model.onnx", "model.onnx.data"}

Tokenizer = CharTokenizer | BPETokenizer | BytePairTokenizer


# ---------------------------------------------------------------------------------------------
# what GPT-2 can hold


def gpt2_incompatibilities(config: GPTConfig) -> list[str]:
    """The options of `config` that GPT-2 cannot hold, as 'name=value (GPT-2: default)'; [] if none."""
    out = []
    for f in dataclasses.fields(GPTConfig):
        if f.name in _GPT2_HOLDS or f.default is dataclasses.MISSING:
            continue
        value = getattr(config, f.name)
        if value != f.default:
            out.append(f"{f.name}={value!r} (GPT-2: {f.default!r})")
    return out


def _plain_gpt(model: Any) -> GPT:
    model = unwrap_model(model) if isinstance(model, torch.nn.Module) else model
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a mini_gpt GPT, got {type(model).__name__}")
    return model


def _check_gpt2_shaped(model: GPT) -> None:
    problems = gpt2_incompatibilities(model.config)
    if problems:
        raise ValueError(
            f"model has option(s) GPT-2 cannot hold: {', '.join(problems)}; to_hf writes GPT-2's layout "
            f"only (use to_onnx, which exports any GPT)"
        )
    with torch.device("meta"):
        expected = GPT(model.config).state_dict()
    got = model.state_dict()
    if set(got) != set(expected) or any(got[k].shape != expected[k].shape for k in expected):
        extra = sorted(set(got) - set(expected))[:3]
        raise ValueError(
            f"model's weights are not a plain GPT's (unexpected {extra or 'shapes'}): merge LoRA adapters "
            f"(lora.merge_lora) and export a model that is not quantized"
        )
    if model.lm_head.weight is not model.transformer.wte.weight:
        raise ValueError("model's lm_head.weight is not tied to transformer.wte.weight, as GPT-2's always is")


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights under GPT-2's names and in its layout (float32, on the CPU; the tied
    lm_head.weight is not stored: transformers ties it to wte again)."""
    out = {}
    for key, tensor in _plain_gpt(model).state_dict().items():
        if key == "lm_head.weight":
            continue
        tensor = tensor.detach().to("cpu", torch.float32)
        if key.endswith(_CONV1D_WEIGHTS):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        out[key] = tensor.contiguous()
    return out


def hf_config(config: GPTConfig, eot_token: int | None = None) -> dict[str, Any]:
    """GPT-2's config.json for a model of this config."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd, as mini_gpt's GELU MLP
        "activation_function": "gelu_new",  # GELU's tanh approximation, as mini_gpt's MLP
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
    }


# ---------------------------------------------------------------------------------------------
# tokenizers


def _eot_token(tokenizer: Tokenizer | None) -> int | None:
    return getattr(tokenizer, "eot_token", None) if tokenizer is not None else None


def _check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    if tokenizer is None:
        return
    if not isinstance(tokenizer, (CharTokenizer, BPETokenizer, BytePairTokenizer)):
        raise TypeError(f"tokenizer must be a CharTokenizer, BPETokenizer, BytePairTokenizer or None, "
                        f"got {type(tokenizer).__name__}")
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {vocab_size}: "
                         f"it is not the tokenizer this model was trained with")


def _write_json(path: Path, obj: Any) -> None:
    atomic.write_durably(path, lambda p: p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", "utf-8"))


def _write_tokenizer(folder: Path, tokenizer: Tokenizer | None, block_size: int) -> None:
    """The tokenizer in a form `transformers.AutoTokenizer.from_pretrained(folder)` loads."""
    if tokenizer is None:
        return
    settings = {"model_max_length": block_size, "clean_up_tokenization_spaces": False}
    if isinstance(tokenizer, CharTokenizer):
        _char_tokenizer_json(tokenizer, folder / "tokenizer.json")
        _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **settings})
        return
    if isinstance(tokenizer, BPETokenizer):  # GPT-2's own files, as its Hugging Face repository has them
        shutil.copyfile(course_file("gpt2/encoder.json"), folder / "vocab.json")
        shutil.copyfile(course_file("gpt2/vocab.bpe"), folder / "merges.txt")
        atomic.fsync_file(folder / "vocab.json")
        atomic.fsync_file(folder / "merges.txt")
        eot = BPETokenizer.EOT
    else:
        vocab, merges = _byte_level_files(tokenizer)
        _write_json(folder / "vocab.json", vocab)
        atomic.write_durably(folder / "merges.txt", lambda p: p.write_text(merges, "utf-8"))
        eot = next((t for t, i in tokenizer.special_tokens.items() if i == tokenizer.eot_token), None)
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
        "bos_token": eot, "eos_token": eot, "unk_token": eot, **settings,
    })


def _char_tokenizer_json(tokenizer: CharTokenizer, path: Path) -> None:
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models
    except ImportError:
        raise ImportError("exporting a character tokenizer needs the tokenizers library "
                          "(pip install 'mini_gpt[hf]')") from None
    # a BPE model with no merges splits the text into characters and looks each one up; with no
    # pre-tokenizer nothing is split off first, and Fuse joins decoded tokens with nothing between
    hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tokenizer.chars)}, merges=[]))
    hf.decoder = decoders.Fuse()
    atomic.write_durably(path, lambda p: hf.save(str(p)))


def _byte_level_files(tokenizer: BytePairTokenizer) -> tuple[dict[str, int], str]:
    """vocab.json and merges.txt of a byte-level BPE, in GPT-2's notation (bytes as characters)."""
    table = gpt2_bytes_to_unicode()

    def spell(i: int) -> str:
        return "".join(table[b] for b in tokenizer.token_bytes(i))

    n_merged = 256 + len(tokenizer.merges)
    vocab = {spell(i): i for i in range(n_merged)}
    vocab.update(tokenizer.special_tokens)
    lines = [f"{spell(a)} {spell(b)}" for (a, b), _ in tokenizer.merges]
    return vocab, "#version: 0.2\n" + "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------------------
# writing a folder


def _target(out_dir: str | os.PathLike, force: bool) -> Path:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    out = Path(out_dir).expanduser()
    check_bool("force", force)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out_dir {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"out_dir {out} is not empty; pass force=True (mini-gpt export --force) "
                                  f"to replace it")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _EXPORT_FILES or p.is_dir())
        if foreign:
            raise FileExistsError(f"out_dir {out} holds files an export does not write ({foreign[:5]}); "
                                  f"even with force, only a folder written by an export is replaced")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def to_hf(model: GPT, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None, *,
          force: bool = False) -> Path:
    """Write `model` (and its tokenizer, if given) as a Hugging Face GPT-2 folder; return its path.

    `transformers.GPT2LMHeadModel.from_pretrained(out_dir)` then gives the same logits, and
    `GPT.from_gpt2(out_dir)` the same model. out_dir must be empty or missing, unless force=True
    (which replaces an earlier export there).
    """
    model = _plain_gpt(model)
    _check_gpt2_shaped(model)
    _check_tokenizer(tokenizer, model.config.vocab_size)
    out = _target(out_dir, force)
    weights = hf_state_dict(model)
    eot = _eot_token(tokenizer)
    with atomic.folder_swap(out) as tmp:
        _write_json(tmp / "config.json", hf_config(model.config, eot))
        atomic.write_durably(tmp / "model.safetensors", lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
        _write_json(tmp / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot})
        _write_tokenizer(tmp, tokenizer, model.config.block_size)
    return out


class _Logits(torch.nn.Module):
    """`model(input_ids)` alone, with the input named as transformers names it."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)


def traced_program(model: GPT) -> torch.export.ExportedProgram:
    """The graph `to_onnx` converts: input_ids (batch, sequence) -> logits, traced by `torch.export`
    from a float32 CPU copy of `model` in eval mode (no dropout), with the batch size and the length
    left free: the length up to block_size, the number of learned positions or of RoPE's precomputed
    angles (the graph cannot grow a table), and unbounded with sinusoidal positions."""
    model = _plain_gpt(model)
    plain = copy.deepcopy(model).to("cpu", torch.float32).eval()
    longest = None if model.config.pos_encoding == "sinusoidal" else model.config.block_size
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=longest)
    example = torch.zeros(2, min(8, model.config.block_size), dtype=torch.long)
    return torch.export.export(_Logits(plain), (example,), dynamic_shapes={"input_ids": {0: batch, 1: sequence}})


def to_onnx(model: GPT, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None, *,
            force: bool = False) -> Path:
    """Write `out_dir/model.onnx` (the graph of `traced_program`): input_ids (batch, sequence) int64
    -> logits (batch, sequence, vocab_size) float32, and the tokenizer's files beside it. Returns
    the folder. Needs onnx and onnxscript (the `onnx` extra)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs both)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'mini_gpt[onnx]'") from None
    model = _plain_gpt(model)
    _check_tokenizer(tokenizer, model.config.vocab_size)
    out = _target(out_dir, force)
    program = traced_program(model)
    # one file, unless the weights pass protobuf's 2 GiB limit: then they go to model.onnx.data
    big = sum(p.numel() for p in model.parameters()) * 4 > 2**30
    with atomic.folder_swap(out) as tmp:
        torch.onnx.export(program, f=str(tmp / "model.onnx"), dynamo=True, external_data=big,
                          input_names=["input_ids"], output_names=["logits"])
        for written in tmp.iterdir():
            atomic.fsync_file(written)
        _write_tokenizer(tmp, tokenizer, model.config.block_size)
    return out
