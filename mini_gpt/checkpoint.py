"""Crash-safe checkpoints of the whole training state.

A checkpoint is a folder `ckpt-<step>` holding only files that cannot run code when loaded:

    model.safetensors   the weights
    optim.safetensors   the optimizer's tensors (Adam moments, step counts) and RNG states
    state.json          step, configs, data-stream position, Python RNG, optimizer hyper-parameters,
                        and the tokenizer (a CharTokenizer's characters, or a BPE tokenizer's name)
    tokenizer.json      only for a byte-level BPE trained on the data ("bpe:N"): its merges, saved
                        by `BytePairTokenizer.save` (JSON with a sha256 that `load` checks)

Writes are atomic (`atomic.folder_swap`): everything goes into a hidden temp folder, each file is
fsync'ed, the folder is renamed to its final name (one atomic step), and the parent is fsync'ed.
A crash at any moment leaves either the new checkpoint whole or no trace of it, and the previous
one untouched. The last `keep` checkpoints are kept; `latest_checkpoint` skips any that fail to load.

Training also keeps the checkpoint of its lowest validation loss so far in `<out>/best/`, as a
training folder of its own holding one `ckpt-<step>` (written the same way, the older one removed
after the new one is whole), so `load_checkpoint("<out>/best")` loads it and a kill while it is
written leaves the previous best. `list_checkpoints("<out>")` does not list it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import atomic
from .bpe import BytePairTokenizer
from .config import GPTConfig
from .tokenizer import BPETokenizer, CharTokenizer

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8,})$")
BEST_DIR = "best"  # <out>/best: the checkpoint of the lowest validation loss so far
FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.json"  # a trained BytePairTokenizer, beside state.json


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or what is on disk is not a loadable checkpoint."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_config: GPTConfig
    model_state: dict[str, torch.Tensor]
    optim_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    def tokenizer(self) -> CharTokenizer | BPETokenizer | BytePairTokenizer | None:
        tok = self.state.get("tokenizer")
        if tok is None:
            return None
        if tok["type"] == "char":
            return CharTokenizer(tok["chars"])
        if tok["type"] == "bytepair":
            try:
                return BytePairTokenizer.load(self.path / TOKENIZER_FILE)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"checkpoint {self.path} has no loadable tokenizer: {exc}") from exc
        return BPETokenizer(tok["name"])


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    out_dir: str | os.PathLike,
    *,
    step: int,
    model: torch.nn.Module,
    model_config: GPTConfig,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    tokenizer: CharTokenizer | BPETokenizer | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write `out_dir/ckpt-<step>` atomically and keep only the newest `keep` checkpoints."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_leftovers(out_dir, "ckpt-")  # left by a save that crashed (one writer: rank 0)
    final = out_dir / f"ckpt-{step:08d}"
    try:
        with atomic.folder_swap(final) as tmp:
            weights = {k: v.detach().contiguous().cpu() for k, v in _plain_state_dict(model).items()}
            atomic.write_durably(tmp / "model.safetensors",
                                 lambda p: save_file(weights, str(p), metadata={"format": "mini_gpt"}))
            optim_tensors, optim_meta = _flatten_optimizer(optimizer) if optimizer is not None else ({}, None)
            optim_tensors.update(_rng_tensors())
            atomic.write_durably(tmp / "optim.safetensors", lambda p: save_file(optim_tensors, str(p)))
            if isinstance(tokenizer, BytePairTokenizer):
                tokenizer.save(tmp / TOKENIZER_FILE)
            state = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "model_config": model_config.to_dict(),
                "optimizer": optim_meta,
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                "python_rng": _python_rng_to_json(random.getstate()),
                "tokenizer": _tokenizer_to_json(tokenizer),
                **(extra or {}),
            }
            atomic.write_durably(tmp / "state.json", lambda p: p.write_text(json.dumps(state, indent=1)))
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {final}: {exc.strerror or exc}; the previous checkpoint is untouched"
        ) from exc
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the underlying model: without torch.compile's `_orig_mod.` or DDP's
    `module.` prefixes, and with each tied weight stored once (safetensors refuses shared memory)."""
    sd = unwrap_model(model).state_dict()
    seen: dict[int, str] = {}
    out = {}
    for k, v in sd.items():
        ptr = v.data_ptr()
        if ptr in seen and v.numel() > 0:
            continue  # a tied weight (lm_head.weight is wte.weight); load_state_dict re-ties it
        seen[ptr] = k
        out[k] = v
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, pstate in sd["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _python_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _tokenizer_to_json(tok) -> dict[str, Any] | None:
    if tok is None:
        return None
    if isinstance(tok, CharTokenizer):
        return {"type": "char", "chars": tok.chars}
    if isinstance(tok, BPETokenizer):
        return {"type": "bpe", "name": tok.name}
    if isinstance(tok, BytePairTokenizer):  # its merges are in TOKENIZER_FILE
        return {"type": "bytepair", "vocab_size": tok.vocab_size}
    raise TypeError(f"tokenizer must be a CharTokenizer, BPETokenizer or BytePairTokenizer, got {type(tok).__name__}")


# ---------------------------------------------------------------------------------------------
# loading


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `out_dir`, oldest first (temp folders of unfinished saves are not listed)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and CKPT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_PATTERN.match(p.name).group(1)))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read one checkpoint folder (or, given a training folder, its newest loadable checkpoint).

    Only safetensors and JSON are read, so a planted file cannot execute code: anything else
    in their place is refused with `CheckpointError`.
    """
    path = Path(path)
    if not (path / "state.json").exists() and list_checkpoints(path):
        return latest_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (expected model.safetensors and state.json in it)")
    try:
        state = json.loads((path / "state.json").read_text("utf-8"))
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            raise ValueError("not a mini_gpt checkpoint state")
        model_state = load_file(str(path / "model.safetensors"))
        optim_file = path / "optim.safetensors"
        optim = load_file(str(optim_file)) if optim_file.exists() else {}
        config = GPTConfig.from_dict(state["model_config"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a loadable mini_gpt checkpoint ({type(exc).__name__}: {exc}); "
            f"only safetensors and JSON files are read, never pickle"
        ) from exc
    return Checkpoint(path, int(state["step"]), config, model_state, optim, state)


def latest_checkpoint(out_dir: str | os.PathLike) -> Checkpoint:
    """The newest checkpoint in `out_dir` that loads; broken or half-written ones are skipped."""
    errors = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
    detail = ("; ".join(errors)) if errors else "none found"
    raise CheckpointError(f"no loadable checkpoint in {out_dir}: {detail}")


def restore_model(ckpt: Checkpoint, model: torch.nn.Module) -> None:
    """Load the weights into `model` (plain, compiled or DDP-wrapped)."""
    missing, unexpected = unwrap_model(model).load_state_dict(ckpt.model_state, strict=False)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit the model: missing {missing}, unexpected {unexpected}")


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    # only a head that *is* the embedding may be missing: an untied head (Llama-style) is a weight
    m = unwrap_model(model)
    head, wte = getattr(m, "lm_head", None), getattr(getattr(m, "transformer", None), "wte", None)
    return key == "lm_head.weight" and head is not None and wte is not None and head.weight is wte.weight


def restore_training_state(
    ckpt: Checkpoint,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Load optimizer, grad scaler and RNG states so training continues exactly."""
    if optimizer is not None:
        meta = ckpt.state.get("optimizer")
        if meta is None:
            raise CheckpointError(f"checkpoint {ckpt.path} has no optimizer state")
        state: dict[int, dict[str, Any]] = {}
        for key, value in ckpt.optim_tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for key, value in meta["scalars"].items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scaler is not None and ckpt.state.get("scaler"):
        scaler.load_state_dict(ckpt.state["scaler"])
    torch.set_rng_state(ckpt.optim_tensors["rng.torch_cpu"])
    cuda_states = [ckpt.optim_tensors[k] for k in sorted(ckpt.optim_tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    version, internal, gauss = ckpt.state["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A trained `GPT` in eval mode, and its tokenizer, from a checkpoint or training folder."""
    from .model import GPT

    ckpt = load_checkpoint(path)
    model = GPT(ckpt.model_config)
    restore_model(ckpt, model)
    return model.to(device).eval(), ckpt.tokenizer()
