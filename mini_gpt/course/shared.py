"""What several chapters run on: a tiny deterministic GPT, Tiny Shakespeare and its tokenizers,
and the shared Shakespeare model, trained once per machine and cached by its recipe.

- `small_model()`, `small_config()`: a tiny GPT for examples that must run in milliseconds.
- `shakespeare_text()`, `char_tokenizer()`, `bpe_tokenizer()`, `SHAKESPEARE_LINE`.
- `shakespeare_model()`: the character-level model the chapters from training on share, trained
  by the recipe `SHAKESPEARE_CONFIG` + `SHAKESPEARE_TRAINING` (`shakespeare_recipe()`), cached in
  `shakespeare_model_dir()`; `train_shakespeare_model()` trains the same recipe step by step (the
  training chapter does) and `adopt_shakespeare_model()` puts such a run in the cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ..config import GPTConfig
from ..model import GPT
from ..recipes import recipe
from ..tokenizer import BPETokenizer, CharTokenizer

__all__ = ["SHAKESPEARE_LINE", "small_config", "small_model", "shakespeare_text", "char_tokenizer", "bpe_tokenizer",
           "SHAKESPEARE_CONFIG", "SHAKESPEARE_TRAINING", "SHAKESPEARE_THREADS", "shakespeare_recipe",
           "shakespeare_model", "shakespeare_model_dir", "shakespeare_history", "train_shakespeare_model",
           "adopt_shakespeare_model"]

# A line from the first page of Tiny Shakespeare: short, and its names split into several BPE tokens
SHAKESPEARE_LINE = "First, you know Caius Marcius is chief enemy to the people."

# ---------------------------------------------------------------------------- small models and data

_SMALL = dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)


def small_config(**overrides: Any) -> GPTConfig:
    """A tiny GPT's config: 65 characters, context 64, 2 layers, 4 heads, width 64."""
    return GPTConfig(**{**_SMALL, **overrides})


def small_model(seed: int = 0, **overrides: Any) -> GPT:
    """A tiny GPT with GPT-2's random initialisation, the same for the same seed, in eval mode.

    Overrides change the config (e.g. `n_layer=1`). The global random state is left untouched.
    """
    config = small_config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(config)
    return model.eval()


@functools.lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """Tiny Shakespeare (1,115,394 characters), read once."""
    from ..data import load_text

    return load_text("shakespeare")


@functools.lru_cache(maxsize=1)
def char_tokenizer() -> CharTokenizer:
    """The 65-character tokenizer of Tiny Shakespeare."""
    return CharTokenizer.from_text(shakespeare_text())


@functools.lru_cache(maxsize=1)
def bpe_tokenizer() -> BPETokenizer:
    """GPT-2's byte-pair encoding (50257 tokens)."""
    return BPETokenizer("gpt2")


# ---------------------------------------------------------------------------- the shared Shakespeare model

# The model the chapters from training on share: the shakespeare-char shape (4 layers, 4 heads,
# width 128, context 128) trained for 1,000 steps of 16 windows (2M characters). It takes about
# 75 s on 2 cores here in bf16 and reaches a validation loss near 1.9: it writes words, names and
# line breaks. The cached weights are keyed by these values (`_recipe_key`): changing one trains anew.
# Its recipe lives in the library's one registry (`mini_gpt.recipes`, "course-shakespeare"); the two
# dicts are the recipe's model and training fields, which the cache key below is computed from.
SHAKESPEARE_CONFIG = recipe("course-shakespeare").model_dict()
SHAKESPEARE_TRAINING = recipe("course-shakespeare").train_dict()
SHAKESPEARE_THREADS = 2  # the training's thread count is part of the recipe: sums differ between counts
_RECIPE_VERSION = 1  # bump when the training loop changes what the recipe produces


@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def shakespeare_recipe(**overrides: Any):
    """The shared model's `(GPTConfig, TrainConfig)`; overrides change the TrainConfig (e.g. `out_dir`)."""
    from ..train import TrainConfig

    return GPTConfig(**SHAKESPEARE_CONFIG), TrainConfig(**{**SHAKESPEARE_TRAINING, **overrides})


