"""What the course's chapters share: notebook setup, small models, figures and exercise checks.

The chapters build each mechanism by hand and compare it with the library. This module holds
what more than one chapter needs, so that no notebook pastes a helper from another:

- `setup_notebook()`: seeds, one CPU thread, no progress bars, no version-dependent warnings —
  what keeps a notebook's outputs the same from run to run (nbval re-runs them as tests).
- `small_model()`, `small_config()`: a tiny deterministic GPT for examples that must run in
  milliseconds; `shakespeare_text()`, `char_tokenizer()`, `bpe_tokenizer()`, `SHAKESPEARE_LINE`.
- figures: `draw_pipeline()` (text -> tokens -> GPT -> logits -> loss / sampling, with the
  chapter's part highlighted), `draw_tokens()` (token boundaries), `draw_block()` (pre-norm and
  post-norm transformer blocks).
- exercise checks, `check_*(fn)`: each runs the reader's function on several inputs, compares it
  with the library (or PyTorch), and prints a ✓ line when it agrees (it returns None, so the
  cell shows only that line). A wrong answer raises an AssertionError that says what differs
  and, for the usual mistakes, what the mistake probably is. A function that still returns None
  (an exercise not started yet) gets a reminder, not an error.

`course` sits on top of the library: nothing in `mini_gpt` imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import textwrap
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .attention import CausalSelfAttention
from .block import Block
from .config import GPTConfig
from .loss import autoregressive_loss, next_token_accuracy
from .masks import causal_mask, offset_causal_mask
from .model import GPT
from .tokenizer import BPETokenizer, CharTokenizer

REPO = "mini-gpt/mini_gpt"  # the course's GitHub repository (Colab badges, source links)
BRANCH = "main"

# A line from the first page of Tiny Shakespeare: short, and its names split into several BPE tokens
SHAKESPEARE_LINE = "First, you know Caius Marcius is chief enemy to the people."

__all__ = [
    "REPO",
    "SHAKESPEARE_LINE",
    "source_url",
    "colab_url",
    "setup_notebook",
    "small_config",
    "small_model",
    "shakespeare_text",
    "char_tokenizer",
    "bpe_tokenizer",
    "SHAKESPEARE_CONFIG",
    "SHAKESPEARE_TRAINING",
    "shakespeare_recipe",
    "shakespeare_model",
    "shakespeare_model_dir",
    "shakespeare_history",
    "train_shakespeare_model",
    "adopt_shakespeare_model",
    "draw_pipeline",
    "draw_tokens",
    "draw_block",
    "check_char_encode",
    "check_causal_mask",
    "check_offset_causal_mask",
    "check_attention",
    "check_shifted_loss",
    "check_next_token_accuracy",
    "check_layer_norm",
    "check_gelu",
    "check_multi_head_attention",
    "check_block",
    "check_gpt_forward",
    "check_param_count",
]


# ---------------------------------------------------------------------------- links and setup


def source_url(module: str) -> str:
    """The GitHub page of a library module, e.g. source_url("masks") -> .../mini_gpt/masks.py."""
    name = module.removeprefix("mini_gpt.").removesuffix(".py")
    return f"https://github.com/{REPO}/blob/{BRANCH}/mini_gpt/{name}.py"


def colab_url(notebook: str) -> str:
    """Where a chapter opens in Colab, e.g. colab_url("01_causal_masks")."""
    name = notebook.removesuffix(".ipynb")
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/chapters/{name}.ipynb"


def setup_notebook(seed: int = 0, threads: int = 1) -> None:
    """Make a notebook's outputs reproducible: seed torch, pin the CPU thread count, silence
    progress bars and version-dependent warnings.

    One thread by default: float sums can differ in their last digits between thread counts,
    and two threads slow down a lot when another process takes a core. The course's models are
    small enough that one thread is fast.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it when a bar is created
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    # deprecation notices depend on the installed versions: they would make a cell's stderr
    # differ from one machine to another without saying anything about the course
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if importlib.util.find_spec("matplotlib") is not None:  # figures need mini_gpt[book]; the rest works without
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})


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
    from .data import load_text

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

# The model chapters 5-9 share: the shakespeare-char shape (4 layers, 4 heads, width 128, context
# 128) trained for 1,000 steps of 16 windows (2M characters). It takes about 75 s on 2 cores
# here in bf16 and reaches a validation loss near 1.9: it writes words, names and line breaks.
SHAKESPEARE_CONFIG = dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
SHAKESPEARE_TRAINING = dict(
    batch_size=16, max_iters=1000, learning_rate=2e-3, min_lr=2e-4, warmup_iters=50, weight_decay=0.1,
    grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10, device="cpu", dtype="auto", seed=1337,
)
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
    from .train import TrainConfig

    return GPTConfig(**SHAKESPEARE_CONFIG), TrainConfig(**{**SHAKESPEARE_TRAINING, **overrides})


def _recipe_key() -> str:
    """What the trained weights depend on: the recipe, the precision this CPU trains in, the thread
    count, torch's version and the data. Another machine or torch gets its own cached model."""
    from .files import FILES
    from .train import resolve_dtype

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
    from .files import cache_dir

    return cache_dir() / "course" / f"shakespeare-char-{_recipe_key()}"


def train_shakespeare_model(out_dir: str | os.PathLike, *, max_iters: int | None = None, progress: bool = True):
    """Train the shared model's recipe into `out_dir`, resuming what is already there.

    `max_iters` stops early (the schedule stays the recipe's), so calling it with 100, then 250,
    then nothing gives the same weights as one uninterrupted run: resume is exact. Returns the
    `TrainResult` of this call; the metrics of the whole run are in `out_dir/metrics.jsonl`.
    """
    from .checkpoint import list_checkpoints
    from .train import train

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
    from .data import TextDataset

    return TextDataset.from_text(shakespeare_text(), char_tokenizer())


def _finished(out_dir: Path) -> bool:
    from .checkpoint import CheckpointError, latest_checkpoint

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
    from .checkpoint import load_model

    out_dir = shakespeare_model_dir()
    if not _finished(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / ".lock", "w") as lock:  # two notebooks starting at once train it once
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not _finished(out_dir):  # silent apart from the progress bar: a chapter's outputs stay the same
                    train_shakespeare_model(out_dir, progress=progress)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    model, _ = load_model(out_dir)
    return model


def adopt_shakespeare_model(run_dir: str | os.PathLike) -> Path:
    """Put a finished run of the recipe (e.g. the one chapter 5 trains step by step) in the cache,
    so `shakespeare_model()` need not train it again. Refuses a run of any other recipe."""
    from .checkpoint import latest_checkpoint

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


# ---------------------------------------------------------------------------- figures

_HIGHLIGHT = "#fde68a"  # the chapter's part of the pipeline
_BOX = "#e8eef7"
_EDGE = "#4b5563"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the course's figures need matplotlib: pip install 'mini_gpt[book]'") from exc
    return plt


def _box(ax, x, y, w, h, text, *, fill=_BOX, fontsize=10.5, bold=False, edge=_EDGE, lw=1.2, va="center"):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.8", fc=fill, ec=edge, lw=lw))
    ty = y + h / 2 if va == "center" else y + h - 1.2
    ax.text(x + w / 2, ty, text, ha="center", va=va, fontsize=fontsize, fontweight="bold" if bold else "normal")


def _arrow(ax, start, end, *, color=_EDGE, style="-|>", connection="arc3"):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=color, lw=1.3, shrinkA=0, shrinkB=0,
                                connectionstyle=connection))


PIPELINE_PARTS = ("text", "tokenizer", "tokens", "embeddings", "blocks", "norm", "head", "gpt", "logits", "loss",
                  "sampling")


def draw_pipeline(highlight: str | Iterable[str] | None = None, ax=None):
    """The whole course in one picture: text -> tokenizer -> token ids -> GPT -> logits -> loss
    (training) or sampling (generation, which feeds the new token back in).

    highlight: part(s) to colour, from PIPELINE_PARTS ("blocks" for the attention and MLP
    blocks, "gpt" for the whole model, "loss", ...). Returns the Axes.
    """
    if highlight is None:
        marked: set[str] = set()
    elif isinstance(highlight, str):
        marked = {highlight}
    else:
        marked = set(highlight)
    unknown = marked - set(PIPELINE_PARTS)
    if unknown:
        raise ValueError(f"highlight must name parts from {PIPELINE_PARTS}, got {sorted(unknown)}")
    if ax is None:
        plt = _pyplot()
        _, ax = plt.subplots(figsize=(9, 3.5), layout="constrained")

    def fill(part):
        return _HIGHLIGHT if part in marked else _BOX

    ax.set_xlim(0, 108)
    ax.set_ylim(-7, 33)
    ax.set_aspect("equal")
    ax.axis("off")
    _box(ax, 0, 12, 13, 8, "text\n\u201cFirst, you\u201d", fill=fill("text"))
    _box(ax, 20, 12, 13, 8, "token ids\n[18, 47, \u2026]", fill=fill("tokens"))
    # the GPT: a big box holding its four stages, top to bottom
    _box(ax, 38, 0, 32, 32, "GPT", fill="#f3f4f6" if "gpt" not in marked else _HIGHLIGHT, bold=True,
         va="top", fontsize=11.5)
    stages = [
        ("embeddings", "token + position embeddings"),
        ("blocks", "N \u00d7 block (attention + MLP)"),
        ("norm", "final LayerNorm"),
        ("head", "head (tied to the embeddings)"),
    ]
    for i, (part, label) in enumerate(stages):
        y = 22.5 - 6.8 * i
        _box(ax, 40, y, 28, 5, label, fill=fill(part), fontsize=9.5)
        if i:
            _arrow(ax, (54, y + 6.8), (54, y + 5))
    _box(ax, 74, 12, 11, 8, "logits\n(B, T, V)", fill=fill("logits"))
    _box(ax, 91, 21, 16, 8, "loss\n(training)", fill=fill("loss"))
    _box(ax, 91, 3, 16, 8, "sampling\n(generation)", fill=fill("sampling"))
    # the tokenizer is the arrow from text to ids
    tok_color = "#b45309" if "tokenizer" in marked else _EDGE
    _arrow(ax, (13, 16), (20, 16), color=tok_color)
    ax.text(16.5, 20.6, "tokenizer", ha="center", va="bottom", fontsize=9, color=tok_color,
            fontweight="bold" if "tokenizer" in marked else "normal")
    _arrow(ax, (33, 16), (38, 16))
    _arrow(ax, (70, 16), (74, 16))
    _arrow(ax, (85, 17.5), (91, 25))
    _arrow(ax, (85, 14.5), (91, 7))
    # generation appends the sampled token and runs again: a loop below everything
    loop = "#9ca3af"
    ax.plot([99, 99, 26.5], [3, -2.5, -2.5], color=loop, lw=1.3, solid_joinstyle="round")
    _arrow(ax, (26.5, -2.5), (26.5, 12), color=loop)
    ax.text(62, -3.3, "append the sampled token to the ids and run again", ha="center", va="top", fontsize=9,
            color="#6b7280")
    return ax


def draw_tokens(text: str, tokenizers: Mapping[str, Any], ax=None, *, colors: tuple[str, str] = ("#dbeafe", "#fde68a")):
    """One row of coloured chips per tokenizer: where each one cuts `text` into tokens.

    tokenizers: {row label: tokenizer}. Spaces are drawn as "␣", newlines as "⏎". Returns the Axes.
    """
    from .viz import token_labels

    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty str")
    rows = [(name, token_labels(tok, tok.encode(text))) for name, tok in tokenizers.items()]
    gap = 0.35
    widths = [sum(len(t) + gap for t in labels) for _, labels in rows]
    span = max(widths)
    if ax is None:
        plt = _pyplot()
        _, ax = plt.subplots(figsize=(min(16.0, 1.5 + 0.115 * span), 0.3 + 0.55 * len(rows)), layout="constrained")
    for r, (name, labels) in enumerate(rows):
        y = -1.6 * r
        x = 0.0
        for i, label in enumerate(labels):
            w = len(label)
            ax.add_patch(_pyplot().Rectangle((x, y - 0.55), w, 1.1, fc=colors[i % 2], ec="#6b7280", lw=0.6))
            ax.text(x + w / 2, y, label, ha="center", va="center", family="monospace", fontsize=10)
            x += w + gap
        ax.text(-0.6, y, f"{name}\n{len(labels)} tokens", ha="right", va="center", fontsize=9)
    ax.set_xlim(-0.5, span)
    ax.set_ylim(-1.6 * (len(rows) - 1) - 0.9, 0.9)
    ax.axis("off")
    return ax


def draw_block(kind: str = "pre", ax=None):
    """A transformer block as a diagram: the residual stream runs up the left, each sub-layer
    branches off and is added back (⊕). kind="pre" (GPT-2: LayerNorm before each sub-layer) or
    "post" (the original Transformer: LayerNorm after each addition). Returns the Axes."""
    if kind not in ("pre", "post"):
        raise ValueError(f"kind must be 'pre' or 'post', got {kind!r}")
    if ax is None:
        plt = _pyplot()
        _, ax = plt.subplots(figsize=(3.6, 6), layout="constrained")
    ax.set_xlim(0, 20)
    ax.set_ylim(-2, 44)
    ax.set_aspect("equal")
    ax.axis("off")
    lane, branch = 4.0, 13.0  # x of the residual stream and of the sub-layers
    ln_fill, attn_fill, mlp_fill = "#e5e7eb", "#dbeafe", "#dcfce7"

    def add(y):  # the ⊕ where a sub-layer's output joins the stream
        ax.add_patch(_pyplot().Circle((lane, y), 1.1, fc="white", ec=_EDGE, lw=1.2))
        ax.text(lane, y, "+", ha="center", va="center", fontsize=12)

    ax.text(lane, -1.5, "x (B, T, C)", ha="center", fontsize=9)
    ax.text(10, 43, "pre-norm (GPT-2)" if kind == "pre" else "post-norm (2017 Transformer)", ha="center",
            fontsize=10, fontweight="bold")
    y0 = 0.5
    sublayers = [("masked multi-head\nattention", attn_fill, "ln_1"), ("MLP\n(4C, GELU)", mlp_fill, "ln_2")]
    y = y0
    for name, fill_, ln in sublayers:
        top = y + 17
        if kind == "pre":
            _arrow(ax, (lane, y + 1.5), (branch, y + 3.5), style="-", connection="angle,angleA=0,angleB=90")
            _box(ax, branch - 4.5, y + 3.5, 9, 3, f"LayerNorm ({ln})", fill=ln_fill, fontsize=7.5)
            _arrow(ax, (branch, y + 6.5), (branch, y + 8.5))
            _box(ax, branch - 4.5, y + 8.5, 9, 4.5, name, fill=fill_, fontsize=7.5)
            _arrow(ax, (branch, y + 13), (lane + 1.1, top - 3), connection="angle,angleA=90,angleB=0")
            _arrow(ax, (lane, y), (lane, top - 4.1))
            add(top - 3)
            y = top - 1.9
        else:
            _arrow(ax, (lane, y + 1.5), (branch, y + 4.5), style="-", connection="angle,angleA=0,angleB=90")
            _box(ax, branch - 4.5, y + 4.5, 9, 4.5, name, fill=fill_, fontsize=7.5)
            _arrow(ax, (branch, y + 9), (lane + 1.1, y + 11), connection="angle,angleA=90,angleB=0")
            _arrow(ax, (lane, y), (lane, y + 9.9))
            add(y + 11)
            _arrow(ax, (lane, y + 12.1), (lane, y + 13.5))
            _box(ax, lane - 3.6, y + 13.5, 7.2, 3, f"LayerNorm ({ln})", fill=ln_fill, fontsize=7.0)
            y = y + 16.5
    _arrow(ax, (lane, y), (lane, 41))
    ax.text(lane + 0.6, 40.5, "to the next block", ha="left", fontsize=8, color="#6b7280")
    return ax


# ---------------------------------------------------------------------------- checking answers


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def _require_callable(fn: Any, check: str) -> None:
    if not callable(fn):
        raise TypeError(f"{check} takes your function itself, e.g. {check}(my_function), got {type(fn).__name__}")


def _not_answered(fn: Callable) -> None:
    print(f"\u270e {_name(fn)} returned None: write its body, then run this cell again.")


def _passed(fn: Callable, what: str) -> None:
    print(f"\u2713 {_name(fn)} {what}")


