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
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 100, "axes.spines.top": False, "axes.spines.right": False})
    except ImportError:  # figures need mini_gpt[book]; everything else works without it
        pass


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
                if not _finished(out_dir):
                    if progress:
                        print("Training the course's Shakespeare model once; later chapters load it from the cache.")
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
    return float((a.double() - b.double()).abs().nan_to_num(nan=math.inf).max())


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