def _recipe_key() -> str:
    """What the trained weights depend on: the recipe, the precision this CPU trains in, the thread
    count, torch's version and the data. Another machine or torch gets its own cached model."""
    from ..files import FILES
    from ..train import resolve_dtype

    _, train_config = shakespeare_recipe()
    dtype = resolve_dtype(train_config.dtype, torch.device("cpu"))
    blob = json.dumps(
        [_RECIPE_VERSION, SHAKESPEARE_CONFIG, SHAKESPEARE_TRAINING, str(dtype), SHAKESPEARE_THREADS,
         torch.__version__.split("+")[0], FILES["tinyshakespeare.txt"].sha256],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def shakespeare_model_dir() -> Path:
    """Where the shared model is cached: `<mini_gpt cache>/course/shakespeare-char-<recipe hash>`."""
    from ..files import cache_dir

    return cache_dir() / "course" / f"shakespeare-char-{_recipe_key()}"


def train_shakespeare_model(out_dir: str | os.PathLike, *, max_iters: int | None = None, progress: bool = True):
    """Train the shared model's recipe into `out_dir`, resuming what is already there.

    `max_iters` stops early (the schedule stays the recipe's), so calling it with 100, then 250,
    then nothing gives the same weights as one uninterrupted run: resume is exact. Returns the
    `TrainResult` of this call; the metrics of the whole run are in `out_dir/metrics.jsonl`.
    """
    from ..checkpoint import list_checkpoints
    from ..train import train

    config, train_config = shakespeare_recipe(
        out_dir=str(out_dir), resume=bool(list_checkpoints(out_dir)), progress=progress,
        checkpoint_interval=SHAKESPEARE_TRAINING["eval_interval"], lr_decay_iters=SHAKESPEARE_TRAINING["max_iters"],
        **({} if max_iters is None else {"max_iters": max_iters}),
    )
    if train_config.max_iters > SHAKESPEARE_TRAINING["max_iters"]:
        raise ValueError(f"max_iters must be at most the recipe's {SHAKESPEARE_TRAINING['max_iters']}, got {max_iters}")
    data = _shakespeare_dataset()
    with _torch_threads(SHAKESPEARE_THREADS), torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_config.seed)
        model = GPT(config)
        return train(model, data, train_config, meta={"recipe": _recipe_key()})


@functools.lru_cache(maxsize=1)
def _shakespeare_dataset():
    from ..data import TextDataset

    return TextDataset.from_text(shakespeare_text(), char_tokenizer())


def _finished(out_dir: Path) -> bool:
    from ..checkpoint import CheckpointError, latest_checkpoint

    try:
        return latest_checkpoint(out_dir).step >= SHAKESPEARE_TRAINING["max_iters"]
    except CheckpointError:
        return False


def shakespeare_model(*, progress: bool = True) -> GPT:
    """The course's trained character-level Shakespeare model, in eval mode.

    Trained once per machine (about 75 s on 2 cores with bf16, a few minutes in float32) and
    cached by its recipe in `shakespeare_model_dir()`; later calls load it in well under a second.
    An interrupted training resumes where it stopped. Its tokenizer is `char_tokenizer()`.
    """
    from ..checkpoint import load_model

    out_dir = shakespeare_model_dir()
    if not _finished(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(out_dir / ".lock"):  # two notebooks starting at once train it once
            if not _finished(out_dir):  # silent apart from the progress bar: a chapter's outputs stay the same
                train_shakespeare_model(out_dir, progress=progress)
    model, _ = load_model(out_dir)
    return model


def adopt_shakespeare_model(run_dir: str | os.PathLike) -> Path:
    """Put a finished run of the recipe (e.g. the one the training chapter trains step by step) in
    the cache, so `shakespeare_model()` need not train it again. Refuses a run of any other recipe."""
    from ..checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt.state.get("meta", {}).get("recipe") != _recipe_key() or ckpt.step != SHAKESPEARE_TRAINING["max_iters"]:
        raise ValueError(
            f"run_dir {str(run_dir)!r} is not a finished run of the shared model's recipe "
            f"(train it with train_shakespeare_model(run_dir) to {SHAKESPEARE_TRAINING['max_iters']} steps)"
        )
    out_dir = shakespeare_model_dir()
    if not _finished(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".adopt-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt.path, tmp)
        shutil.copyfile(Path(run_dir) / "metrics.jsonl", out_dir / "metrics.jsonl")
        os.replace(tmp, out_dir / ckpt.path.name)  # a checkpoint appears whole or not at all
    return out_dir


def shakespeare_history() -> list[dict[str, Any]]:
    """The shared model's training metrics (the records of its `metrics.jsonl`), training it if needed."""
    shakespeare_model(progress=False)
    lines = (shakespeare_model_dir() / "metrics.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