def _fail(fn: Callable, message: str) -> AssertionError:
    # long lines wrapped (a notebook shows them without wrapping); tensor printouts kept as they are
    lines = f"\u2717 {_name(fn)}: {message}".split("\n")
    wrapped = [textwrap.fill(line, 90, subsequent_indent="  ", break_on_hyphens=False) if len(line) > 90 else line
               for line in lines]
    return AssertionError("\n".join(wrapped))


def _call(fn: Callable, args: tuple, where: str):
    """Run the reader's function; an exception in it becomes an AssertionError saying on what input."""
    try:
        return fn(*args)
    except Exception as exc:  # the reader's code: report it with the input that triggered it
        raise _fail(fn, f"raised {type(exc).__name__}: {exc}\n  (on {where})") from exc


def _as_tensor(fn: Callable, out: Any, where: str) -> torch.Tensor:
    if isinstance(out, tuple):
        raise _fail(fn, f"returned a tuple of {len(out)} items on {where}; return one tensor")
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError):
            raise _fail(fn, f"returned {type(out).__name__} on {where}; return a torch.Tensor") from None
    return out


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a - b|: 0 where both hold the same value (the same infinity too), inf where
    only one is infinite or NaN (nan_to_num alone would report an infinity as 1.8e+308)."""
    a, b = a.double(), b.double()
    diff = (a - b).abs().nan_to_num(nan=math.inf, posinf=math.inf)
    return float(torch.where(a == b, 0.0, diff).max()) if diff.numel() else 0.0


def _diagnose(out: torch.Tensor, variants: Iterable[tuple[str, Callable[[], torch.Tensor]]], atol: float) -> str | None:
    """The explanation of the first known mistake whose result equals `out`, or None."""
    for explanation, make in variants:
        try:
            wrong = make()
        except Exception:  # a variant that cannot be computed here cannot be what was done
            continue
        if _close(out, wrong, atol=atol):
            return explanation
    return None


def _mismatch(fn: Callable, out: torch.Tensor, expected: torch.Tensor, where: str, reference: str,
              hint: str | None, atol: float) -> AssertionError:
    if out.shape != expected.shape:
        msg = f"on {where} the result has shape {tuple(out.shape)}, but {reference} gives {tuple(expected.shape)}"
    else:
        msg = (f"on {where} the result differs from {reference} by up to {_max_diff(out, expected):.3g} "
               f"(allowed: {atol:g})")
    if hint:
        msg += f".\n  Probably: {hint}"
    return _fail(fn, msg)


def _random_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- chapter 0: tokens


def check_char_encode(fn: Callable[[str, list[str]], list[int]]) -> None:
    """fn(text, chars) -> list of ids, where chars is the sorted vocabulary and chars[i] has id i.

    Compared with `CharTokenizer(chars).encode(text)` on several texts.
    """
    _require_callable(fn, "check_char_encode")
    cases = [
        ("hello", sorted(set("hello world"))),
        ("First Citizen:\nBefore we proceed", sorted(set("First Citizen:\nBefore we proceed any further"))),
        ("abcabc", list("cba")),
        ("a", ["a"]),
    ]
    for n, (text, chars) in enumerate(cases):
        where = f"text={text!r}, chars={''.join(chars)!r}"
        out = _call(fn, (text, list(chars)), where)
        if out is None:
            return _not_answered(fn)
        if isinstance(out, torch.Tensor):
            out = out.tolist()
        if isinstance(out, str):
            raise _fail(fn, f"returned a str on {where}; return the list of ids (ints)")
        try:
            got = [int(i) for i in out]
        except (TypeError, ValueError):
            raise _fail(fn, f"returned {out!r} on {where}; return a list of ints") from None
        expected = CharTokenizer(chars).encode(text)
        if got != expected:
            hint = ""
            if got == [ord(c) for c in text]:
                hint = " These are Unicode code points (ord); the id is the character's index in chars."
            elif got == [i + 1 for i in expected]:
                hint = " Every id is one too large: ids count from 0."
            elif n == 2:
                hint = " chars is not always sorted alphabetically: use its order as given (chars.index(c))."
            raise _fail(fn, f"on {where} expected {expected}, got {got}.{hint}")
    return _passed(fn, "encodes like CharTokenizer on 4 texts")


# -- chapter 1: causal masks and attention


def check_causal_mask(fn: Callable[[int], torch.Tensor]) -> None:
    """fn(T) -> bool (T, T), True where query i may attend to key j (j <= i).

    Compared with `mini_gpt.masks.causal_mask` for several T.
    """
    _require_callable(fn, "check_causal_mask")
    sizes = (4, 1, 2, 7)  # 4 first: the usual mistakes are told apart there (at T=1 many coincide)
    for T in sizes:
        where = f"T={T}"
        out = _call(fn, (T,), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where)
        expected = causal_mask(T)
        if out.shape != (T, T):
            raise _fail(fn, f"for T={T} the mask has shape {tuple(out.shape)}; it must be (T, T) = ({T}, {T})")
        if out.dtype != torch.bool:
            additive = out.is_floating_point() and torch.equal(torch.isneginf(out), ~expected)
            if additive and bool((out[expected] == 0).all()):
                raise _fail(fn, "this is the additive bias (0 and -inf, mini_gpt.masks.causal_bias), not the "
                                "boolean mask: return True where attending is allowed")
            if torch.equal(out.ne(0), expected):
                raise _fail(fn, f"the pattern is right but the dtype is {out.dtype}; the convention "
                                f"(F.scaled_dot_product_attention's) is a bool tensor: add .bool() or dtype=torch.bool")
            raise _fail(fn, f"return a bool tensor (True = may attend), got dtype {out.dtype}")
        if torch.equal(out, expected):
            continue
        if torch.equal(out, expected.T):
            hint = ("this is the upper triangle: query i may see keys j >= i, i.e. the future. "
                    "Row i must be True up to and including column i: torch.tril, not torch.triu")
        elif torch.equal(out, ~expected):
            hint = "True and False are swapped: True must mean 'may attend' (the past), not 'masked out'"
        elif torch.equal(out, expected & ~torch.eye(T, dtype=torch.bool)):
            hint = ("the diagonal is False, but every token must be able to attend to itself (row 0 "
                    "would be all False, and softmax of a row of -inf is NaN)")
        elif torch.equal(out, ~expected.T):
            hint = "this marks the strict past as False; True must be where j <= i"
        else:
            hint = f"expected\n{expected.int()}\n  got\n{out.int()}"
        raise _fail(fn, f"wrong mask for T={T}: {hint}")
    return _passed(fn, f"matches mini_gpt.masks.causal_mask for T = {', '.join(map(str, sorted(sizes)))}")


def check_offset_causal_mask(fn: Callable[[int, int], torch.Tensor]) -> None:
    """fn(T, S) -> bool (T, S): T new queries that come after S - T cached keys.

    Compared with `mini_gpt.masks.offset_causal_mask`.
    """
    _require_callable(fn, "check_offset_causal_mask")
    cases = ((1, 1), (3, 3), (1, 6), (2, 5), (3, 7))
    for T, S in cases:
        where = f"T={T}, S={S}"
        out = _call(fn, (T, S), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where)
        expected = offset_causal_mask(T, S)
        if out.shape != (T, S):
            raise _fail(fn, f"for {where} the mask has shape {tuple(out.shape)}; it must be (T, S) = ({T}, {S})")
        if out.dtype != torch.bool:
            raise _fail(fn, f"return a bool tensor (True = may attend), got dtype {out.dtype}")
        if torch.equal(out, expected):
            continue
        if T < S and torch.equal(out, torch.ones(T, S, dtype=torch.bool).tril()):
            hint = ("the triangle starts at column 0, as if the new queries were the first tokens; query i "
                    "sits at position (S - T) + i, so shift the diagonal: tril(diagonal=S - T)")
        elif torch.equal(out, ~expected):
            hint = "True and False are swapped: True must mean 'may attend'"
        else:
            hint = f"expected\n{expected.int()}\n  got\n{out.int()}"
        raise _fail(fn, f"wrong mask for {where}: {hint}")
    return _passed(fn, f"matches mini_gpt.masks.offset_causal_mask on {len(cases)} (T, S) pairs")


def _attention_variant(q, k, v, *, scale="sqrt", mask="causal", dim=-1):
    d = q.shape[-1]
    s = q @ k.transpose(-2, -1)
    s = s / {"sqrt": math.sqrt(d), "d": d, "none": 1.0}[scale]
    T, S = s.shape[-2:]
    if mask == "causal":
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))
    elif mask == "upper":
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).triu(), float("-inf"))
    elif mask == "zero":  # masked scores set to 0 instead of -inf: they still get weight
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), 0.0)
    return torch.softmax(s, dim=dim) @ v


def check_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(q, k, v) -> causal attention output, all (B, H, T, hs).

    Compared with `F.scaled_dot_product_attention(q, k, v, is_causal=True)` on several shapes.
    """
    _require_callable(fn, "check_attention")
    shapes = ((1, 1, 4, 8), (2, 3, 6, 16), (1, 2, 1, 4), (2, 4, 9, 5))
    g = _random_generator(1)
    atol = 1e-5
    for shape in shapes:
        q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
        where = f"q, k, v of shape {shape}"
        out = _call(fn, (q.clone(), k.clone(), v.clone()), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if _close(out, expected, atol=atol):
            continue
        variants = [
            ("no causal mask: every query also attends to later keys (the future)",
             lambda: _attention_variant(q, k, v, mask="none")),
            ("the scores are not scaled: divide q @ k^T by sqrt(head size)",
             lambda: _attention_variant(q, k, v, scale="none")),
            ("the scores are divided by the head size; divide by its square root",
             lambda: _attention_variant(q, k, v, scale="d")),
            ("the mask keeps the upper triangle (the future) instead of the lower one: use tril",
             lambda: _attention_variant(q, k, v, mask="upper")),
            ("masked scores are set to 0, which still gets weight after softmax: set them to -inf",
             lambda: _attention_variant(q, k, v, mask="zero")),
            ("softmax runs over the queries (dim=-2); it must run over the keys (dim=-1), so each row sums to 1",
             lambda: _attention_variant(q, k, v, dim=-2)),
            ("this returns the attention weights; multiply them by v",
             lambda: torch.softmax(_scores_causal(q, k), dim=-1)),
        ]
        raise _mismatch(fn, out, expected, where, "F.scaled_dot_product_attention(is_causal=True)",
                        _diagnose(out, variants, atol), atol)
    return _passed(fn, f"matches causal F.scaled_dot_product_attention on {len(shapes)} shapes")


def _scores_causal(q, k):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T, S = s.shape[-2:]
    return s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))


# -- chapter 2: the loss


def _loss_cases(seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = _random_generator(seed)
    cases = []
    for B, T, V in ((1, 2, 5), (2, 7, 11), (3, 16, 65)):
        logits = torch.randn(B, T, V, generator=g) * 2
        tokens = torch.randint(0, V, (B, T), generator=g)
        cases.append((f"logits {tuple(logits.shape)}, tokens {tuple(tokens.shape)}", logits, tokens))
    # a padded batch: the second row's text ends early; its padding targets are ignore_index
    logits = torch.randn(2, 8, 13, generator=g) * 2
    tokens = torch.randint(0, 13, (2, 8), generator=g)
    tokens[1, 5:] = -100
    cases.append(("a padded batch (tokens[1, 5:] == -100)", logits, tokens))
    return cases


def check_shifted_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(logits (B, T, V), tokens (B, T)) -> the mean next-token cross-entropy (a number).

    The logits at position t are scored against tokens[:, t + 1]; tokens equal to -100
    (padding) are left out of the mean. Compared with `mini_gpt.loss.autoregressive_loss`.
    """
    _require_callable(fn, "check_shifted_loss")
    atol = 1e-5
    for where, logits, tokens in _loss_cases(2):
        out = _call(fn, (logits.clone(), tokens.clone()), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where)
        if out.numel() != 1:
            raise _fail(fn, f"returned shape {tuple(out.shape)} on {where}; return the mean loss, one number "
                            f"(average over the scored positions)")
        out = out.detach().reshape(())
        expected = autoregressive_loss(logits, tokens)
        if _close(out, expected, atol=atol):
            continue
        V = logits.shape[-1]
        pred, target = logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)
        keep = target != -100
        variants = [
            ("no shift: the logits at position t predict token t + 1, so score logits[:, :-1] against tokens[:, 1:]",
             lambda: F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))),
            ("shifted the wrong way: score logits[:, :-1] against tokens[:, 1:] "
             "(not logits[:, 1:] against tokens[:, :-1])",
             lambda: F.cross_entropy(logits[:, 1:].reshape(-1, V), tokens[:, :-1].reshape(-1))),
            ("this is the sum over positions; the loss is the mean",
             lambda: F.cross_entropy(pred, target, reduction="sum")),
            ("padding is counted in the mean: divide by the number of real targets (tokens != -100), not all positions",
             lambda: F.cross_entropy(pred, target, reduction="sum") / target.numel()),
            ("the sign is flipped: the loss is -log p(next token), a positive number",
             lambda: -F.cross_entropy(pred, target)),
            ("log is missing: the loss averages -log p, not -p",
             lambda: -F.softmax(pred[keep], -1).gather(1, target[keep, None]).mean()),
            ("log_softmax is missing: the logits must be normalised into log-probabilities first",
             lambda: -pred[keep].gather(1, target[keep, None]).mean()),
        ]
        raise _mismatch(fn, out, expected, where, "mini_gpt.loss.autoregressive_loss",
                        _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches autoregressive_loss on 4 batches (1 padded)")


def check_next_token_accuracy(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(logits (B, T, V), tokens (B, T)) -> the fraction of scored positions whose argmax is the
    next token (padding, -100, left out). Compared with `mini_gpt.loss.next_token_accuracy`."""
    _require_callable(fn, "check_next_token_accuracy")
    atol = 1e-6
    cases = _loss_cases(3)
    # make the answer non-trivial: about half of the argmaxes are right
    for _, logits, tokens in cases:
        right = tokens[:, 1:].clamp(min=0)
        logits[:, :-1].scatter_(-1, right[..., None], 10.0)
        logits[:, :-1:2] = logits[:, :-1:2].flip(-1)
    for where, logits, tokens in cases:
        out = _call(fn, (logits.clone(), tokens.clone()), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where)
        if out.numel() != 1:
            raise _fail(fn, f"returned shape {tuple(out.shape)} on {where}; return one number, the fraction right")
        out = out.detach().double().reshape(())
        expected = next_token_accuracy(logits, tokens).double()
        if _close(out, expected, atol=atol):
            continue
        V = logits.shape[-1]
        pred, target = logits[:, :-1].argmax(-1).reshape(-1), tokens[:, 1:].reshape(-1)
        variants = [
            ("no shift: the argmax at position t is a guess for token t + 1",
             lambda: (logits.argmax(-1) == tokens).double().mean()),
            ("padding is counted: leave out the positions whose target is -100",
             lambda: (pred == target).double().mean()),
            ("this is the number right, not the fraction",
             lambda: ((pred == target) & (target != -100)).double().sum()),
            ("this is the fraction wrong", lambda: 1 - ((pred == target)[target != -100]).double().mean()),
        ]
        del V
        raise _mismatch(fn, out, expected, where, "mini_gpt.loss.next_token_accuracy",
                        _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches next_token_accuracy on 4 batches (1 padded)")


# -- chapter 3: blocks


def check_layer_norm(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """fn(x (..., C), weight (C,), bias (C,), eps) -> LayerNorm over the last dimension.

    Compared with `F.layer_norm` (what `nn.LayerNorm` computes) on inputs chosen so that the usual
    mistakes show: few channels (unbiased variance differs), tiny variance (eps matters).
    """
    _require_callable(fn, "check_layer_norm")
    g = _random_generator(4)
    cases = []
    x = torch.randn(2, 3, 16, generator=g) * 3 + 1
    cases.append(("x of shape (2, 3, 16)", x, 1e-5))
    x = torch.randn(4, 5, generator=g)
    cases.append(("x of shape (4, 5): only 5 channels", x, 1e-5))
    x = torch.randn(3, 8, generator=g) * 1e-3
    cases.append(("x of shape (3, 8) with a tiny spread (variance ~1e-6, close to eps)", x, 1e-5))
    x = torch.randn(2, 6, generator=g)
    cases.append(("x of shape (2, 6) with eps=0.5", x, 0.5))
    atol = 1e-4
    for where, x, eps in cases:
        C = x.shape[-1]
        weight = 1 + 0.5 * torch.randn(C, generator=g)
        bias = 0.5 * torch.randn(C, generator=g)
        out = _call(fn, (x.clone(), weight.clone(), bias.clone(), eps), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where).detach()
        expected = F.layer_norm(x, (C,), weight, bias, eps)
        if _close(out, expected, atol=atol):
            continue
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        var_unbiased = x.var(-1, unbiased=True, keepdim=True)
        variants = [
            ("the variance is the unbiased one (divides by C - 1; torch.var's default): LayerNorm divides by C, "
             "use x.var(-1, unbiased=False) or ((x - mean) ** 2).mean(-1)",
             lambda: (x - mean) / torch.sqrt(var_unbiased + eps) * weight + bias),
            ("eps is missing: divide by sqrt(variance + eps)",
             lambda: (x - mean) / torch.sqrt(var) * weight + bias),
            ("eps is added to the standard deviation; it belongs inside the square root: sqrt(variance + eps)",
             lambda: (x - mean) / (torch.sqrt(var) + eps) * weight + bias),
            ("weight and bias are not applied: multiply by weight, then add bias",
             lambda: (x - mean) / torch.sqrt(var + eps)),
            ("bias is added before multiplying by weight: it is (normalised * weight) + bias",
             lambda: ((x - mean) / torch.sqrt(var + eps) + bias) * weight),
            ("the mean is not subtracted",
             lambda: x / torch.sqrt(var + eps) * weight + bias),
            ("this is RMSNorm (x divided by its root mean square): LayerNorm subtracts the mean and divides by the "
             "standard deviation",
             lambda: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight + bias),
            ("the statistics are taken over the wrong dimension: normalise each vector over its last "
             "dimension (dim=-1)",
             lambda: (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps)
             * weight + bias),
        ]
        raise _mismatch(fn, out, expected, where, "F.layer_norm", _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches nn.LayerNorm on 4 tricky inputs")


def check_gelu(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(x) -> GELU with GPT-2's tanh approximation, elementwise.

    Compared with `F.gelu(x, approximate="tanh")` on values from -6 to 6.
    """
    _require_callable(fn, "check_gelu")
    x = torch.linspace(-6, 6, 241)
    out = _call(fn, (x.clone(),), "x = linspace(-6, 6, 241)")
    if out is None:
        return _not_answered(fn)
    out = _as_tensor(fn, out, "x = linspace(-6, 6, 241)").detach()
    expected = F.gelu(x, approximate="tanh")
    atol = 1e-5
    if not _close(out, expected, atol=atol):
        c = math.sqrt(2 / math.pi)
        variants = [
            ("this is the exact GELU, x * Phi(x) with erf; GPT-2 uses the tanh approximation "
             "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))", lambda: F.gelu(x)),
            ("this is ReLU", lambda: F.relu(x)),
            ("the cubic term 0.044715 x^3 is missing inside tanh", lambda: 0.5 * x * (1 + torch.tanh(c * x))),
            ("the factor sqrt(2/pi) is missing inside tanh",
             lambda: 0.5 * x * (1 + torch.tanh(x + 0.044715 * x**3))),
            ("the leading x is missing: GELU(x) = 0.5 * x * (1 + tanh(...))",
             lambda: 0.5 * (1 + torch.tanh(c * (x + 0.044715 * x**3)))),
            ("this is the sigmoid approximation x * sigmoid(1.702 x)", lambda: x * torch.sigmoid(1.702 * x)),
        ]
        raise _mismatch(fn, out, expected, "x = linspace(-6, 6, 241)", 'F.gelu(x, approximate="tanh")',
                        _diagnose(out, variants, atol), atol)
    return _passed(fn, 'matches F.gelu(x, approximate="tanh") on [-6, 6]')


def _mha_variant(x, attn, *, split="heads", merge="heads", scale="head", mask=True, proj=True):
    """Multi-head attention with one deliberate mistake (or none), for diagnosing answers."""
    B, T, C = x.shape
    H = attn.n_head
    hs = C // H
    q, k, v = attn.c_attn(x).split(C, dim=2)

    def heads(t):
        if split == "heads":
            return t.view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
        if split == "no_transpose":
            return t.reshape(B, H, T, hs)  # wrong: mixes positions and channels
        return t.view(B, T, hs, H).permute(0, 3, 1, 2)  # wrong: channels strided across heads

    q, k, v = heads(q), heads(k), heads(v)
    s = q @ k.transpose(-2, -1) / {"head": math.sqrt(hs), "embd": math.sqrt(C), "none": 1.0}[scale]
    if mask:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = torch.softmax(s, dim=-1) @ v  # (B, H, T, hs)
    if merge == "heads":
        y = y.transpose(1, 2).reshape(B, T, C)
    else:
        y = y.reshape(B, T, C)  # wrong: no transpose back
    return attn.c_proj(y) if proj else y


def _attention_modules(seed: int) -> list[tuple[str, CausalSelfAttention]]:
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for C, H in ((16, 4), (12, 3), (8, 1), (24, 6)):
            attn = CausalSelfAttention(GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=H, n_embd=C))
            with torch.no_grad():  # biases too, so a missing bias would show
                for p in attn.parameters():
                    p.normal_(0.0, 0.3)
            out.append((f"n_embd={C}, n_head={H}", attn.eval()))
    return out


def check_multi_head_attention(fn: Callable[[torch.Tensor, CausalSelfAttention], torch.Tensor]) -> None:
    """fn(x (B, T, C), attn) -> (B, T, C): causal multi-head self-attention by hand, using the
    weights of `attn` (a mini_gpt CausalSelfAttention: `attn.c_attn`, `attn.c_proj`, `attn.n_head`).

    Compared with `attn(x)` for several widths and head counts.
    """
    _require_callable(fn, "check_multi_head_attention")
    g = _random_generator(5)
    atol = 1e-5
    for (name, attn), T in zip(_attention_modules(6), (5, 7, 3, 9)):
        C = attn.n_embd
        x = torch.randn(2, T, C, generator=g)
        where = f"x of shape {tuple(x.shape)}, {name}"
        with torch.no_grad():
            out = _call(fn, (x.clone(), attn), where)
            if out is None:
                return _not_answered(fn)
            out = _as_tensor(fn, out, where).detach()
            expected = attn(x)
            if _close(out, expected, atol=atol):
                continue
            variants = [
                ("no causal mask: each position also attends to later ones", lambda: _mha_variant(x, attn, mask=False)),
                ("the scores are scaled by sqrt(n_embd); scale by sqrt(head size) = sqrt(n_embd // n_head)",
                 lambda: _mha_variant(x, attn, scale="embd")),
                ("the scores are not scaled: divide by sqrt(head size)", lambda: _mha_variant(x, attn, scale="none")),
                ("the heads are split with reshape(B, n_head, T, hs), which mixes positions and channels; use "
                 ".view(B, T, n_head, hs).transpose(1, 2)", lambda: _mha_variant(x, attn, split="no_transpose")),
                ("each head takes every n_head-th channel (view(B, T, hs, n_head)); a head owns a contiguous slice: "
                 ".view(B, T, n_head, hs)", lambda: _mha_variant(x, attn, split="strided")),
                ("the heads are merged without transposing back: y.transpose(1, 2).reshape(B, T, C)",
                 lambda: _mha_variant(x, attn, merge="no_transpose")),
                ("the output projection c_proj is missing", lambda: _mha_variant(x, attn, proj=False)),
            ]
            raise _mismatch(fn, out, expected, where, "attn(x)", _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches mini_gpt's CausalSelfAttention for 4 sizes (1 to 6 heads)")


def _random_block(config: GPTConfig, seed: int) -> Block:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = Block(config)
        with torch.no_grad():  # LayerNorms away from 1 and 0, so ln_1 and ln_2 differ
            for name, p in block.named_parameters():
                if name.startswith(("ln_1", "ln_2")):
                    p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
                else:
                    p.normal_(0.0, 0.15)
    return block.eval()


def check_block(fn: Callable[[torch.Tensor, Block], torch.Tensor]) -> None:
    """fn(x (B, T, C), block) -> (B, T, C): a pre-norm transformer block, using the sub-modules of
    `block` (a mini_gpt Block: `ln_1`, `attn`, `ln_2`, `mlp`). Compared with `block(x)`."""
    _require_callable(fn, "check_block")
    g = _random_generator(7)
    atol = 1e-4
    for C, H, T in ((16, 4, 6), (32, 2, 5)):
        block = _random_block(GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=H, n_embd=C), seed=C)
        x = torch.randn(2, T, C, generator=g)
        where = f"x of shape {tuple(x.shape)}, n_head={H}"
        with torch.no_grad():
            out = _call(fn, (x.clone(), block), where)
            if out is None:
                return _not_answered(fn)
            out = _as_tensor(fn, out, where).detach()
            expected = block(x)
            if _close(out, expected, atol=atol):
                continue
            b = block

            def pre_no_res():
                return b.mlp(b.ln_2(b.attn(b.ln_1(x))))

            variants = [
                ("this is post-norm, LayerNorm after each addition (ln(x + f(x))); GPT-2 is pre-norm: "
                 "x + f(ln(x))", lambda: b.ln_2((h := b.ln_1(x + b.attn(x))) + b.mlp(h))),
                ("the residual connections are missing: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))", pre_no_res),
                ("the residual adds the normalised x: add attn(ln_1(x)) to x itself, not to ln_1(x)",
                 lambda: (h := b.ln_1(x) + b.attn(b.ln_1(x))) + b.mlp(b.ln_2(h))),
                ("attention and MLP read the same input in parallel; the MLP must read the stream after "
                 "attention was added", lambda: x + b.attn(b.ln_1(x)) + b.mlp(b.ln_2(x))),
                ("ln_1 is used twice: the MLP's LayerNorm is ln_2",
                 lambda: (h := x + b.attn(b.ln_1(x))) + b.mlp(b.ln_1(h))),
                ("the MLP is missing", lambda: x + b.attn(b.ln_1(x))),
                ("the LayerNorms are missing", lambda: (h := x + b.attn(x)) + b.mlp(h)),
            ]
            raise _mismatch(fn, out, expected, where, "block(x)", _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches mini_gpt's Block (pre-norm) on 2 sizes")


# -- chapter 4: the full GPT


def check_gpt_forward(fn: Callable[[GPT, torch.Tensor], torch.Tensor]) -> None:
    """fn(model, idx (B, T)) -> logits (B, T, vocab_size), computed from the model's parts
    (`model.transformer.wte`, `.wpe`, `.h`, `.ln_f`, and the tied head). Compared with `model(idx)`."""
    _require_callable(fn, "check_gpt_forward")
    g = _random_generator(8)
    atol = 1e-4
    for seed, T in ((0, 7), (1, 12)):
        model = small_model(seed=seed, n_layer=2, n_embd=32, block_size=16)
        with torch.no_grad():  # a final LayerNorm away from 1 and 0, so leaving it out shows
            model.transformer.ln_f.weight.normal_(1.0, 0.3)
            model.transformer.ln_f.bias.normal_(0.0, 0.3)
        idx = torch.randint(0, model.config.vocab_size, (2, T), generator=g)
        where = f"idx of shape {tuple(idx.shape)}"
        with torch.no_grad():
            out = _call(fn, (model, idx.clone()), where)
            if out is None:
                return _not_answered(fn)
            out = _as_tensor(fn, out, where).detach()
            expected = model(idx)
            if _close(out, expected, atol=atol):
                continue
            tr = model.transformer
            pos = torch.arange(T)

            def run(x, blocks=True, ln_f=True):
                if blocks:
                    for block in tr.h:
                        x = block(x)
                if ln_f:
                    x = tr.ln_f(x)
                return x @ tr.wte.weight.T

            variants = [
                ("the position embeddings are missing: add model.transformer.wpe(torch.arange(T))",
                 lambda: run(tr.wte(idx))),
                ("the final LayerNorm ln_f is missing (pre-norm blocks leave the stream un-normalised)",
                 lambda: run(tr.wte(idx) + tr.wpe(pos), ln_f=False)),
                ("the blocks are not applied", lambda: run(tr.wte(idx) + tr.wpe(pos), blocks=False)),
                ("this returns the last hidden state, not the logits: multiply by the embedding matrix "
                 "(x @ wte.weight.T)", lambda: tr.ln_f(_through(tr, tr.wte(idx) + tr.wpe(pos)))),
                ("these are probabilities (softmax); return the logits",
                 lambda: torch.softmax(model(idx), dim=-1)),
            ]
            raise _mismatch(fn, out, expected, where, "model(idx)", _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches GPT.forward on 2 small models")


def _through(tr, x):
    for block in tr.h:
        x = block(x)
    return x


def _meta_num_parameters(config: GPTConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return GPT(config).num_parameters()


def check_param_count(fn: Callable[[GPTConfig], int]) -> None:
    """fn(config) -> the number of parameters of GPT(config), counting the tied head once.

    Compared with `GPT(config).num_parameters()` (built on the meta device) for several configs:
    presets, a model without biases, and models with sinusoidal and rotary positions.
    """
    _require_callable(fn, "check_param_count")
    configs = [
        ("the 'shakespeare-char' preset", GPTConfig.preset("shakespeare-char")),
        ("the 'gpt2' preset", GPTConfig.preset("gpt2")),
        ("GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)",
         GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)),
        ("the same with bias=False",
         GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48, bias=False)),
        ("the same with pos_encoding='sinusoidal'",
         GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48, pos_encoding="sinusoidal")),
        ("the same with pos_encoding='rope'",
         GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48, pos_encoding="rope")),
    ]
    for where, config in configs:
        out = _call(fn, (config,), where)
        if out is None:
            return _not_answered(fn)
        if isinstance(out, torch.Tensor):
            out = out.item()
        if isinstance(out, float) and out.is_integer():
            out = int(out)
        if isinstance(out, bool) or not isinstance(out, int):
            raise _fail(fn, f"returned {out!r} for {where}; return an int")
        expected = _meta_num_parameters(config)
        if out == expected:
            continue
        V, P, L, C = config.vocab_size, config.block_size, config.n_layer, config.n_embd
        diff = out - expected
        lin_biases = L * (3 * C + C + 4 * C + C)  # c_attn, attn.c_proj, c_fc, mlp.c_proj
        ln_params = (2 * L + 1) * C  # weight (or bias) of every LayerNorm: two per block and ln_f
        known = [
            (True, V * C, "the head is counted separately, but it is tied to wte (one matrix, counted once)"),
            (config.pos_encoding == "learned", -P * C,
             "the position embeddings wpe (block_size x n_embd) are missing"),
            (config.pos_encoding != "learned", P * C,
             "sinusoidal and rotary positions have no parameters: count wpe only for pos_encoding='learned'"),
            (True, -C * (2 if config.bias else 1), "the final LayerNorm ln_f is missing"),
            (True, -ln_params * (2 if config.bias else 1),
             "the LayerNorms are missing: two per block and ln_f"),
            (config.bias, -lin_biases, "the biases of the Linear layers are missing"),
            (not config.bias, lin_biases + ln_params,
             "with bias=False neither the Linear layers nor the LayerNorms have biases (LayerNorm keeps its weight)"),
            (not config.bias, lin_biases, "with bias=False the Linear layers have no biases"),
            (not config.bias, ln_params, "with bias=False the LayerNorms have no bias (only a weight of n_embd)"),
            (True, -L * (6 * C * C + (3 * C if config.bias else 0)),
             "the MLP is 4x wider than n_embd: c_fc is n_embd x 4 n_embd and c_proj is 4 n_embd x n_embd"),
            (True, -L * (2 * C * C + (2 * C if config.bias else 0)),
             "c_attn makes q, k and v at once: it is n_embd x 3 n_embd"),
        ]
        hint = next((h for applies, d, h in known if applies and d == diff), None)
        msg = f"for {where} you count {out:,} parameters, the model has {expected:,} (difference {diff:+,})"
        if hint:
            msg += f".\n  Probably: {hint}"
        raise _fail(fn, msg)
    return _passed(fn, f"matches num_parameters() on {len(configs)} configs")


# ---- chapter 08 checks
# RoPE: rotation frequencies, rotating the pairs of a head, and scores that depend only on distance.

__all__ += ["check_rope_frequencies", "check_rotate_pairs", "check_relative_scores"]


def _library_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """theta_i as mini_gpt.rope uses them, read off its tables: the angle of pair i at position 1."""
    from .rope import RotaryEmbedding

    rope = RotaryEmbedding(head_dim, max_len=2, base=base)
    half = head_dim // 2
    # every theta_i <= 1 radian, so atan2 gives back the angle itself
    return torch.atan2(rope.sin_cached[1, :half], rope.cos_cached[1, :half]).double()


def check_rope_frequencies(fn: Callable[[int, float], torch.Tensor]) -> None:
    """fn(head_dim, base) -> (head_dim // 2,) rotation frequencies theta_i = base ** (-2i / head_dim),
    fastest first. Compared with the angles that `mini_gpt.rope.RotaryEmbedding` turns pair i by
    per position."""
    _require_callable(fn, "check_rope_frequencies")
    cases = ((8, 10000.0), (16, 10000.0), (32, 500.0), (64, 1e6), (2, 10000.0))
    for d, base in cases:
        where = f"head_dim={d}, base={base:g}"
        out = _call(fn, (d, base), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where).detach()
        if not out.is_floating_point():
            raise _fail(fn, f"returned dtype {out.dtype} on {where}; the frequencies are fractions: "
                            f"compute them in floating point (e.g. torch.arange(...).float())")
        expected = _library_frequencies(d, base)
        if out.dim() != 1 or out.numel() != d // 2:
            hint = ("one frequency per *pair* of dimensions: head_dim // 2 values, i = 0 .. head_dim/2 - 1"
                    if out.numel() == d else f"return a 1-D tensor of head_dim // 2 = {d // 2} values")
            raise _fail(fn, f"on {where} the result has shape {tuple(out.shape)}; {hint}")
        if torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-12):
            continue
        i = torch.arange(d // 2, dtype=torch.float64)
        variants = [
            ("the exponent lacks the 2: theta_i = base ** (-2 * i / head_dim), with i counting pairs",
             lambda: base ** (-i / d)),
            ("the exponent is positive: the frequencies must shrink, theta_i = base ** (-2i / head_dim)",
             lambda: base ** (2 * i / d)),
            ("these are wavelengths (2 pi / theta_i, in positions), not frequencies",
             lambda: 2 * math.pi * base ** (2 * i / d)),
            ("the order is reversed: theta_0 = 1 (the fastest pair) comes first", lambda: (base ** (-2 * i / d)).flip(0)),
            ("i starts at 1; it starts at 0, so the first pair turns by exactly 1 radian per position",
             lambda: base ** (-2 * (i + 1) / d)),
            ("the exponent is divided by head_dim / 2 as well as multiplied by 2: use 2i / head_dim",
             lambda: base ** (-4 * i / d)),
        ]
        hint = None
        for explanation, make in variants:
            if torch.allclose(out.double(), make(), rtol=1e-4, atol=1e-12):
                hint = explanation
                break
        rel = float(((out.double() - expected).abs() / expected).max())
        more = " ..." if d > 8 else ""
        msg = (f"on {where} expected {[round(v, 6) for v in expected.tolist()[:4]]}{more}, got "
               f"{[round(v, 6) for v in out.double().tolist()[:4]]}{more} (largest relative difference "
               f"{rel:.3g}, allowed 1e-4)")
        if hint:
            msg += f".\n  Probably: {hint}"
        raise _fail(fn, msg)
    return _passed(fn, f"matches mini_gpt.rope's frequencies for {len(cases)} (head_dim, base) pairs")


def _rope_variant(x: torch.Tensor, offset: int, *, pairing: str = "half", sign: float = 1.0, start: int = 0,
                  exponent: float = 2.0, base: float = 10000.0) -> torch.Tensor:
    """A (possibly wrong) rotary embedding of x (..., T, d), in float64, for diagnosing answers."""
    d, T = x.shape[-1], x.shape[-2]
    theta = base ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)  # (d/2,)
    pos = torch.arange(T, dtype=torch.float64) + offset + start  # (T,)
    angle = pos[:, None] * theta  # (T, d/2)
    cos, sin = angle.cos(), sign * angle.sin()
    x = x.double()
    if pairing == "half":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # interleaved: neighbours (2j, 2j+1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


def check_rotate_pairs(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """fn(x, offset) -> x rotated as RoPE rotates queries and keys: x has shape (B, H, T, head_dim),
    position t of the sequence is offset + t, base 10000, and dimension j is paired with
    j + head_dim/2 (mini_gpt's and Llama's "rotate half" layout). Compared with
    `mini_gpt.rope.RotaryEmbedding(head_dim, ...)(x, x, offset)`."""
    from .rope import RotaryEmbedding

    _require_callable(fn, "check_rotate_pairs")
    g = _random_generator(8)
    cases = (((1, 1, 5, 8), 0), ((2, 3, 7, 16), 3), ((1, 2, 4, 32), 100), ((2, 1, 1, 4), 9))
    atol = 1e-4
    for shape, offset in cases:
        x = torch.randn(shape, generator=g)
        where = f"x of shape {shape}, offset={offset}"
        out = _call(fn, (x.clone(), offset), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where).detach()
        rope = RotaryEmbedding(shape[-1], max_len=shape[-2] + offset)
        expected, _ = rope(x, x, offset=offset)
        if _close(out, expected, atol=atol):
            continue
        variants = [
            ("x comes back unrotated", lambda: x),
            ("the pairs are neighbours (2j, 2j+1), the paper's interleaved layout; mini_gpt pairs dimension "
             "j with j + head_dim/2 (x1, x2 = x.chunk(2, dim=-1))", lambda: _rope_variant(x, offset, pairing="pairs")),
            ("the rotation turns the wrong way: a pair (a, b) becomes (a cos - b sin, a sin + b cos)",
             lambda: _rope_variant(x, offset, sign=-1.0)),
            ("the offset is ignored: position t of x is offset + t", lambda: _rope_variant(x, 0)),
            ("the positions start at 1: the first token of x sits at position offset, not offset + 1",
             lambda: _rope_variant(x, offset, start=1)),
            ("the frequencies lack the 2: theta_i = 10000 ** (-2i / head_dim)",
             lambda: _rope_variant(x, offset, exponent=1.0)),
        ]
        raise _mismatch(fn, out, expected, where, "mini_gpt.rope.RotaryEmbedding", _diagnose(out, variants, atol),
                        atol)
    return _passed(fn, f"matches mini_gpt.rope.RotaryEmbedding on {len(cases)} shapes and offsets")


def check_relative_scores(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(q, k, distances) -> (N,) scores: for a query q and a key k (both (head_dim,) vectors) and
    every distance in `distances` (N,), the dot product of q and k after RoPE, when the query sits
    that many positions *after* the key. No 1/sqrt(head_dim) scaling.

    Compared with `mini_gpt.rope.RotaryEmbedding` rotating q at position 7 + distance and k at
    position 7 (where the pair starts does not matter: that is the point)."""
    from .rope import RotaryEmbedding

    _require_callable(fn, "check_relative_scores")
    g = _random_generator(9)
    cases = ((8, [0, 1, 2, 3, 10]), (16, [5, 0, 40, 1, 200]), (64, [0, 1, 7, 64, 150]))
    atol = 2e-3
    shift = 7
    for d, dist in cases:
        q, k = torch.randn(2, d, generator=g)
        distances = torch.tensor(dist)
        where = f"head_dim={d}, distances={dist}"
        out = _call(fn, (q.clone(), k.clone(), distances.clone()), where)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where).detach()
        rope = RotaryEmbedding(d, max_len=shift + max(dist) + 1)
        expected = []
        for delta in dist:
            rq, _ = rope(q.view(1, 1, 1, d), q.view(1, 1, 1, d), offset=shift + delta)  # the query, later
            _, rk = rope(k.view(1, 1, 1, d), k.view(1, 1, 1, d), offset=shift)  # the key
            expected.append((rq * rk).sum())
        expected = torch.stack(expected)
        if out.shape != expected.shape and out.numel() == expected.numel():
            raise _fail(fn, f"on {where} the result has shape {tuple(out.shape)}; return one score per "
                            f"distance, shape ({len(dist)},)")
        if _close(out, expected, atol=atol):
            continue
        qq, kk = q[None, None, None], k[None, None, None]  # (1, 1, 1, d)

        def rotated(x, deltas, **kw):
            return torch.cat([_rope_variant(x, int(t), **kw) for t in deltas], dim=-2)[0, 0]  # (N, d)

        variants = [
            ("the scores do not change with distance: rotate q by the distance before the dot product",
             lambda: (q @ k).expand(len(dist))),
            ("the sign of the distance is flipped: the query comes *after* the key, so rotate q forward by "
             "the distance (or k backward), not k forward", lambda: rotated(kk, dist) @ q.double()),
            ("the scores are divided by sqrt(head_dim); return the plain dot product",
             lambda: rotated(qq, dist) @ k.double() / math.sqrt(d)),
            ("the pairs are neighbours (2j, 2j+1); mini_gpt pairs dimension j with j + head_dim/2",
             lambda: rotated(qq, dist, pairing="pairs") @ k.double()),
        ]
        raise _mismatch(fn, out, expected, where, "RoPE scores from mini_gpt.rope.RotaryEmbedding",
                        _diagnose(out, variants, atol), atol)
    return _passed(fn, f"matches mini_gpt.rope's scores for {sum(len(d) for _, d in cases)} distances "
                       f"(3 head sizes)")


# ---- chapter 06 checks: sampling (filters on a batch of next-token logits)

__all__ += ["check_top_k_filter", "check_top_p_filter", "check_repetition_penalty", "check_sampling_probs"]

_NEG_INF = float("-inf")


def _logits_cases(seed: int, shapes: Iterable[tuple[int, int]], scale: float = 2.0) -> list[torch.Tensor]:
    g = _random_generator(seed)
    return [torch.randn(shape, generator=g) * scale for shape in shapes]


def _filtered(fn: Callable, args: tuple, where: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The reader's filtered logits, checked for shape; None when the exercise is not answered yet."""
    out = _call(fn, args, where)
    if out is None:
        return None
    out = _as_tensor(fn, out, where).detach()
    if out.shape != shape and out.dim() == 2 and out.shape[0] == shape[0] and out.shape[1] < shape[1]:
        raise _fail(fn, f"on {where} the result has shape {tuple(out.shape)}: these are only the kept tokens; "
                        f"return all {shape[1]} logits of each row, with the ruled-out ones set to -inf")
    return out


def _filter_mismatch(fn: Callable, out: torch.Tensor, expected: torch.Tensor, where: str, reference: str,
                     hint: str | None, atol: float) -> AssertionError:
    """Like _mismatch, but says how many tokens each row keeps (-inf compared with -inf is not a number)."""
    if out.shape == expected.shape:
        V = out.shape[-1]
        out_cut, exp_cut = torch.isneginf(out), torch.isneginf(expected)
        differs = (out_cut != exp_cut).any(-1)
        if bool(differs.any()):
            r = int(differs.nonzero()[0, 0])
            got, want = V - int(out_cut[r].sum()), V - int(exp_cut[r].sum())
            same = " (the same number, but not the same tokens)" if got == want else ""
            msg = (f"on {where}, row {r} keeps {got} of its {V} tokens (logits above -inf); {reference} "
                   f"keeps {want}{same}")
            if hint:
                msg += f".\n  Probably: {hint}"
            return _fail(fn, msg)
        if not bool(out.isfinite().eq(expected.isfinite()).all()):
            return _fail(fn, f"on {where} the result holds inf or nan where {reference} does not"
                         + (f".\n  Probably: {hint}" if hint else ""))
        out, expected = out.masked_fill(out_cut, 0.0), expected.masked_fill(exp_cut, 0.0)
    return _mismatch(fn, out, expected, where, reference, hint, atol)


def check_top_k_filter(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """fn(logits (B, V), k) -> the logits with all but the k largest of each row set to -inf.

    Compared with `mini_gpt.generate.top_k_filter` on batches whose rows differ.
    """
    from .generate import top_k_filter

    _require_callable(fn, "check_top_k_filter")
    a, b, c = _logits_cases(61, [(2, 8), (3, 65), (2, 65)])
    c[0, :20] = _NEG_INF  # a row an earlier filter already cut
    b[1] += 5.0  # rows on different scales: each needs its own threshold
    cases = [(a, 3), (b, 1), (c, 10), (a, 8)]
    for logits, k in cases:
        where = f"logits of shape {tuple(logits.shape)}, k={k}"
        out = _filtered(fn, (logits.clone(), k), where, tuple(logits.shape))
        if out is None:
            return _not_answered(fn)
        expected = top_k_filter(logits, k)
        if _close(out, expected, atol=1e-6):
            continue

        def keep_top(n, x=logits):
            kth = torch.topk(x, n, dim=-1).values[..., -1:]
            return x.masked_fill(x < kth, _NEG_INF)

        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        variants = [
            ("nothing is ruled out: set every logit below the k-th largest of its row to -inf", lambda: logits),
            ("one token too few: logits <= kth also drops the k-th largest; drop only the logits strictly "
             "below it (logits < kth)", lambda: logits.masked_fill(logits <= kth, _NEG_INF)),
            ("one token too many: keep the k largest (torch.topk(logits, k)), not k + 1", lambda: keep_top(k + 1)),
            ("the ruled-out tokens are set to 0, which still has a probability; set them to -inf",
             lambda: logits.masked_fill(logits < kth, 0.0)),
            ("the ruled-out tokens are set to a large negative number; use -inf (float('-inf')), so their "
             "probability is exactly 0", lambda: logits.masked_fill(logits < kth, -1e9)),
            ("this keeps the k smallest logits; keep the k largest",
             lambda: logits.masked_fill(logits > torch.topk(logits, k, dim=-1, largest=False).values[..., -1:],
                                        _NEG_INF)),
            ("these are probabilities (softmax); return the filtered logits", lambda: expected.softmax(-1)),
            ("one threshold for the whole batch: each row needs its own k-th largest "
             "(torch.topk(logits, k, dim=-1).values[..., -1:])",
             lambda: logits.masked_fill(logits < torch.topk(logits.flatten(), k).values[-1], _NEG_INF)),
        ]
        raise _filter_mismatch(fn, out, expected, where, "top_k_filter", _diagnose(out, variants, 1e-6), 1e-6)
    return _passed(fn, f"matches mini_gpt.generate.top_k_filter on {len(cases)} batches")


def _top_p_variant(logits: torch.Tensor, p: float, *, drop: str = "before", order: str = "desc",
                   on: str = "probs", scatter: bool = True) -> torch.Tensor:
    """Nucleus filtering with one deliberate mistake (or none), for diagnosing answers."""
    sorted_logits, index = torch.sort(logits, descending=order == "desc", dim=-1)
    probs = sorted_logits.softmax(-1) if on == "probs" else sorted_logits
    cum = probs.cumsum(-1)
    mask = cum - probs >= p if drop == "before" else cum >= p
    if scatter:
        mask = mask.scatter(-1, index, mask)
    return logits.masked_fill(mask, _NEG_INF)


def check_top_p_filter(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """fn(logits (B, V), p) -> the logits with every token outside each row's nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probabilities add up to at least p.
    Compared with `mini_gpt.generate.top_p_filter` on batches whose rows keep different numbers of tokens.
    """
    from .generate import top_p_filter

    _require_callable(fn, "check_top_p_filter")
    # row 0: probabilities 0.5, 0.2, 0.15, ... shuffled; row 1 flatter; both out of order
    worked = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15], [0.15, 0.3, 0.1, 0.25, 0.2]]).log() + 2.0
    a, b = _logits_cases(62, [(3, 65), (2, 65)])
    cases = [(worked, 0.6), (worked, 0.8), (a, 0.9), (b * 0.3 + 3.0, 0.5)]
    for logits, p in cases:
        where = f"logits of shape {tuple(logits.shape)}, p={p}"
        if logits is worked:
            rows = [[round(x, 2) for x in row] for row in logits.softmax(-1).tolist()]
            where = f"logits whose probabilities are {rows}, p={p}"
        out = _filtered(fn, (logits.clone(), p), where, tuple(logits.shape))
        if out is None:
            return _not_answered(fn)
        expected = top_p_filter(logits, p)
        if _close(out, expected, atol=1e-6):
            continue
        probs = logits.softmax(-1)
        variants = [
            ("nothing is ruled out: set the logits of the tokens outside the nucleus to -inf", lambda: logits),
            ("the token that makes the mass reach p is dropped; it belongs to the nucleus. Drop a token only "
             "when the tokens before it already reach p (cumsum - prob >= p)",
             lambda: _top_p_variant(logits, p, drop="after")),
            ("the mask is still in sorted order; put it back in vocabulary order (scatter it with the "
             "indices the sort returned)", lambda: _top_p_variant(logits, p, scatter=False)),
            ("the tokens are sorted from least to most likely; sort in descending order",
             lambda: _top_p_variant(logits, p, order="asc")),
            ("the cumulative sum adds up logits; turn them into probabilities (softmax) first",
             lambda: _top_p_variant(logits, p, on="logits")),
            ("this keeps the tokens whose own probability is at least p; the nucleus is the smallest set "
             "of most likely tokens whose probabilities add up to p", lambda: logits.masked_fill(probs < p, _NEG_INF)),
            ("the ruled-out tokens are set to 0, which still has a probability; set them to -inf",
             lambda: logits.masked_fill(torch.isneginf(expected), 0.0)),
            ("these are probabilities (softmax); return the filtered logits", lambda: expected.softmax(-1)),
        ]
        raise _filter_mismatch(fn, out, expected, where, "top_p_filter", _diagnose(out, variants, 1e-6), 1e-6)
    return _passed(fn, f"matches mini_gpt.generate.top_p_filter on {len(cases)} batches")


def check_repetition_penalty(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """fn(logits (B, V), seen bool (B, V), penalty) -> the logits after CTRL's repetition penalty:
    for the tokens already seen, positive logits divided by the penalty, negative ones multiplied.

    Compared with `mini_gpt.generate.apply_repetition_penalty`, with penalties above and below 1.
    """
    from .generate import apply_repetition_penalty

    _require_callable(fn, "check_repetition_penalty")
    g = _random_generator(63)
    cases = []
    for (B, V), penalty in (((2, 10), 1.5), ((3, 65), 1.2), ((2, 12), 0.7)):
        logits = torch.randn(B, V, generator=g) * 2
        seen = torch.rand(B, V, generator=g) < 0.4
        cases.append((logits, seen, penalty))
    for logits, seen, penalty in cases:
        where = f"logits of shape {tuple(logits.shape)}, penalty={penalty}"
        out = _filtered(fn, (logits.clone(), seen.clone(), penalty), where, tuple(logits.shape))
        if out is None:
            return _not_answered(fn)
        expected = apply_repetition_penalty(logits, seen, penalty)
        if _close(out, expected, atol=1e-6):
            continue
        penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
        variants = [
            ("nothing changed: penalise the logits of the tokens where seen is True", lambda: logits),
            ("every seen logit is divided by the penalty, but dividing a negative logit by a penalty > 1 "
             "moves it up, towards 0: multiply the negative ones by the penalty",
             lambda: torch.where(seen, logits / penalty, logits)),
            ("multiplying and dividing are swapped: divide the positive logits by the penalty, multiply the "
             "negative ones", lambda: torch.where(seen, torch.where(logits < 0, logits / penalty, logits * penalty),
                                                  logits)),
            ("the tokens that were not seen are penalised; penalise those where seen is True",
             lambda: torch.where(seen, logits, penalised)),
            ("every token is penalised; only those already seen should be", lambda: penalised),
            ("the penalty is subtracted; CTRL's penalty divides positive logits and multiplies negative ones",
             lambda: torch.where(seen, logits - penalty, logits)),
        ]
        raise _filter_mismatch(fn, out, expected, where, "apply_repetition_penalty", _diagnose(out, variants, 1e-6), 1e-6)
    return _passed(fn, f"matches mini_gpt.generate.apply_repetition_penalty on {len(cases)} batches "
                       f"(penalties above and below 1)")


def _sampling_probs(logits, temperature, top_k, top_p, *, order="kp", temp="first", use_k=True, use_p=True,
                    probs=True):
    """What `generate` samples from, with one deliberate mistake (or none)."""
    from .generate import top_k_filter, top_p_filter

    x = logits / temperature if temp == "first" else logits * temperature if temp == "times" else logits
    steps = [("k", top_k), ("p", top_p)] if order == "kp" else [("p", top_p), ("k", top_k)]
    for name, value in steps:
        if value is None or (name == "k" and not use_k) or (name == "p" and not use_p):
            continue
        x = top_k_filter(x, value) if name == "k" else top_p_filter(x, value)
    if temp == "last":
        x = x / temperature
    return x.softmax(-1) if probs else x


def check_sampling_probs(fn: Callable[[torch.Tensor, float, int | None, float | None], torch.Tensor]) -> None:
    """fn(logits (B, V), temperature, top_k, top_p) -> the probabilities (B, V) that `generate`
    samples the next token from (0 for the ruled-out tokens); top_k and top_p may be None (off).

    `generate` divides by the temperature first, then applies top-k, then top-p, then softmax.
    """
    _require_callable(fn, "check_sampling_probs")
    a, b = _logits_cases(64, [(2, 65), (3, 65)])
    cases = [(a, 1.0, None, None), (a, 0.5, None, None), (b, 0.7, None, 0.9), (a, 1.5, 10, None),
             (b, 0.8, 20, 0.7)]
    atol = 1e-6
    for logits, temperature, top_k, top_p in cases:
        where = f"logits of shape {tuple(logits.shape)}, temperature={temperature}, top_k={top_k}, top_p={top_p}"
        out = _filtered(fn, (logits.clone(), temperature, top_k, top_p), where, tuple(logits.shape))
        if out is None:
            return _not_answered(fn)
        expected = _sampling_probs(logits, temperature, top_k, top_p)
        if _close(out, expected, atol=atol):
            continue
        args = (logits, temperature, top_k, top_p)
        kept = expected > 0
        variants = [
            ("these are logits; return probabilities (the softmax of the filtered logits, each row sums to 1)",
             lambda: _sampling_probs(*args, probs=False)),
            ("the logits are multiplied by the temperature; divide them by it (a temperature below 1 sharpens)",
             lambda: _sampling_probs(*args, temp="times")),
            ("the temperature is not applied: divide the logits by it", lambda: _sampling_probs(*args, temp="none")),
            ("the probabilities are divided by the temperature; divide the logits by it, before the softmax",
             lambda: logits.softmax(-1) / temperature),
            ("the temperature comes after the filters; divide by it first, so that top-p measures the "
             "distribution you sample from (the nucleus depends on the temperature)",
             lambda: _sampling_probs(*args, temp="last")),
            ("top-p is applied before top-k; generate (like transformers) applies top-k first, then top-p to "
             "the tokens that are left", lambda: _sampling_probs(*args, order="pk")),
            ("top_k is not applied", lambda: _sampling_probs(*args, use_k=False)),
            ("top_p is not applied", lambda: _sampling_probs(*args, use_p=False)),
            ("the kept probabilities are not renormalised: take the softmax after filtering (the ruled-out "
             "tokens' logits are -inf), so each row sums to 1",
             lambda: (logits / temperature).softmax(-1) * kept),
        ]
        raise _filter_mismatch(fn, out, expected, where, "what generate samples from", _diagnose(out, variants, atol), atol)
    return _passed(fn, f"matches what generate samples from in {len(cases)} settings")


# ---- chapter 07 checks
# LoRA: the forward pass of an adapted layer, counting what trains, and merging the update into W.

__all__ += ["check_lora_forward", "check_lora_param_count", "check_merge"]


_TARGET_WORDS = {
    "attn": "attention's c_attn and c_proj only",
    "mlp": "the MLP's c_fc and c_proj only",
    "all": "attention's c_attn and c_proj and the MLP's c_fc and c_proj",
}


def _keeps_rng(check: Callable) -> Callable:
    """Run a check without touching the global random state: building layers (and the reader's
    own nn.Linear) draws random numbers, and a notebook's later cells must not depend on a check."""

    @functools.wraps(check)
    def wrapper(fn):
        with torch.random.fork_rng(devices=[]):
            return check(fn)

    return wrapper


def _lora_cases(seed: int) -> list[tuple[str, torch.Tensor, Any, torch.Tensor, torch.Tensor, float]]:
    """(where, x, base nn.Linear, A (r, in), B (out, r), alpha), with B != 0 so the update shows.

    The square layer comes first: there a transposed update still has the right shape, so the
    mistake can be named instead of ending in a shape error. alpha / r differs from alpha, r / alpha
    and 1 in every case, so each wrong scale is told apart."""
    from torch import nn

    g = _random_generator(seed)
    cases = []
    for n_in, n_out, r, alpha in ((16, 16, 2, 6.0), (12, 20, 4, 8.0), (10, 6, 3, 1.5)):
        base = nn.Linear(n_in, n_out)
        with torch.no_grad():
            base.weight.copy_(0.3 * torch.randn(n_out, n_in, generator=g))
            base.bias.copy_(0.3 * torch.randn(n_out, generator=g))
        base.requires_grad_(False)
        A = 0.3 * torch.randn(r, n_in, generator=g)
        B = 0.3 * torch.randn(n_out, r, generator=g)
        x = torch.randn(2, 5, n_in, generator=g)
        where = f"x of shape {tuple(x.shape)}, nn.Linear({n_in}, {n_out}), rank {r}, alpha {alpha:g}"
        cases.append((where, x, base, A, B, alpha))
    return cases


def _library_lora_layer(base, A: torch.Tensor, B: torch.Tensor, alpha: float):
    """mini_gpt's LoRALinear around a copy of `base`, holding exactly A and B."""
    import copy

    from .lora import LoRALinear

    layer = LoRALinear(copy.deepcopy(base), rank=A.shape[0], alpha=alpha)
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer.eval()


@_keeps_rng
def check_lora_forward(fn: Callable[..., torch.Tensor]) -> None:
    """fn(x (..., in), base, A (r, in), B (out, r), alpha) -> (..., out): a LoRA layer's output
    W x + b + (alpha / r) B A x, where `base` is the frozen nn.Linear (weight W, bias b) and
    r = A.shape[0]. Compared with `mini_gpt.lora.LoRALinear` holding the same A and B."""
    _require_callable(fn, "check_lora_forward")
    atol = 1e-5
    for where, x, base, A, B, alpha in _lora_cases(70):
        r = A.shape[0]
        with torch.no_grad():
            out = _call(fn, (x.clone(), base, A.clone(), B.clone(), alpha), where)
            if out is None:
                return _not_answered(fn)
            out = _as_tensor(fn, out, where).detach()
            expected = _library_lora_layer(base, A, B, alpha)(x)
            if _close(out, expected, atol=atol):
                continue
            W, b = base.weight, base.bias
            frozen = x @ W.T + b  # (..., out)
            update = x @ A.T @ B.T  # (..., out): B A x, not yet scaled
            variants = [
                (f"the update is scaled by alpha; LoRA scales it by alpha / r (here {alpha:g} / {r})",
                 lambda: frozen + alpha * update),
                (f"the update is scaled by r / alpha; the scale is alpha / r (here {alpha:g} / {r})",
                 lambda: frozen + (r / alpha) * update),
                (f"the update is not scaled: multiply B A x by alpha / r (here {alpha:g} / {r})",
                 lambda: frozen + update),
                ("only the frozen layer: the low-rank update (alpha / r) B A x is missing",
                 lambda: frozen),
                ("the frozen path W x + b is missing: the layer adds the update to base(x)",
                 lambda: (alpha / r) * update),
                ("the bias of the frozen layer is missing: base(x) = x @ W.T + b",
                 lambda: x @ W.T + (alpha / r) * update),
                ("the update is subtracted: y = W x + b + (alpha / r) B A x",
                 lambda: frozen - (alpha / r) * update),
                ("the update is transposed: B A is (out, in) like W, so apply it as x @ (B @ A).T = x @ A.T @ B.T",
                 lambda: frozen + (alpha / r) * (x @ (B @ A))),
            ]
            raise _mismatch(fn, out, expected, where, "mini_gpt.lora.LoRALinear", _diagnose(out, variants, atol), atol)
    return _passed(fn, "matches mini_gpt.lora.LoRALinear on 3 layers (ranks 2 to 4)")


def _lora_shapes(config: GPTConfig, targets: str) -> list[tuple[str, int, int]]:
    """(name, in, out) of the Linear layers add_lora adapts in one block, for a shortcut target."""
    C = config.n_embd
    attn = [("attn.c_attn", C, 3 * C), ("attn.c_proj", C, C)]
    mlp = [("mlp.c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C)]
    return {"attn": attn, "mlp": mlp, "all": attn + mlp}[targets]


def _meta_lora_count(config: GPTConfig, rank: int, targets: str) -> tuple[int, int]:
    """(trainable, all) parameters of add_lora(GPT(config), rank, targets=targets), on the meta device."""
    from .lora import add_lora, trainable_parameters

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return trainable_parameters(add_lora(GPT(config), rank=rank, alpha=2 * rank, targets=targets))


@_keeps_rng
def check_lora_param_count(fn: Callable[[GPTConfig, int, str], int]) -> None:
    """fn(config, rank, targets) -> how many parameters train after
    `add_lora(GPT(config), rank, targets=targets)`, for targets "attn", "mlp" or "all".

    Compared with `mini_gpt.lora.trainable_parameters` (on models built on the meta device) for
    several sizes, ranks and targets, GPT-2 small included.
    """
    _require_callable(fn, "check_lora_param_count")
    small = GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)
    cases = [
        ("the 'shakespeare-char' preset", GPTConfig.preset("shakespeare-char"), 8, "attn"),
        ("GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)", small, 4, "mlp"),
        ("the same GPTConfig with bias=False", small.replace(bias=False), 2, "all"),
        ("the 'gpt2' preset", GPTConfig.preset("gpt2"), 8, "all"),
        ("the 'gpt2' preset", GPTConfig.preset("gpt2"), 16, "attn"),
    ]
    for name, config, rank, targets in cases:
        where = f"{name}, rank={rank}, targets={targets!r}"
        out = _call(fn, (config, rank, targets), where)
        if out is None:
            return _not_answered(fn)
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if isinstance(out, float) and out.is_integer():
            out = int(out)
        if isinstance(out, bool) or not isinstance(out, int):
            raise _fail(fn, f"returned {out!r} for {where}; return an int")
        expected, total = _meta_lora_count(config, rank, targets)
        if out == expected:
            continue
        L, C, r = config.n_layer, config.n_embd, rank
        shapes = _lora_shapes(config, targets)

        def per_block(shape_list, size=lambda i, o: r * (i + o)):
            return sum(size(i, o) for _, i, o in shape_list)

        def widened(factor_name: str, wrong_out: int):
            return [(n, i, wrong_out if n == factor_name else o) for n, i, o in shapes]

        known = [
            (L * per_block(shapes, lambda i, o: i * o),
             "this counts the full matrices (in x out each); LoRA trains A (r x in) and B (out x r): r (in + out)"),
            (L * per_block(shapes, lambda i, o: r * i * o),
             "r x in x out is the cost of a full matrix times r; A and B together hold r (in + out) numbers"),
            (L * per_block(shapes, lambda i, o: r * i), "only A (r x in) is counted: B (out x r) trains too"),
            (L * per_block(shapes, lambda i, o: r * o), "only B (out x r) is counted: A (r x in) trains too"),
            (per_block(shapes), f"this is one block's count: each of the n_layer = {L} blocks has its own adapters"),
            (total, "this is every parameter of the model; the base is frozen and only the adapters train"),
            (total - expected, "this counts the frozen base model; only the adapters (A and B) train"),
        ]
        if targets in ("attn", "all"):
            known.append((L * per_block(widened("attn.c_attn", C)),
                          "c_attn makes q, k and v at once: it maps n_embd to 3 n_embd, so its B is (3 n_embd x r)"))
        if targets in ("mlp", "all"):
            narrow = [(n, C if n == "mlp.c_proj" else i, C if n == "mlp.c_fc" else o) for n, i, o in shapes]
            known.append((L * per_block(narrow),
                          "the MLP is 4x wider: c_fc maps n_embd to 4 n_embd and c_proj maps 4 n_embd back"))
        for other in ("attn", "mlp", "all"):
            if other != targets:
                known.append((L * per_block(_lora_shapes(config, other)),
                              f"this is the count for targets={other!r}; targets={targets!r} adapts "
                              f"{_TARGET_WORDS[targets]}"))
        hints = list(dict.fromkeys(h for value, h in known if value == out))  # two mistakes can give one count
        msg = f"for {where} you count {out:,} trainable parameters, add_lora leaves {expected:,}"
        if len(hints) == 1:
            msg += f".\n  Probably: {hints[0]}"
        elif hints:
            msg += ".\n  Probably one of these:" + "".join(f"\n  - {h}" for h in hints)
        raise _fail(fn, msg)
    return _passed(fn, f"matches trainable_parameters() after add_lora in {len(cases)} settings")


@_keeps_rng
def check_merge(fn: Callable[[Any], Any]) -> None:
    """fn(layer) -> a plain nn.Linear computing what `layer` computes, where `layer` is a
    `mini_gpt.lora.LoRALinear` (`layer.base` the frozen nn.Linear, `layer.lora_A`, `layer.lora_B`,
    `layer.alpha`, `layer.rank`). Its weight must be W + (alpha / r) B A, its bias the base's bias.

    The merged layer's outputs are compared with `layer(x)` (computed before fn runs), on three
    layers; `layer` itself must be left as it was.
    """
    from torch import nn

    from .lora import LoRALinear

    _require_callable(fn, "check_merge")
    atol = 1e-5
    for where, x, base, A, B, alpha in _lora_cases(71):
        layer = _library_lora_layer(base, A, B, alpha)
        r = A.shape[0]
        W, b = base.weight.detach().clone(), base.bias.detach().clone()
        with torch.no_grad():
            expected = layer(x)
        out = _call(fn, (layer,), where)
        if out is None:
            return _not_answered(fn)
        if isinstance(out, LoRALinear):
            raise _fail(fn, f"returned a LoRALinear on {where}; merging gives one plain nn.Linear whose weight "
                            f"is W + (alpha / r) B A, so no extra work is left per token")
        if isinstance(out, torch.Tensor):
            raise _fail(fn, f"returned a tensor of shape {tuple(out.shape)} on {where}; return an nn.Linear "
                            f"(nn.Linear(layer.in_features, layer.out_features)) holding the merged weight and the bias")
        if not isinstance(out, nn.Linear):
            raise _fail(fn, f"returned {type(out).__name__} on {where}; return an nn.Linear")
        if not (torch.equal(layer.base.weight, W) and torch.equal(layer.base.bias, b)):
            raise _fail(fn, f"changed layer.base's weight or bias in place on {where}: the LoRA layer now adds "
                            f"its update twice. Build a new nn.Linear (or work on a copy) and leave the layer as it is")
        with torch.no_grad():
            got = out(x)
            if _close(got, expected, atol=atol):
                continue
            w = out.weight.detach()
            delta = B @ A  # (out, in)
            weight_variants = [
                (f"the update is scaled by alpha; the merged weight is W + (alpha / r) B A (here {alpha:g} / {r})",
                 W + alpha * delta),
                (f"the update is scaled by r / alpha; the merged weight is W + (alpha / r) B A (here {alpha:g} / {r})",
                 W + (r / alpha) * delta),
                (f"the update is not scaled: the merged weight is W + (alpha / r) B A (here {alpha:g} / {r})",
                 W + delta),
                ("the weight is W alone: add the update (alpha / r) B A to it", W),
                ("the weight is the update alone: the merged weight is W + (alpha / r) B A", (alpha / r) * delta),
                ("the update is subtracted: the merged weight is W + (alpha / r) B A", W - (alpha / r) * delta),
                ("the update is transposed: B A (out x in) already has the shape of nn.Linear's weight",
                 W + (alpha / r) * delta.T),
            ]
            hint = None
            if w.shape == W.shape:
                hint = next((h for h, wrong in weight_variants if _close(w, wrong, atol=atol)), None)
                if hint is None and _close(w, W + (alpha / r) * delta, atol=atol):
                    if out.bias is None:
                        hint = "the merged layer has no bias: copy layer.base.bias into it"
                    elif not _close(out.bias.detach(), b, atol=atol):
                        hint = ("the weight is right but the bias is not the base's: a new nn.Linear starts with "
                                "a random bias, so copy layer.base.bias into it")
            raise _mismatch(fn, got, expected, where, "layer(x)", hint, atol)
    return _passed(fn, "computes what the LoRA layer computes, as one plain nn.Linear, on 3 layers")


# ---- chapter 09 checks
# Checkpointing: crash-safe writes (tried with simulated crashes), saving and restoring a training
# state without pickle, and activation checkpointing (measured by the bytes autograd keeps).

__all__ += ["SimulatedCrash", "simulate_crashes", "check_atomic_write", "check_training_state",
            "check_checkpointed_forward"]


class SimulatedCrash(BaseException):
    """Stands for the process dying in the middle of a save (kill -9, out of memory, a power cut).

    A BaseException, like KeyboardInterrupt, so that `except Exception` in the code under test
    cannot swallow it."""


class _IOLog:
    """The file-system operations of one save, and the crash that stops it at operation `crash_at`.

    The model of a crash: the operation where it happens does not take place, except a write, half
    of whose bytes reach the file; after it nothing more reaches the disk (no clean-up in `except`
    or `finally`). Durability is tracked on the side: which files were fsync'ed after their last
    write (and after a flush), and which folders were fsync'ed, in what order with the renames.
    """

    def __init__(self, root: Path, crash_at: int | None = None, disk_full: bool = False) -> None:
        self.root = root
        self.crash_at = crash_at
        self.crashed = False
        self.disk_full = disk_full  # the first write gets half of its bytes out, then fails with ENOSPC
        self.ops: list[str] = []
        self.events: list[tuple] = []  # ("rename", src, dst, durable, fsync_before_flush) / ("fsync-dir", path)
        self.fd_paths: dict[int, Path] = {}
        self.raw_fds: dict[int, tuple[int, int]] = {}  # os.open'ed, not closed yet: fd -> (device, inode)
        self.files: list[_LoggedFile] = []
        self.dirty: set[Path] = set()  # changed since their last effective fsync
        self.fsync_before_flush: set[Path] = set()
        self.opened_for_writing: list[Path] = []

    def name(self, path: Path | None) -> str:
        if path is None:
            return "a file"
        if path == self.root:
            return "the folder"
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return f"{path} (outside the folder)"

    def step(self, description: str) -> bool:
        """Count one operation; True when the crash happens here (then the caller does not do it)."""
        if self.crashed:
            raise SimulatedCrash("the process is no longer running")
        self.ops.append(description)
        if len(self.ops) - 1 == self.crash_at:
            self.crashed = True
            return True
        return False

    def buffered(self, path: Path) -> bool:
        return any(f.path == path and f.pending for f in self.files)

    def write_fails(self) -> bool:
        """True once, at the first write, when the disk is full."""
        full, self.disk_full = self.disk_full, False
        return full

    def close_all(self, real_close: Callable[[int], None]) -> None:
        for f in self.files:
            with contextlib.suppress(Exception):
                f._real.close()
        for fd, identity in self.raw_fds.items():
            with contextlib.suppress(OSError):
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == identity:  # still ours, not a number reused since
                    real_close(fd)
        self.raw_fds.clear()


def _disk_full_error() -> OSError:
    import errno

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _LoggedFile:
    """A file opened for writing while a save is logged. Bytes go to the OS at once (so a crash
    keeps what was written); `pending` counts those not yet flushed, as Python would still hold
    them in its buffer: an fsync before the flush would not cover them."""

    def __init__(self, log: _IOLog, real: Any, path: Path | None, binary: bool) -> None:
        self._log, self._real, self.path, self._binary = log, real, path, binary
        self.pending = 0

    def write(self, data):
        n = len(data)
        unit = "bytes" if self._binary else "characters"
        if self._log.step(f"write {n:,} {unit} to {self._log.name(self.path)}"):
            self._write_all(data[: n // 2])
            raise SimulatedCrash("crashed in the middle of a write")
        if self._log.write_fails():
            self._write_all(data[: n // 2])
            raise _disk_full_error()
        self._write_all(data)
        self.pending += n
        if self.path is not None:
            self._log.dirty.add(self.path)
        return n

    def _write_all(self, data) -> None:
        if self._binary:
            view = memoryview(data).cast("B")
            while view:
                view = view[self._real.write(view):]
        else:
            self._real.write(data)
            self._real.flush()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._log.crashed:
            raise SimulatedCrash("the process is no longer running")
        self.pending = 0

    def close(self) -> None:
        self.pending = 0
        self._real.close()

    def fileno(self) -> int:
        return self._real.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@contextlib.contextmanager
def _swapped(mapping: dict, key: str, value: Any):
    old = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = old


@contextlib.contextmanager
def _logged_io(log: _IOLog, fn_globals: dict | None = None):
    """Route open/os.open/os.write/os.fsync/os.replace/os.rename/deletes through `log`; also the
    `open` in `fn_globals` when it has its own (IPython puts a wrapper of io.open in the notebook's)."""
    import builtins
    import io
    import threading
    from unittest import mock

    real_open, real_os_open, real_write = io.open, os.open, os.write
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_unlink, real_rmdir, real_close = os.unlink, os.rmdir, os.close
    owner = threading.get_ident()

    def ours(real):
        """Only the thread running the save is logged: others (a notebook kernel's) go straight through."""
        def decorate(fake):
            @functools.wraps(fake)
            def call(*args, **kwargs):
                if threading.get_ident() != owner:
                    return real(*args, **kwargs)
                return fake(*args, **kwargs)
            return call
        return decorate

    def path_of(file, dir_fd=None) -> Path | None:
        if isinstance(file, int):
            return log.fd_paths.get(file)
        if dir_fd is not None:
            base = log.fd_paths.get(dir_fd)
            return None if base is None else Path(os.path.normpath(base / os.fsdecode(file)))
        return Path(os.path.abspath(os.fsdecode(os.fspath(file))))

    @ours(real_open)
    def fake_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
                  opener=None):
        if log.crashed:
            raise SimulatedCrash("the process is no longer running")
        if not any(c in mode for c in "wax+"):
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        binary = "b" in mode
        if opener is not None:  # e.g. tempfile: the opener's os.open is the step, and says which file
            real = real_open(file, mode, 0 if binary else buffering, encoding, errors, newline, closefd, opener)
            path = log.fd_paths.get(real.fileno())
            log.raw_fds.pop(real.fileno(), None)  # the file object owns the descriptor now
        else:
            path = path_of(file)
            empties = "w" in mode and not isinstance(file, int) and path is not None and path.exists()
            what = "create" if "x" in mode else "open"
            if log.step(f"{what} {log.name(path)} for writing" + (" (this empties it)" if empties else "")):
                raise SimulatedCrash("crashed while opening a file")
            real = real_open(file, mode, 0 if binary else buffering, encoding, errors, newline, closefd, opener)
            if isinstance(file, int) and closefd:
                log.raw_fds.pop(file, None)  # the file object owns the descriptor now
        wrapped = _LoggedFile(log, real, path, binary)
        log.files.append(wrapped)
        if path is not None:
            log.fd_paths[real.fileno()] = path
            log.opened_for_writing.append(path)
            if "w" in mode or "x" in mode:
                log.dirty.add(path)
        return wrapped

    @ours(real_os_open)
    def fake_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if log.crashed:
            raise SimulatedCrash("the process is no longer running")
        p = path_of(path, dir_fd)
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        if writing:
            what = "create" if flags & os.O_CREAT and p is not None and not p.exists() else "open"
            if log.step(f"{what} {log.name(p)} for writing"):
                raise SimulatedCrash("crashed while opening a file")
        fd = real_os_open(path, flags, mode, dir_fd=dir_fd)
        st = os.fstat(fd)
        log.raw_fds[fd] = (st.st_dev, st.st_ino)
        if p is not None:
            log.fd_paths[fd] = p
            if writing:
                log.opened_for_writing.append(p)
                log.dirty.add(p)
        return fd

    @ours(real_write)
    def fake_write(fd, data):
        p = log.fd_paths.get(fd)
        if p is None and not log.crashed:  # a descriptor opened before the save (stdout, ...)
            return real_write(fd, data)
        if log.step(f"write {len(data):,} bytes to {log.name(p)}"):
            real_write(fd, bytes(data)[: len(data) // 2])
            raise SimulatedCrash("crashed in the middle of a write")
        if log.write_fails():
            real_write(fd, bytes(data)[: len(data) // 2])
            raise _disk_full_error()
        n = real_write(fd, data)
        if p is not None:
            log.dirty.add(p)
        return n

    @ours(real_fsync)
    def fake_fsync(fd):
        if not isinstance(fd, int):
            fd = fd.fileno()
        p = log.fd_paths.get(fd)
        if p is None and not log.crashed:
            return real_fsync(fd)
        if log.step(f"fsync {log.name(p)}"):
            raise SimulatedCrash("crashed before an fsync")
        real_fsync(fd)
        if p is None:
            return
        if p.is_dir():
            log.events.append(("fsync-dir", p))
        elif log.buffered(p):
            log.fsync_before_flush.add(p)
        else:
            log.dirty.discard(p)

    def renamer(real, verb):
        @ours(real)
        def fake(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            s, d = path_of(src, src_dir_fd), path_of(dst, dst_dir_fd)
            over = "over" if d is not None and d.exists() else "to"
            if log.step(f"{verb} {log.name(s)} {over} {log.name(d)}"):
                raise SimulatedCrash("crashed before a rename")
            durable = s is not None and s not in log.dirty and not log.buffered(s)
            log.events.append(("rename", s, d, durable, s in log.fsync_before_flush))
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if s is not None and d is not None:
                for f in log.files:
                    if f.path == s:
                        f.path = d
                for fd, p in list(log.fd_paths.items()):
                    if p == s:
                        log.fd_paths[fd] = d
                if s in log.dirty:
                    log.dirty.discard(s)
                    log.dirty.add(d)
        return fake

    def deleter(real, what):
        @ours(real)
        def fake(path, *, dir_fd=None):
            p = path_of(path, dir_fd)
            if log.step(f"delete {what}{log.name(p)}"):
                raise SimulatedCrash("crashed before a delete")
            return real(path, dir_fd=dir_fd)
        return fake

    @ours(real_close)
    def fake_close(fd):
        log.raw_fds.pop(fd, None)
        return real_close(fd)

    patches = [
        mock.patch.object(builtins, "open", fake_open),
        mock.patch.object(io, "open", fake_open),
        mock.patch.object(os, "open", fake_os_open),
        mock.patch.object(os, "write", fake_write),
        mock.patch.object(os, "fsync", fake_fsync),
        mock.patch.object(os, "replace", renamer(real_replace, "rename")),
        mock.patch.object(os, "rename", renamer(real_rename, "rename")),
        mock.patch.object(os, "unlink", deleter(real_unlink, "")),
        mock.patch.object(os, "remove", deleter(real_unlink, "")),
        mock.patch.object(os, "rmdir", deleter(real_rmdir, "the folder ")),
        mock.patch.object(os, "close", fake_close),
    ]
    if isinstance(fn_globals, dict) and "open" in fn_globals:
        patches.append(_swapped(fn_globals, "open", fake_open))  # only that name: the namespace stays as it is
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        try:
            yield log
        finally:
            stack.close()
            log.close_all(real_close)


def _file_outcome(path: Path, old: bytes | None, new: bytes) -> str:
    """What a restarted program finds at `path`: 'the old file', 'the new file', 'no file' or 'a broken file: ...'."""
    if not path.exists():
        return "no file"
    data = path.read_bytes()
    if data == new:
        return "the new file"
    if old is not None and data == old:
        return "the old file"
    if not data:
        return "a broken file: it is empty"
    if new.startswith(data):
        return f"a broken file: the first {len(data):,} of the {len(new):,} new bytes"
    return f"a broken file: {len(data):,} bytes that are neither the old file nor the new one"


def _logged_save(save: Callable, old: bytes | None, new: bytes, name: str, crash_at: int | None,
                 disk_full: bool = False):
    """Run save(path, new) over a fresh file holding `old` (or no file) in an empty folder;
    -> (log, outcome, error, the names of the other files left in the folder)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mini-gpt-crash-") as tmp:
        root = Path(tmp).resolve()
        path = root / name
        if old is not None:
            path.write_bytes(old)
        log = _IOLog(root, crash_at, disk_full)
        error = None
        with _logged_io(log, getattr(save, "__globals__", None)):
            with contextlib.suppress(SimulatedCrash):  # the process "died" there: nothing after it runs
                try:
                    save(path, new)
                except Exception as exc:  # after a crash, what the function does is moot: the process is gone
                    if not log.crashed:
                        error = exc
        leftovers = sorted(p.name for p in root.iterdir() if p.name != name)
        return log, _file_outcome(path, old, new), error, leftovers


def simulate_crashes(save: Callable[[Path, bytes], Any], old: bytes | None, new: bytes,
                     name: str = "model.safetensors") -> list[tuple[str, str]]:
    """Crash `save(path, new)` at each of its file-system operations in turn, over a file holding `old`.

    The save runs once without a crash, to list its operations (opening a file for writing, each
    write, fsync, rename, delete), then once per operation with a crash at that operation: the
    operation does not happen (a write gets half of its bytes out) and nothing after it does.
    Returns [(operation, what a restart finds at path)], the outcome being "the old file", "the new
    file", "no file" or "a broken file: ...", and last ("no crash", outcome).
    """
    if not callable(save):
        raise TypeError(f"save must be a function save(path, data), got {type(save).__name__}")
    if not isinstance(new, (bytes, bytearray)) or (old is not None and not isinstance(old, (bytes, bytearray))):
        raise TypeError("old and new must be bytes (old may be None: no file yet)")
    log, outcome, error, _ = _logged_save(save, old, new, name, None)
    if error is not None:
        raise error
    rows = []
    for k in range(len(log.ops)):
        crash_log, crash_outcome, _, _ = _logged_save(save, old, new, name, k)
        rows.append((crash_log.ops[k] if k < len(crash_log.ops) else log.ops[k], crash_outcome))
    rows.append(("no crash", outcome))
    return rows


def _crash_payloads() -> tuple[bytes, bytes]:
    from safetensors.torch import save as to_safetensors

    g = _random_generator(9)
    old = to_safetensors({"w": torch.randn(8, 8, generator=g)})
    new = to_safetensors({"w": torch.randn(8, 16, generator=g)})
    return old, new


def _nothing_written(fn: Callable) -> None:
    print(f"\u270e {_name(fn)} wrote nothing: write its body, then run this cell again.")


_IN_PLACE = ("it writes over the old file in place: opening it for writing empties it at once, and a crash "
             "before the last byte leaves a broken file. Write a temporary file in the same folder, then "
             "os.replace it over the old one")


def check_atomic_write(fn: Callable[[Path, bytes], Any]) -> None:
    """fn(path, data) writes the bytes `data` to `path` crash-safely: a crash at any moment leaves
    either the old file whole or the new one, once fn returns the new file survives a power cut, and
    a write that fails (a full disk) leaves the old file and no temporary file, and raises.

    Runs fn over an old file and where there is none yet, crashing it at each of its file-system
    operations in turn (`simulate_crashes`), checks the order of its fsyncs and rename, then runs it
    on a disk that fills up half-way through the first write.
    """
    _require_callable(fn, "check_atomic_write")
    old, new = _crash_payloads()
    name = "model.safetensors"
    for scenario, before in (("over an old file", old), ("where there was no file yet", None)):
        log, outcome, error, _ = _logged_save(fn, before, new, name, None)
        if error is not None:
            raise _fail(fn, f"raised {type(error).__name__}: {error}\n  (writing {len(new):,} bytes to {name} "
                            f"{scenario})") from error
        if not log.ops and outcome != "the new file":
            return _nothing_written(fn)
        if outcome != "the new file":
            raise _fail(fn, f"after it returned (no crash), {name} holds {outcome}, not the {len(new):,} new bytes "
                            f"({scenario})")
        allowed = ("the old file", "the new file") if before is not None else ("no file", "the new file")
        target = log.root / name
        for k in range(len(log.ops)):
            crash_log, crash_outcome, _, _ = _logged_save(fn, before, new, name, k)
            if crash_outcome in allowed:
                continue
            op = crash_log.ops[k] if k < len(crash_log.ops) else log.ops[k]
            if target in log.opened_for_writing:
                hint = _IN_PLACE
            elif crash_outcome == "no file" and any(o.startswith(f"delete {name}") for o in log.ops):
                hint = ("the old file is deleted before the new one takes its name; os.replace(tmp, path) swaps "
                        "them in one step, with no delete needed")
            else:
                hint = "the new file must be complete before it takes the name: write it all, then rename it"
            raise _fail(fn, f"{scenario}: a crash at step {k + 1} of {len(log.ops)} ({op}) leaves {crash_outcome}."
                            f"\n  Probably: {hint}")
        renames = [i for i, e in enumerate(log.events) if e[0] == "rename" and e[2] == target]
        if not renames:
            hint = _IN_PLACE if target in log.opened_for_writing else "write a temp file, then os.replace(tmp, path)"
            raise _fail(fn, f"{name} gets its new bytes without a rename of a finished temporary file onto it "
                            f"({scenario}).\n  Probably: {hint}")
        i = renames[-1]
        _, src, _, durable, fsync_before_flush = log.events[i]
        if src is None or src.parent != target.parent:
            raise _fail(fn, f"the temporary file ({log.name(src)}) is not in the target's folder: a rename is atomic "
                            f"only within one file system (across two, os.replace fails or copies). Create it next "
                            f"to the target, e.g. path.with_name(path.name + '.tmp')")
        if not durable:
            if fsync_before_flush:
                hint = ("os.fsync ran while the bytes were still in Python's buffer: call f.flush() first, then "
                        "os.fsync(f.fileno())")
            else:
                hint = ("the temporary file is not fsync'ed before the rename: after a power cut the rename can "
                        "reach the disk before the data, leaving an empty or partial file under the real name. "
                        "Call f.flush() and os.fsync(f.fileno()) before os.replace")
            raise _fail(fn, f"the new file is not durable when it is renamed ({scenario}).\n  Probably: {hint}")
        if not any(e[0] == "fsync-dir" and e[1] == target.parent for e in log.events[i + 1:]):
            raise _fail(fn, "the folder is not fsync'ed after the rename: the rename is a change to the folder, and a "
                            "power cut can undo it. After os.replace: fd = os.open(folder, os.O_RDONLY); "
                            "os.fsync(fd); os.close(fd)")
    steps = len(log.ops)
    _, outcome, error, leftovers = _logged_save(fn, old, new, name, None, disk_full=True)
    full = "when the disk fills up (the first write raises OSError: No space left on device)"
    if error is None:
        raise _fail(fn, f"{full}, it returns as if the save worked: let the error reach the caller (re-raise it), "
                        f"so that training stops or retries instead of going on without a checkpoint")
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    if not any(isinstance(e, OSError) for e in chain):
        raise _fail(fn, f"{full}, it raises {type(error).__name__}: {error}; let the OSError through") from error
    if outcome != "the old file":
        raise _fail(fn, f"{full}, {name} holds {outcome}: a failed save must leave the old file as it was")
    if leftovers:
        raise _fail(fn, f"{full}, it leaves {', '.join(leftovers)} behind in the folder: remove the temporary "
                        f"file before the error goes on (try: ... except BaseException: tmp.unlink(missing_ok=True); "
                        f"raise)")
    return _passed(fn, f"leaves the old or the new file after a crash at any of its {steps} steps, fsyncs the "
                       f"file before the rename and the folder after, and cleans up after a full disk")


# -- saving and restoring a training state


def _state_model(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.GELU(), torch.nn.Dropout(0.3),
                                   torch.nn.Linear(32, 3))


def _state_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _state_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, start: int, n: int) -> list[float]:
    """n training steps from step `start`: the learning rate warms up by step, batch `step` depends
    only on step (the data stream's position), dropout draws from torch's global generator."""
    model.train()
    losses = []
    for step in range(start, start + n):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * min(1.0, (step + 1) / 10)
        g = torch.Generator().manual_seed(100 + step)
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch.save's zip, or a pickle stream


def _same_optimizer_state(a: dict, b: dict) -> str | None:
    """None when two optimizer `state` dicts hold equal tensors, else what differs."""
    if not b:
        return "empty"
    if sorted(a) != sorted(b):
        return f"it has state for parameters {sorted(b)}, the saved one for {sorted(a)}"
    for idx in a:
        for key, value in a[idx].items():
            if key not in b[idx]:
                return f"'{key}' of parameter {idx} is missing"
            other = b[idx][key]
            if not torch.equal(torch.as_tensor(value).float(), torch.as_tensor(other).float()):
                return f"'{key}' of parameter {idx} differs"
    return None


def check_training_state(save_state: Callable, load_state: Callable) -> None:
    """save_state(folder, model, optimizer, step) writes a training state into `folder`;
    load_state(folder, model, optimizer) -> step restores it into a fresh model and optimizer.

    A small model with dropout trains 7 steps (AdamW, a warming-up learning rate, a data stream
    indexed by the step), is saved, and goes on for 6 steps. A fresh model and optimizer, in a
    process whose random state has moved on, are then restored and run the same 6 steps: their
    losses must equal the uninterrupted run's exactly. No file may be a pickle.
    """
    _require_callable(save_state, "check_training_state")
    _require_callable(load_state, "check_training_state")
    import copy
    import tempfile

    saved_at, more = 7, 6
    with tempfile.TemporaryDirectory(prefix="mini-gpt-state-") as tmp, torch.random.fork_rng(devices=[]):
        folder = Path(tmp) / "state"
        folder.mkdir()
        torch.manual_seed(0)
        model = _state_model(0)
        optimizer = _state_optimizer(model)
        _state_steps(model, optimizer, 0, saved_at)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        moments = copy.deepcopy(optimizer.state_dict()["state"])
        rng = torch.get_rng_state()
        _call(save_state, (folder, model, optimizer, saved_at),
              f"save_state(folder, model, optimizer, step={saved_at}) after {saved_at} training steps")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        expected = _state_steps(model, optimizer, saved_at, more)

        torch.manual_seed(12345)  # a new process: its random state is not the saved one
        fresh = _state_model(1)
        fresh_optimizer = _state_optimizer(fresh)
        if not files:
            try:
                step = load_state(folder, fresh, fresh_optimizer)
            except Exception:  # it looked for files that are not there
                step = False
            if step is None:
                print(f"\u270e {_name(save_state)} and {_name(load_state)} are not written yet: write their bodies, "
                      f"then run this cell again.")
                return None
            raise _fail(save_state, "wrote no file into the folder: the state must survive the process, so it goes "
                                    "to disk")
        step = _call(load_state, (folder, fresh, fresh_optimizer), "load_state(folder, fresh_model, fresh_optimizer)")
        pickled = [p.relative_to(folder).as_posix() for p in files if _is_pickle(p)]
        if pickled:
            raise _fail(save_state, f"{', '.join(pickled)} is a pickle (torch.save or pickle.dump): loading it runs "
                                    f"whatever code the file holds. Save tensors with safetensors.torch.save_file "
                                    f"and the rest as JSON")
        if step is None:
            raise _fail(load_state, f"returned None; return the step the state was saved at ({saved_at}): the "
                                    f"loop needs it to go on with the learning-rate schedule and the data where "
                                    f"they stopped")
        if isinstance(step, torch.Tensor) and step.numel() == 1:
            step = step.item()
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int):
            raise _fail(load_state, f"returned {step!r}; return the step as an int ({saved_at})")
        rng_restored = torch.equal(torch.get_rng_state(), rng)
        weights_restored = all(torch.equal(v, weights[k]) for k, v in fresh.state_dict().items())
        optimizer_problem = _same_optimizer_state(moments, fresh_optimizer.state_dict()["state"])
        got = _state_steps(fresh, fresh_optimizer, step, more)
        if got == expected and step == saved_at:
            return _passed(save_state, f"and {_name(load_state)} resume exactly: the next {more} losses equal the "
                                       f"uninterrupted run's, and no file is a pickle")
        if step != saved_at:
            hint = (f"load_state returned step {step}, but the state was saved at step {saved_at}: the "
                    f"learning rate and the batches depend on the step")
        elif not weights_restored:
            hint = "the weights are not restored: model.load_state_dict(...) with the saved tensors"
        elif optimizer_problem == "empty":
            hint = ("AdamW's state is not restored: a fresh optimizer restarts its moments (exp_avg, exp_avg_sq) "
                    "from zero and its step count from 0. Save optimizer.state_dict()['state'] and load it with "
                    "optimizer.load_state_dict")
        elif optimizer_problem is not None:
            hint = f"the optimizer's state is not the saved one: {optimizer_problem}"
        elif not rng_restored:
            hint = ("the random state is not restored, so dropout draws other masks: save torch.get_rng_state() "
                    "and give it back with torch.set_rng_state (after everything else that draws random numbers)")
        else:
            hint = None
        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), 0)
        msg = (f"after load_state the losses differ from the uninterrupted run's, first at step {saved_at + i + 1} "
               f"({got[i]:.6f} instead of {expected[i]:.6f})")
        if hint:
            msg += f".\n  Probably: {hint}"
        raise _fail(load_state, msg)


# -- activation checkpointing


def _saved_activation_bytes(run: Callable[[], Any], params: Iterable[torch.Tensor] = ()) -> tuple[Any, int]:
    """run() under a hook that sees every tensor autograd saves for the backward pass; -> (its result,
    the bytes of the distinct storages saved, parameters left out: they are in memory anyway)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(seen.values())


def _backward_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    for p in params:
        p.grad = None
    loss.backward()
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def check_checkpointed_forward(fn: Callable[[GPT, torch.Tensor], torch.Tensor]) -> None:
    """fn(model, idx (B, T)) -> logits (B, T, vocab_size) of a GPT in training mode, computed with
    activation checkpointing: the logits and the gradients must equal model(idx)'s, while autograd
    keeps at most 60% of the activations the plain forward keeps for the backward pass.
    """
    _require_callable(fn, "check_checkpointed_forward")
    g = _random_generator(10)
    atol = 1e-5
    ratios = []
    for seed, L in ((0, 4), (1, 6)):
        model = small_model(seed=seed, n_layer=L, n_embd=32, n_head=4, block_size=32).train()
        params = list(model.parameters())
        idx = torch.randint(0, model.config.vocab_size, (4, 32), generator=g)
        where = f"a {L}-layer GPT, idx of shape {tuple(idx.shape)}"
        expected, plain_bytes = _saved_activation_bytes(lambda: model(idx), params)
        weights = torch.randn(expected.shape, generator=g)
        ref_grads = _backward_grads((expected * weights).sum(), params)
        out, kept = _saved_activation_bytes(lambda: _call(fn, (model, idx.clone()), where), params)
        if out is None:
            return _not_answered(fn)
        out = _as_tensor(fn, out, where)
        if not _close(out.detach(), expected.detach(), atol=atol):
            tr = model.transformer

            def no_ln_f():
                x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))
                return _through(tr, x) @ tr.wte.weight.T

            variants = [
                ("the final LayerNorm ln_f is missing", no_ln_f),
                ("this returns the last hidden state, not the logits: apply the head (model.lm_head)",
                 lambda: tr.ln_f(_through(tr, tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))))),
            ]
            with torch.no_grad():
                hint = _diagnose(out.detach(), variants, atol)
            raise _mismatch(fn, out.detach(), expected.detach(), where, "model(idx)", hint, atol)
        if not out.requires_grad:
            raise _fail(fn, f"the logits carry no gradient on {where}: the forward ran without autograd "
                            f"(torch.no_grad?), so training could not learn from them")
        grads = _backward_grads((out * weights).sum(), params)  # .backward(): reentrant checkpoints refuse .grad()
        names = [n for n, _ in model.named_parameters()]
        missing = [name for name, got_grad in zip(names, grads) if got_grad is None]
        if missing:
            shown = ", ".join(missing[:2]) + (", ..." if len(missing) > 2 else "")
            raise _fail(fn, f"no gradient reaches {len(missing)} of the {len(names)} parameters ({shown}) on {where}: "
                            f"that part ran outside autograd (under torch.no_grad, or on a detached tensor)")
        for name, got_grad, ref in zip(names, grads, ref_grads):
            if not _close(got_grad, ref, atol=atol):
                raise _fail(fn, f"the gradient of {name} differs from the plain forward's by up to "
                                f"{_max_diff(got_grad, ref):.3g} on {where}")
        ratios.append(kept / plain_bytes)
        if kept > 0.6 * plain_bytes:
            raise _fail(fn, f"on {where} autograd keeps {kept:,} bytes of activations for the backward pass, "
                            f"{kept / plain_bytes:.0%} of the plain forward's {plain_bytes:,}: nothing is recomputed."
                            f"\n  Probably: wrap each block (or run of blocks) in torch.utils.checkpoint.checkpoint"
                            f"(..., use_reentrant=False), with autograd on")
    return _passed(fn, f"gives model(idx)'s logits and gradients, keeping {max(ratios):.0%} or less of the "
                       f"activations (2 models)")


# ---- chapter 05 checks
# The training chapter: a picture of the loop, and checks for the learning-rate schedule,
# gradient clipping and one AdamW update, each compared with the library or PyTorch.

__all__ += ["draw_training_loop", "check_lr_schedule", "check_clip_grad_norm", "check_adamw_step"]


def draw_training_loop(ax=None):
    """One optimizer step as a cycle: batch -> forward -> loss -> backward -> clip -> AdamW step
    (learning rate from the schedule) -> the next batch. Returns the Axes."""
    if ax is None:
        plt = _pyplot()
        _, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
    ax.set_xlim(0, 100)
    ax.set_ylim(-1, 37)
    ax.set_aspect("equal")
    ax.axis("off")
    w, h = 26, 10
    top = [(2, "batch\nx, y = random windows"), (37, "forward\nlogits = model(x)"),
           (72, "loss\ncross-entropy vs y")]
    bottom = [(72, "backward\nloss.backward()"), (37, "clip\nglobal grad norm \u2264 1"),
              (2, "AdamW step\nlr = schedule(step)")]
    for x, text in top:
        _box(ax, x, 24, w, h, text, fill=_HIGHLIGHT if text.startswith("loss") else _BOX, fontsize=9.5)
    for x, text in bottom:
        _box(ax, x, 2, w, h, text, fontsize=9.5)
    _arrow(ax, (28, 29), (37, 29))
    _arrow(ax, (63, 29), (72, 29))
    _arrow(ax, (85, 24), (85, 12))
    _arrow(ax, (72, 7), (63, 7))
    _arrow(ax, (37, 7), (28, 7))
    _arrow(ax, (15, 12), (15, 24), color="#9ca3af")
    ax.text(16.5, 18, "next step", ha="left", va="center", fontsize=8.5, color="#6b7280")
    ax.text(50, 18, "forward and backward run grad_accum times (the gradients add up)\n"
                    "before each update; then the gradients are set back to zero",
            ha="center", va="center", fontsize=8.5, color="#6b7280")
    return ax


def _as_float(fn: Callable, out: Any, where: str) -> float:
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            raise _fail(fn, f"returned a tensor of shape {tuple(out.shape)} on {where}; return one number")
        out = out.item()
    if isinstance(out, (bool, str, bytes)):
        raise _fail(fn, f"returned {out!r} on {where}; return a number")
    try:
        return float(out)
    except (TypeError, ValueError):
        raise _fail(fn, f"returned {type(out).__name__} on {where}; return a number (a float)") from None


# -- the learning-rate schedule


def _schedule_variant(step: int, max_lr: float, min_lr: float, warmup: int, total: int, mistake: str) -> float:
    """Warmup + cosine with one deliberate mistake, for diagnosing answers."""
    if step < warmup:
        return max_lr * (step if mistake == "warmup_from_zero" else step + 1) / warmup
    if step >= total and mistake != "no_floor":
        return 0.0 if mistake == "to_zero" else min_lr
    start = 0 if mistake == "progress_from_zero" else warmup
    progress = (step - start) / max(1, total - start)
    if mistake == "linear":
        return max_lr - progress * (max_lr - min_lr)
    if mistake == "to_zero":
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * max_lr
    if mistake == "no_half":
        return min_lr + math.cos(math.pi * progress) * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


_SCHEDULE_MISTAKES = [
    ("warmup_from_zero", "the warmup starts at 0, so the first step does not move the weights: step s (counting "
                         "from 0) gets max_lr * (s + 1) / warmup"),
    ("to_zero", "the cosine decays to 0; it must end at min_lr: min_lr + 0.5 * (1 + cos(pi * progress)) * "
                "(max_lr - min_lr)"),
    ("progress_from_zero", "the cosine's progress counts from step 0; it starts after the warmup: "
                           "progress = (step - warmup) / (total - warmup)"),
    ("no_floor", "after `total` steps the cosine comes back up; from step `total` on, the rate stays at min_lr"),
    ("linear", "this is a linear decay; the decay follows half a cosine: 0.5 * (1 + cos(pi * progress))"),
    ("no_half", "the factor is cos(pi * progress), which goes down to -1; use 0.5 * (1 + cos(pi * progress)), "
                "which goes from 1 to 0"),
]


def check_lr_schedule(fn: Callable[[int, float, float, int, int], float]) -> None:
    """fn(step, max_lr, min_lr, warmup, total) -> the learning rate of optimizer step `step`
    (counting from 0): a linear warmup to max_lr over `warmup` steps, then half a cosine down to
    min_lr at step `total`, and min_lr after that.

    Compared with `mini_gpt.train.lr_at` at every step (and past the end) of several schedules.
    """
    from .train import TrainConfig, lr_at

    _require_callable(fn, "check_lr_schedule")
    schedules = [(1e-3, 1e-4, 10, 100), (2e-3, 2e-4, 50, 1000), (6e-4, 0.0, 0, 40), (1.0, 0.5, 3, 7)]
    for max_lr, min_lr, warmup, total in schedules:
        cfg = TrainConfig(learning_rate=max_lr, min_lr=min_lr, warmup_iters=warmup, max_iters=total)
        name = f"max_lr={max_lr:g}, min_lr={min_lr:g}, warmup={warmup}, total={total}"
        steps = range(total + 10)
        got = []
        for step in steps:
            where = f"step={step} ({name})"
            out = _call(fn, (step, max_lr, min_lr, warmup, total), where)
            if out is None:
                if step == 0 and not got:
                    return _not_answered(fn)
                raise _fail(fn, f"returned None at {where}; return the learning rate at every step")
            got.append(_as_float(fn, out, where))
        expected = [lr_at(step, cfg) for step in steps]
        bad = [s for s in steps if not math.isclose(got[s], expected[s], rel_tol=1e-6, abs_tol=1e-12)]
        if not bad:
            continue
        s = bad[0]
        msg = (f"at step {s} of the schedule {name} you return {got[s]:.6g}, lr_at gives {expected[s]:.6g} "
               f"({len(bad)} of {len(expected)} steps differ)")
        for mistake, hint in _SCHEDULE_MISTAKES:
            wrong = [_schedule_variant(step, max_lr, min_lr, warmup, total, mistake) for step in steps]
            if all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12) for a, b in zip(got, wrong)):
                msg += f".\n  Probably: {hint}"
                break
        raise _fail(fn, msg)
    return _passed(fn, f"matches mini_gpt.train.lr_at at every step of {len(schedules)} schedules")


# -- gradient clipping


def _clip_cases() -> list[tuple[str, list[torch.Tensor], float]]:
    g = _random_generator(11)
    mixed = [torch.randn(4, 6, generator=g), torch.randn(6, generator=g), torch.randn(2, 3, 5, generator=g)]
    lopsided = [torch.randn(8, 8, generator=g) * 3.0, torch.randn(8, generator=g) * 0.01,
                torch.randn(3, generator=g) * 0.2]
    return [
        ("3 tensors with a global norm of about 7.7, max_norm=1.0", mixed, 1.0),
        ("the same tensors with max_norm=10.0 (above their norm)", mixed, 10.0),
        ("one tensor of shape (5, 4), max_norm=0.5", [torch.randn(5, 4, generator=g)], 0.5),
        ("one large tensor and two small ones, max_norm=2.0", lopsided, 2.0),
    ]


def _global_norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def check_clip_grad_norm(fn: Callable[[list[torch.Tensor], float], Any]) -> None:
    """fn(grads, max_norm) -> the global norm of `grads` (a list of tensors) before clipping; when
    that norm is above max_norm, fn scales every tensor in place by max_norm / norm.

    Compared with `torch.nn.utils.clip_grad_norm_` (the returned norm and the clipped gradients)
    on several lists of gradients.
    """
    _require_callable(fn, "check_clip_grad_norm")
    for where, grads, max_norm in _clip_cases():
        mine = [t.clone() for t in grads]
        out = _call(fn, (mine, max_norm), where)
        if out is None:
            return _not_answered(fn)
        if isinstance(out, (tuple, list)):
            raise _fail(fn, f"returned a {type(out).__name__} on {where}; clip the tensors in place (t.mul_(...)) "
                            f"and return only the global norm, as torch.nn.utils.clip_grad_norm_ does")
        norm = _as_float(fn, out, where)
        params = [torch.nn.Parameter(t.clone()) for t in grads]
        for p, t in zip(params, grads):
            p.grad = t.clone()
        expected_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        expected = [p.grad for p in params]
        if not math.isclose(norm, expected_norm, rel_tol=1e-4):
            norms = [float(t.double().norm()) for t in grads]
            known = [
                (sum(norms), "this is the sum of the tensors' norms; the global norm is the norm of all entries "
                             "together: sqrt(sum over tensors of (norm of tensor) ** 2)"),
                (math.sqrt(sum(norms)), "square each tensor's norm before summing: sqrt(sum of norm ** 2)"),
                (max(norms), "this is the largest tensor's norm; the global norm takes all tensors together"),
                (sum(n**2 for n in norms), "the square root is missing: the norm is sqrt(sum of squares)"),
                (min(expected_norm, max_norm), "this is the norm after clipping; return the norm before it "
                                               "(training logs it to spot gradient spikes)"),
            ]
            hint = next((h for value, h in known if math.isclose(norm, value, rel_tol=1e-4)), None)
            raise _fail(fn, f"on {where} you return a norm of {norm:.6g}, clip_grad_norm_ gives {expected_norm:.6g}"
                            + (f".\n  Probably: {hint}" if hint else ""))
        if all(_close(a, b, atol=1e-6) for a, b in zip(mine, expected)):
            continue
        total = _global_norm(grads)
        variants = [
            ("the gradients were not changed: scale them in place, e.g. t.mul_(max_norm / norm)",
             lambda: [t.clone() for t in grads]),
            ("the gradients were scaled up to max_norm although their norm was smaller; clip only when "
             "norm > max_norm (the factor is min(1, max_norm / norm))",
             lambda: [t * (max_norm / total) for t in grads]),
            ("each tensor is clipped on its own; clipping scales all of them by one factor from the global "
             "norm, which keeps the gradient's direction",
             lambda: [t * min(1.0, max_norm / float(t.norm())) for t in grads]),
            ("the factor is upside down: multiply by max_norm / norm, not norm / max_norm",
             lambda: [t * (total / max_norm) if total > max_norm else t.clone() for t in grads]),
        ]
        hint = None
        for explanation, make in variants:
            if all(_close(a, b, atol=1e-6) for a, b in zip(mine, make())):
                hint = explanation
                break
        worst = next(i for i, (a, b) in enumerate(zip(mine, expected)) if not _close(a, b, atol=1e-6))
        raise _mismatch(fn, mine[worst], expected[worst], f"{where} (tensor {worst} after clipping)",
                        "torch.nn.utils.clip_grad_norm_", hint, 1e-6)
    return _passed(fn, "matches torch.nn.utils.clip_grad_norm_ on 4 lists of gradients")


# -- one AdamW update


def _adamw_variant(p, g, m, v, t, lr, beta1, beta2, eps, wd, mistake=None):
    """One AdamW update with one deliberate mistake (or none): returns (p, m, v)."""
    if mistake == "l2":
        g = g + wd * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m if mistake in ("no_correction", "no_correction_m") else m / (1 - beta1**t)
    v_hat = v if mistake in ("no_correction", "no_correction_v") else v / (1 - beta2**t)
    denom = torch.sqrt(v_hat + eps) if mistake == "eps_inside" else torch.sqrt(v_hat) + eps
    update = m_hat / denom
    if mistake == "l2":
        return p - lr * update, m, v
    if mistake == "wd_no_lr":
        return p * (1 - wd) - lr * update, m, v
    if mistake == "wd_after":
        return (p - lr * update) * (1 - lr * wd), m, v
    return p * (1 - lr * wd) - lr * update, m, v


_ADAMW_MISTAKES = [
    ("no_correction", "the bias correction is missing: divide m by (1 - beta1 ** t) and v by (1 - beta2 ** t), "
                      "with t = 1 on the first step"),
    ("no_correction_m", "only v is bias-corrected; m needs it too: m_hat = m / (1 - beta1 ** t)"),
    ("no_correction_v", "only m is bias-corrected; v needs it too: v_hat = v / (1 - beta2 ** t)"),
    ("l2", "this is Adam with L2 regularisation (weight_decay * p added to the gradient); AdamW decays the "
           "weights directly, outside the moments: p = p - lr * weight_decay * p"),
    ("wd_no_lr", "the weight decay is not multiplied by the learning rate: p = p * (1 - lr * weight_decay)"),
    ("wd_after", "the decay is applied to the updated weights; AdamW decays the old ones: "
                 "p_new = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)"),
    ("eps_inside", "eps is inside the square root; it is added to it: m_hat / (sqrt(v_hat) + eps) (this shows "
                   "for tiny gradients)"),
]


def _adamw_cases() -> list[tuple[str, torch.Tensor, list[torch.Tensor], float, tuple[float, float], float]]:
    g = _random_generator(12)
    cases = []
    for name, shape, scale, betas, wd in (
        ("a (4, 5) matrix with weight_decay=0.1, betas=(0.9, 0.999)", (4, 5), 1.0, (0.9, 0.999), 0.1),
        ("a vector of 6 with weight_decay=0.0, betas=(0.9, 0.99)", (6,), 1.0, (0.9, 0.99), 0.0),
        ("a (3, 3) matrix with tiny gradients (about 1e-5), weight_decay=0.1", (3, 3), 1e-5, (0.9, 0.95), 0.1),
    ):
        p = torch.randn(shape, generator=g, dtype=torch.float64)
        grads = [torch.randn(shape, generator=g, dtype=torch.float64) * scale for _ in range(5)]
        cases.append((name, p, grads, 1e-8, betas, wd))
    return cases


def check_adamw_step(fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """fn(p, grad, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (p, m, v) after one AdamW
    update: t is the update's number (1 on the first), m and v the moving averages of the gradient
    and of its square (zeros before the first update).

    Five updates in a row (the learning rate changing as under a schedule) on three tensors,
    compared with `torch.optim.AdamW` after every update.
    """
    _require_callable(fn, "check_adamw_step")
    lrs = [0.05, 0.1, 0.08, 0.05, 0.02]
    atol = 1e-9
    for name, p0, grads, eps, (beta1, beta2), wd in _adamw_cases():
        ref = torch.nn.Parameter(p0.clone())
        opt = torch.optim.AdamW([ref], lr=lrs[0], betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=False)
        p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        history = [(p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0))]  # (p, m, v) by hand, for hints
        for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
            where = f"update t={t} of {name}, lr={lr}"
            out = _call(fn, (p.clone(), g.clone(), m.clone(), v.clone(), t, lr, beta1, beta2, eps, wd), where)
            if out is None:
                return _not_answered(fn)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise _fail(fn, f"returned {type(out).__name__} on {where}; return the tuple (p, m, v): the new "
                                f"weights and the two updated moving averages")
            p, m, v = (_as_tensor(fn, x, where).detach().to(torch.float64) for x in out)
            ref.grad = g.clone()
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            expected = ref.detach()
            if _close(p, expected, atol=atol, rtol=1e-7):
                before = history[-1]
                history.append(_adamw_variant(before[0], g, before[1], before[2], t, lr, beta1, beta2, eps, wd))
                continue
            before = history[-1]
            hint = None
            for mistake, explanation in _ADAMW_MISTAKES:
                wrong = _adamw_variant(before[0], g, before[1], before[2], t, lr, beta1, beta2, eps, wd, mistake)
                if _close(p, wrong[0], atol=atol, rtol=1e-7):
                    hint = explanation
                    break
            if hint is None and t > 1:
                zeros = torch.zeros_like(p0)
                stale = _adamw_variant(before[0], g, zeros, zeros, t, lr, beta1, beta2, eps, wd)
                if _close(p, stale[0], atol=atol, rtol=1e-7):
                    hint = ("m and v start from zero at every update: return the updated m and v, they carry "
                            "over to the next update")
            if hint is None and torch.isnan(p).any():
                hint = "NaN: v averages the *squared* gradient (g * g), which is never negative"
            raise _mismatch(fn, p, expected, where, "torch.optim.AdamW", hint, atol)
    return _passed(fn, "matches torch.optim.AdamW over 5 updates on 3 tensors")
