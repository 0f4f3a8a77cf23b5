"""Pictures of what a GPT does: attention heatmaps, loss curves, next-token distributions.

- `attention_heatmap(weights, tokens)`: one (T, T) attention matrix as a matplotlib heatmap;
  rows are queries (the token that looks), columns are keys (the tokens it looks at), and the
  upper triangle (the future, which the causal mask hides) is left blank.
- `AttentionExplorer(model, tokenizer, prompt)`: an ipywidgets explorer (prompt box, layer and
  head selectors) that redraws the heatmap; `explorer.layer = 1; explorer.head = 2` does the
  same from code, and `explorer.current_weights()` is exactly the matrix on screen.
- `attention_html(model, tokenizer, prompt)` / `explorer.to_html(path)`: the same explorer as one
  self-contained piece of HTML + JavaScript (every layer and head embedded as JSON, drawn on a
  `<canvas>`, weight shown on hover). It needs no kernel and makes no network request, so it
  stays interactive in the built Jupyter Book and as a file opened from disk.
- `loss_curve(metrics)`: train / validation loss (and learning rate) from `metrics.jsonl`.
- `next_token_distribution(logits, tokenizer)`: the top-k next-token probabilities as bars.

matplotlib and ipywidgets are optional (`pip install 'mini_gpt[book]'`): they are imported
inside the functions that need them, so `import mini_gpt.viz` works without them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html as _html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "AttentionExplorer",
    "attention_heatmap",
    "attention_html",
    "loss_curve",
    "next_token_distribution",
    "show_attention_html",
    "token_labels",
]

HTML_MAX_TOKENS = 64  # default context of the HTML export: size grows as layers * heads * T^2 / 2
HEAD_CHOICES = ("mean", "all")  # besides a head's number: the mean over heads, or every head in a grid

_INSTALL_HINT = "pip install 'mini_gpt[book]'"


# ---------------------------------------------------------------------------- optional imports


def _import_matplotlib():
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as exc:
        raise ImportError(
            f"mini_gpt.viz needs matplotlib to draw plots: {_INSTALL_HINT} (or pip install matplotlib)"
        ) from exc
    return matplotlib


def _import_pyplot():
    _import_matplotlib()
    import matplotlib.pyplot as plt

    return plt


def _import_widgets():
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(
            f"AttentionExplorer's widget needs ipywidgets (and a Jupyter kernel): {_INSTALL_HINT} "
            f"(or pip install ipywidgets). Without it, use attention_html(...) or explorer.plot()."
        ) from exc
    return ipywidgets


def _import_ipython_display():
    try:
        from IPython import display
    except ImportError as exc:
        raise ImportError(f"showing HTML in a notebook needs IPython: {_INSTALL_HINT}") from exc
    return display


# ---------------------------------------------------------------------------- token labels

_VISIBLE = {"\n": "\u23ce", " ": "\u2423", "\t": "\u21e5", "\r": "\\r"}  # ⏎ ␣ ⇥


def _visible(text: str) -> str:
    """A token's text with newline, space and tab made visible (⏎ ␣ ⇥), control characters escaped."""
    if text == "":
        return "\u2205"  # ∅
    out = []
    for c in text:
        if c in _VISIBLE:
            out.append(_VISIBLE[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def token_labels(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """Each token's own text, made readable for plot labels: "\\n" -> "⏎", " " -> "␣", "\\t" -> "⇥".

    Works with `CharTokenizer` (its `chars`), `BPETokenizer` (`decode_tokens`) and any tokenizer
    with `decode(list[int])`.
    """
    ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    if hasattr(tokenizer, "decode_tokens"):
        texts = tokenizer.decode_tokens(ids)
    elif hasattr(tokenizer, "chars"):
        n = len(tokenizer.chars)
        for pos, i in enumerate(ids):
            if not 0 <= i < n:
                raise ValueError(f"ids[{pos}] = {i} is not a token id; allowed range is [0, {n - 1}]")
        texts = [tokenizer.chars[i] for i in ids]
    elif hasattr(tokenizer, "decode"):
        texts = [tokenizer.decode([i]) for i in ids]
    else:
        raise TypeError(f"tokenizer must have decode_tokens, chars or decode, got {type(tokenizer).__name__}")
    return [_visible(t) for t in texts]


@functools.lru_cache(maxsize=4)
def _font_charmap(family: tuple[str, ...]) -> frozenset[int] | None:
    """Code points the default matplotlib font can draw (None if it cannot be read)."""
    try:
        from matplotlib import font_manager, ft2font

        path = font_manager.findfont(font_manager.FontProperties(family=list(family)))
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # an unreadable font only loses this nicety
        return None


def _mpl_label(label: str, max_len: int = 14) -> str:
    """A label matplotlib draws as plain text: '$' escaped (no mathtext), glyphs the font lacks as
    their \\u escape, e.g. \\u2581 (so drawing never warns "Glyph missing", which would land in a
    notebook's stderr)."""
    import matplotlib

    label = str(label)
    if len(label) > max_len:
        label = label[: max_len - 1] + "\u2026"
    charmap = _font_charmap(tuple(matplotlib.rcParams["font.family"]))
    out = []
    for c in label:
        if c == "$":
            out.append("\\$")
        elif charmap is not None and ord(c) not in charmap:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        else:
            out.append(c)
    return "".join(out)


# ---------------------------------------------------------------------------- static heatmap


def _as_matrix(weights: Any, name: str = "weights") -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        arr = weights.detach().to("cpu", torch.float32).numpy()
    else:
        try:
            arr = np.asarray(weights, dtype=np.float32)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a (T, T) tensor or array, got {type(weights).__name__}") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        hint = "; pick one layer, batch row and head first, e.g. attentions[layer][0, head]" if arr.ndim == 4 else ""
        raise ValueError(f"{name} must be a square (T, T) matrix with T >= 1, got shape {tuple(arr.shape)}{hint}")
    return arr


def _tick_step(T: int, max_labels: int) -> int:
    return max(1, math.ceil(T / max_labels))


def _draw_heatmap(ax, w: np.ndarray, labels: list[str] | None, *, causal: bool, vmax: float, cmap: str,
                  max_labels: int, fontsize: float | None, axis_titles: bool = True):
    """Draw a (T, T) matrix on `ax`; returns the AxesImage."""
    import matplotlib

    T = w.shape[0]
    mask = np.triu(np.ones((T, T), dtype=bool), k=1) if causal else np.zeros((T, T), dtype=bool)
    data = np.ma.masked_array(w, mask=mask)
    # masked cells ("bad" values) are fully transparent: the future is empty, not a weight of 0
    colors = matplotlib.colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    im = ax.imshow(data, cmap=colors, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    if fontsize is None:
        fontsize = 10 if T <= 16 else 8 if T <= 40 else 7
    step = _tick_step(T, max_labels)
    ticks = list(range(0, T, step))
    if labels is None:
        names = [str(t) for t in ticks]
    else:
        names = [_mpl_label(labels[t]) for t in ticks]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(names, rotation=90, fontsize=fontsize)
    ax.set_yticklabels(names, fontsize=fontsize)
    ax.tick_params(length=2, pad=2)
    if axis_titles:
        ax.set_xlabel("key: the token attended to")
        ax.set_ylabel("query: the token attending")
    return im


def attention_heatmap(
    weights: Any,
    tokens: Iterable[str] | None = None,
    ax=None,
    title: str | None = None,
    *,
    causal: bool = True,
    colorbar: bool = True,
    vmax: float = 1.0,
    cmap: str = "viridis",
    max_labels: int = 48,
):
    """Heatmap of one attention matrix `weights` (T, T): row i = query i, column j = key j.

    tokens: T labels for both axes (e.g. `token_labels(tok, ids)`; spaces and newlines are made
        visible); None numbers the positions.
    causal: leave the upper triangle (keys after the query) blank instead of coloring it as 0.
    The colour scale is fixed to [0, vmax] (1 by default), so different heads compare directly.
    Returns the matplotlib Axes (a new figure when `ax` is None).
    """
    w = _as_matrix(weights)
    T = w.shape[0]
    labels = None
    if tokens is not None:
        if isinstance(tokens, str):
            raise TypeError("tokens must be a list of T labels (one per token), not one str; "
                            "use token_labels(tokenizer, ids)")
        labels = [_visible(str(t)) for t in tokens]
        if len(labels) != T:
            raise ValueError(f"tokens must hold one label per row of weights: T={T}, got {len(labels)} labels")
    if not (isinstance(vmax, (int, float)) and vmax > 0):
        raise ValueError(f"vmax must be a number > 0, got {vmax!r}")
    if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 1:
        raise ValueError(f"max_labels must be an int >= 1, got {max_labels!r}")
    if ax is None:
        plt = _import_pyplot()
        side = min(9.0, max(4.0, 2.2 + 0.2 * T))
        _, ax = plt.subplots(figsize=(side + (1.0 if colorbar else 0.0), side), layout="constrained")
    else:
        _import_matplotlib()
    im = _draw_heatmap(ax, w, labels, causal=causal, vmax=float(vmax), cmap=cmap, max_labels=max_labels, fontsize=None)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    if title is not None:
        ax.set_title(title)
    return ax


# ---------------------------------------------------------------------------- running the model


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _block_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "block_size", None)


def _encode_prompt(tokenizer: Any, prompt: Any, limit: int | None, limit_name: str) -> tuple[list[int], str | None]:
    """Token ids of `prompt`, keeping the last `limit`; and a note when it was cropped."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt must be a non-empty str (at least 1 token)")
    try:
        ids = list(tokenizer.encode(prompt))
    except ValueError as exc:
        raise ValueError(f"prompt cannot be encoded by this tokenizer: {exc}") from None
    if not ids:
        raise ValueError("prompt must encode to at least 1 token, got none")
    note = None
    if limit is not None and len(ids) > limit:
        note = (f"The prompt is {len(ids)} tokens; only the last {limit} are used ({limit_name}={limit}).")
        ids = ids[-limit:]
    return ids, note


def _attention_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Every layer's attention for one sequence: (n_layer, n_head, T, T), float32 on the CPU.

    Runs in eval mode (no dropout) under no_grad; every module's previous mode is restored.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a mini_gpt GPT), got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            idx = torch.tensor([ids], dtype=torch.long, device=_model_device(model))
            out = model(idx, return_attention=True)
    finally:
        for m, training in modes:
            m.training = training
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (list, tuple)) and out[1]):
        raise TypeError("model(idx, return_attention=True) must return (logits, [attention per layer])")
    return torch.stack([a[0].detach().to("cpu", torch.float32) for a in out[1]])  # (L, H, T, T)


def _check_layer(layer: Any, n_layer: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layer:
        raise ValueError(f"layer must be an int in [0, {n_layer - 1}], got {layer!r}")
    return int(layer)


def _check_head(head: Any, n_head: int, choices: tuple[str, ...] = HEAD_CHOICES) -> int | str:
    if isinstance(head, str) and head in choices:
        return head
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not 0 <= head < n_head:
        extra = "".join(f" or {c!r}" for c in choices)
        raise ValueError(f"head must be an int in [0, {n_head - 1}]{extra}, got {head!r}")
    return int(head)


# ---------------------------------------------------------------------------- ipywidgets explorer


class AttentionExplorer:
    """Explore a model's attention on a prompt: every layer, every head, or their mean.

    In a notebook, end a cell with `explorer` to get the widget (prompt box, layer slider, head
    menu, heatmap). From code: `explorer.layer = 1`, `explorer.head = 2` (or "mean", or "all"
    for a grid of every head), `explorer.select(layer=1, head="mean")`, `explorer.prompt = "..."`;
    `explorer.current_weights()` is exactly the matrix shown. The widget needs a kernel; for a
    page that stays interactive without one, use `explorer.to_html(path)`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, prompt: str, *, layer: int = 0, head: int | str = 0):
        self.model = model
        self.tokenizer = tokenizer
        self._widget = None
        self._syncing = False
        self._set_prompt(prompt)  # runs the model: sets ids, tokens, attentions, note
        self._layer = _check_layer(layer, self.n_layer)
        self._head = _check_head(head, self.n_head)

    # -- state ---------------------------------------------------------------

    @property
    def n_layer(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def n_head(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def prompt(self) -> str:
        return self._prompt

    @prompt.setter
    def prompt(self, value: str) -> None:
        self._set_prompt(value)
        self._sync_widgets()
        self._redraw()

    @property
    def layer(self) -> int:
        return self._layer

    @layer.setter
    def layer(self, value: int) -> None:
        self.select(layer=value)

    @property
    def head(self) -> int | str:
        return self._head

    @head.setter
    def head(self, value: int | str) -> None:
        self.select(head=value)

    def select(self, layer: int | None = None, head: int | str | None = None) -> AttentionExplorer:
        """Show `layer` and `head` (an int, "mean" or "all"); None keeps the current one. Redraws once."""
        new_layer = self._layer if layer is None else _check_layer(layer, self.n_layer)
        new_head = self._head if head is None else _check_head(head, self.n_head)
        self._layer, self._head = new_layer, new_head
        self._sync_widgets()
        self._redraw()
        return self

    def _set_prompt(self, prompt: str) -> None:
        ids, note = _encode_prompt(self.tokenizer, prompt, _block_size(self.model), "the model's block_size")
        attentions = _attention_of(self.model, ids)
        self._prompt = prompt
        self.ids = ids
        self.tokens = token_labels(self.tokenizer, ids)
        self.note = note
        self.attentions = attentions  # (n_layer, n_head, T, T)

    def current_weights(self) -> torch.Tensor:
        """What is shown: (T, T) for one head or the mean of heads; (n_head, T, T) for "all"."""
        layer = self.attentions[self._layer]  # (H, T, T)
        if self._head == "mean":
            return layer.mean(dim=0)
        if self._head == "all":
            return layer
        return layer[self._head]

    def _title(self) -> str:
        what = {"mean": "mean of heads", "all": "all heads"}.get(self._head, f"head {self._head}")
        return f"layer {self._layer}, {what}"

    # -- drawing ---------------------------------------------------------------

    def plot(self, ax=None):
        """Draw the current selection with pyplot (a static picture); returns the Axes, or the
        array of Axes for head="all"."""
        if self._head == "all":
            if ax is not None:
                raise ValueError('head="all" draws a grid of heads in a new figure; pass ax=None or pick one head')
            plt = _import_pyplot()
            fig = plt.figure(figsize=self._figsize(), layout="constrained")
            return np.array(self._draw_all(fig))
        return attention_heatmap(self.current_weights(), self.tokens, ax=ax, title=self._title())

    def figure(self):
        """A new matplotlib Figure (not managed by pyplot) of the current selection: what the widget shows."""
        mpl = _import_matplotlib()
        fig = mpl.figure.Figure(figsize=self._figsize(), layout="constrained")
        if self._head == "all":
            self._draw_all(fig)
        else:
            ax = fig.add_subplot()
            attention_heatmap(self.current_weights(), self.tokens, ax=ax, title=self._title())
        return fig

    def _figsize(self) -> tuple[float, float]:
        T = len(self.ids)
        if self._head == "all":
            cols = min(self.n_head, 4)
            rows = math.ceil(self.n_head / cols)
            panel = min(3.6, max(2.4, 1.2 + 0.08 * T))
            return (cols * panel + 1.0, rows * panel + 0.6)
        side = min(8.0, max(4.0, 2.2 + 0.18 * T))
        return (side + 1.0, side)

    def _draw_all(self, fig) -> list:
        weights = self.attentions[self._layer].numpy()
        cols = min(self.n_head, 4)
        rows = math.ceil(self.n_head / cols)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        im = None
        T = len(self.ids)
        show_labels = T <= 24
        for h, ax in enumerate(axes):
            if h >= self.n_head:
                ax.set_visible(False)
                continue
            im = _draw_heatmap(ax, weights[h], self.tokens if show_labels else None, causal=True, vmax=1.0,
                               cmap="viridis", max_labels=24 if show_labels else 8, fontsize=6, axis_titles=False)
            ax.set_title(f"head {h}", fontsize=9)
        fig.colorbar(im, ax=list(axes[: self.n_head]), shrink=0.8, label="attention weight")
        fig.suptitle(f"layer {self._layer}: every head (rows: queries, columns: keys)", fontsize=10)
        return list(axes[: self.n_head])

    def _png(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = self.figure()
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    # -- the widget --------------------------------------------------------------

    @property
    def widget(self):
        """The ipywidgets VBox: prompt box, layer slider, head menu and the heatmap (built on first use)."""
        if self._widget is None:
            self._build_widget()
        return self._widget

    def _build_widget(self) -> None:
        w = _import_widgets()
        self._w_prompt = w.Text(value=self._prompt, description="prompt", continuous_update=False,
                                layout=w.Layout(width="90%"))
        self._w_layer = w.IntSlider(value=self._layer, min=0, max=self.n_layer - 1, step=1, description="layer",
                                    continuous_update=False)
        options = [(f"head {h}", h) for h in range(self.n_head)] + [("mean of heads", "mean"), ("all heads", "all")]
        self._w_head = w.Dropdown(options=options, value=self._head, description="head")
        self._w_out = w.Output()
        self._w_prompt.observe(self._on_prompt, names="value")
        self._w_layer.observe(self._on_selection, names="value")
        self._w_head.observe(self._on_selection, names="value")
        self._widget = w.VBox([self._w_prompt, w.HBox([self._w_layer, self._w_head]), self._w_out])
        self._redraw()

    def _sync_widgets(self) -> None:
        if self._widget is None:
            return
        self._syncing = True
        try:
            self._w_prompt.value = self._prompt
            self._w_layer.value = self._layer
            self._w_head.value = self._head
        finally:
            self._syncing = False

    def _on_selection(self, change) -> None:
        if self._syncing:
            return
        self._layer = _check_layer(self._w_layer.value, self.n_layer)
        self._head = _check_head(self._w_head.value, self.n_head)
        self._redraw()

    def _on_prompt(self, change) -> None:
        if self._syncing:
            return
        try:
            self._set_prompt(change["new"])
        except ValueError as exc:  # shown in the widget: an exception in a callback would be lost
            self._w_out.outputs = ({"output_type": "stream", "name": "stdout", "text": f"\u26a0 {exc}\n"},)
            return
        self._redraw()

    def _redraw(self) -> None:
        if self._widget is None:
            return
        outputs = []
        if self.note:
            outputs.append({"output_type": "stream", "name": "stdout", "text": self.note + "\n"})
        png = base64.b64encode(self._png()).decode("ascii")
        outputs.append({
            "output_type": "display_data",
            "data": {"image/png": png, "text/plain": f"<attention heatmap: {self._title()}>"},
            "metadata": {},
        })
        # replacing the Output's outputs works the same in ipywidgets 7 and 8, with or without a kernel
        self._w_out.outputs = tuple(outputs)

    def _ipython_display_(self) -> None:
        _import_ipython_display().display(self.widget)

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        widget = self.widget
        if hasattr(widget, "_repr_mimebundle_"):  # ipywidgets 8 (7 uses _ipython_display_ above)
            return widget._repr_mimebundle_(include=include, exclude=exclude, **kwargs)
        return {"text/plain": repr(self)}

    def __repr__(self) -> str:
        return (f"AttentionExplorer(tokens={len(self.ids)}, n_layer={self.n_layer}, n_head={self.n_head}, "
                f"layer={self._layer}, head={self._head!r})")

    # -- self-contained HTML -------------------------------------------------------

    def to_html(self, path: str | os.PathLike | None = None, *, max_tokens: int = HTML_MAX_TOKENS) -> str:
        """The explorer as self-contained HTML+JS (see `attention_html`), starting at the current
        layer and head ("all" starts at the mean); written to `path` too when given."""
        _check_max_tokens(max_tokens)
        head = "mean" if self._head == "all" else self._head
        if len(self.ids) > max_tokens:
            ids = self.ids[-max_tokens:]
            attentions = _attention_of(self.model, ids)
            note = (f"The prompt is {len(self.ids)} tokens; only the last {max_tokens} are shown "
                    f"(max_tokens={max_tokens}).")
            if self.note:
                note = self.note + " " + note
        else:
            ids, attentions, note = self.ids, self.attentions, self.note
        page = _render_html(attentions, token_labels(self.tokenizer, ids), note, self._layer, head)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page


# ---------------------------------------------------------------------------- self-contained HTML

# viridis at 0, 1/8, ..., 1 (the same colour scale as the matplotlib heatmaps)
_VIRIDIS_STOPS = [
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37),
]

# weights rounded to 4 decimals, written as short JSON numbers: 0, 0.0123, 0.5, 1
_FOUR_DECIMALS = ["0"] + [f"{k / 10000:.4f}".rstrip("0") for k in range(1, 10000)] + ["1"]


def _check_max_tokens(max_tokens: Any) -> int:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    return max_tokens


def _weights_json(attentions: torch.Tensor) -> str:
    """[layer][head][query] -> the query's row up to the diagonal (the rest is masked, 0)."""
    w = np.nan_to_num(attentions.to(torch.float64).numpy(), nan=0.0)
    q = np.rint(np.clip(w, 0.0, 1.0) * 10000).astype(np.int64)
    L, H, T, _ = q.shape
    table = _FOUR_DECIMALS
    layers = []
    for layer in range(L):
        heads = []
        for head in range(H):
            m = q[layer, head]
            rows = ["[" + ",".join([table[k] for k in m[i, : i + 1].tolist()]) + "]" for i in range(T)]
            heads.append("[" + ",".join(rows) + "]")
        layers.append("[" + ",".join(heads) + "]")
    return "[" + ",".join(layers) + "]"


def _json_for_html(obj: Any) -> str:
    """JSON that is pure ASCII and safe inside a <script> element."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
#__ID__ { display: inline-block; box-sizing: border-box; max-width: 100%; overflow-x: auto;
  background: #fff; color: #222; border: 1px solid #ddd; border-radius: 6px; padding: 8px 10px;
  margin: 4px 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
#__ID__ .mgpt-controls label { margin-right: 14px; }
#__ID__ select { font: inherit; padding: 1px 4px; }
#__ID__ .mgpt-note { color: #8a4b00; margin: 4px 0; }
#__ID__ .mgpt-info { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px;
  min-height: 1.5em; margin-top: 4px; white-space: pre-wrap; }
#__ID__ canvas { display: block; max-width: none; margin-top: 6px; cursor: crosshair; }
"""

_JS = r"""
(function () {
  "use strict";
  var ID = "__ID__";
  // find this explorer's own root: the parent of this script, or (when the script was run
  // with eval, e.g. by the classic notebook) the first root with this id not yet set up
  var root = null, me = document.currentScript;
  if (me && me.parentNode && me.parentNode.id === ID && !me.parentNode.getAttribute("data-mgpt-ready")) {
    root = me.parentNode;
  } else {
    var found = document.querySelectorAll("div[id='" + ID + "']");
    for (var n = 0; n < found.length; n++) {
      if (!found[n].getAttribute("data-mgpt-ready")) { root = found[n]; break; }
    }
  }
  if (!root) { return; }
  root.setAttribute("data-mgpt-ready", "1");

  var D = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  var T = D.tokens.length, L = D.n_layer, H = D.n_head;
  var layerSel = root.querySelector("select[data-mgpt='layer']");
  var headSel = root.querySelector("select[data-mgpt='head']");
  var canvas = root.querySelector("canvas");
  var info = root.querySelector("[data-mgpt='info']");
  var HINT = "Hover over a cell: row = query (the token attending), column = key (the token attended to).";

  function addOption(sel, value, text) {
    var o = document.createElement("option");
    o.value = String(value); o.textContent = text; sel.appendChild(o);
  }
  for (var l = 0; l < L; l++) { addOption(layerSel, l, String(l)); }
  for (var h = 0; h < H; h++) { addOption(headSel, h, String(h)); }
  addOption(headSel, "mean", "mean of heads");
  layerSel.value = String(D.layer);
  headSel.value = String(D.head);

  var STOPS = __STOPS__;
  function color(w) {
    var x = Math.max(0, Math.min(1, w)) * (STOPS.length - 1);
    var i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i, a = STOPS[i], b = STOPS[i + 1];
    return "rgb(" + Math.round(a[0] + f * (b[0] - a[0])) + "," + Math.round(a[1] + f * (b[1] - a[1])) +
      "," + Math.round(a[2] + f * (b[2] - a[2])) + ")";
  }

  function matrix() {
    var layer = D.weights[+layerSel.value];
    if (headSel.value !== "mean") { return layer[+headSel.value]; }
    var rows = [];
    for (var i = 0; i < T; i++) {
      var row = [];
      for (var j = 0; j <= i; j++) {
        var s = 0;
        for (var k = 0; k < H; k++) { s += layer[k][i][j]; }
        row.push(s / H);
      }
      rows.push(row);
    }
    return rows;
  }

  function short(label) { return label.length > 12 ? label.slice(0, 11) + "\u2026" : label; }

  // geometry (fixed for this prompt)
  var cell = Math.max(6, Math.min(28, Math.floor(480 / T)));
  var fontPx = 12, every = Math.max(1, Math.ceil((fontPx + 1) / cell));
  var ctx = canvas.getContext("2d");
  var LABEL_FONT = fontPx + "px 'DejaVu Sans Mono', Menlo, Consolas, monospace";
  var TEXT_FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif";
  ctx.font = LABEL_FONT;
  var labelW = 0;
  for (var t = 0; t < T; t++) { labelW = Math.max(labelW, ctx.measureText(short(D.tokens[t])).width); }
  var grid = T * cell;
  var left = Math.ceil(labelW) + 28, top = 10, bottom = Math.ceil(labelW) + 30;
  var barX = left + grid + 18, barW = 12, barH = Math.max(grid, 120);
  var W = Math.max(barX + barW + 44, 260), Hgt = top + Math.max(grid, barH) + bottom;
  var dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(W * dpr); canvas.height = Math.round(Hgt * dpr);
  canvas.style.width = W + "px"; canvas.style.height = Hgt + "px";
  canvas.setAttribute("data-cell", cell); canvas.setAttribute("data-left", left); canvas.setAttribute("data-top", top);
  var base = document.createElement("canvas");
  base.width = canvas.width; base.height = canvas.height;
  var current = null, hover = null;

  function drawBase() {
    current = matrix();
    var g = base.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = "#fff"; g.fillRect(0, 0, W, Hgt);
    for (var i = 0; i < T; i++) {
      for (var j = 0; j <= i; j++) {
        g.fillStyle = color(current[i][j]);
        g.fillRect(left + j * cell, top + i * cell, cell, cell);
      }
    }
    // the masked upper triangle stays empty: only the matrix outline marks it
    g.strokeStyle = "#bbb"; g.lineWidth = 1;
    g.strokeRect(left - 0.5, top - 0.5, grid + 1, grid + 1);
    g.fillStyle = "#222"; g.font = LABEL_FONT; g.textBaseline = "middle";
    for (var r = 0; r < T; r++) {
      if (r % every !== 0) { continue; }
      g.textAlign = "right";
      g.fillText(short(D.tokens[r]), left - 4, top + r * cell + cell / 2);
      g.save();
      g.translate(left + r * cell + cell / 2, top + grid + 4);
      g.rotate(-Math.PI / 2);
      g.fillText(short(D.tokens[r]), 0, 0);
      g.restore();
    }
    g.font = TEXT_FONT; g.fillStyle = "#555"; g.textAlign = "center";
    g.fillText("key (attended to)", Math.max(left + grid / 2, 70), Hgt - 8);
    g.save(); g.translate(9, top + Math.max(grid, barH) / 2); g.rotate(-Math.PI / 2);
    g.fillText("query (attending)", 0, 0); g.restore();
    // colour bar
    for (var y = 0; y < barH; y++) {
      g.fillStyle = color(1 - y / (barH - 1));
      g.fillRect(barX, top + y, barW, 1);
    }
    g.strokeStyle = "#999"; g.strokeRect(barX - 0.5, top - 0.5, barW + 1, barH + 1);
    g.fillStyle = "#222"; g.textAlign = "left";
    var ticks = [1, 0.75, 0.5, 0.25, 0];
    for (var k = 0; k < ticks.length; k++) {
      g.fillText(String(ticks[k]), barX + barW + 4, top + (1 - ticks[k]) * (barH - 1));
    }
  }

  function paint() {
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(base, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (hover) {
      ctx.strokeStyle = hover[1] <= hover[0] ? "#ff2d55" : "#999"; ctx.lineWidth = 2;
      ctx.strokeRect(left + hover[1] * cell + 1, top + hover[0] * cell + 1, cell - 2, cell - 2);
    }
  }

  function describe() {
    if (!hover) { info.textContent = HINT; return; }
    var i = hover[0], j = hover[1];
    var q = "query #" + i + " \u201c" + D.tokens[i] + "\u201d", key = "key #" + j + " \u201c" + D.tokens[j] + "\u201d";
    if (j > i) {
      info.textContent = q + " \u2192 " + key + ": masked (a token never attends to later tokens)";
    } else {
      info.textContent = q + " \u2192 " + key + ": weight " + current[i][j].toFixed(4);
    }
  }

  function onPointer(e) {
    var box = canvas.getBoundingClientRect();
    var x = (e.clientX - box.left) * (W / box.width), y = (e.clientY - box.top) * (Hgt / box.height);
    var j = Math.floor((x - left) / cell), i = Math.floor((y - top) / cell);
    var next = (i >= 0 && i < T && j >= 0 && j < T) ? [i, j] : null;
    if (String(next) !== String(hover)) { hover = next; paint(); describe(); }
  }
  canvas.addEventListener("mousemove", onPointer);
  canvas.addEventListener("click", onPointer);
  canvas.addEventListener("mouseleave", function () { hover = null; paint(); describe(); });
  function redraw() { drawBase(); paint(); describe(); }
  layerSel.addEventListener("change", redraw);
  headSel.addEventListener("change", redraw);
  redraw();
})();
"""

_TEMPLATE = """<div id="__ID__" class="mgpt-attn">
<style>__CSS__</style>
<div class="mgpt-controls"><strong>Attention</strong> &nbsp;
<label>layer <select data-mgpt="layer" aria-label="layer"></select></label>
<label>head <select data-mgpt="head" aria-label="head"></select></label>
<span style="color:#666">__SIZE__</span></div>
__NOTE__<canvas aria-label="attention heatmap"></canvas>
<div class="mgpt-info" data-mgpt="info"></div>
<script type="application/json" data-mgpt="data">__DATA__</script>
<script>__JS__</script>
</div>
"""


def _render_html(attentions: torch.Tensor, labels: list[str], note: str | None, layer: int, head: int | str) -> str:
    L, H, T, _ = attentions.shape
    meta = {"n_layer": L, "n_head": H, "layer": layer, "head": head, "tokens": labels}
    data = _json_for_html(meta)[:-1] + ',"weights":' + _weights_json(attentions) + "}"
    # the id comes from the content: two exports of the same thing are byte-identical (stable
    # notebook outputs), different explorers on one page do not collide
    uid = "mgpt-attn-" + hashlib.sha256((data + (note or "")).encode("ascii")).hexdigest()[:16]
    note_html = ""
    if note:
        escaped = _html.escape(note).encode("ascii", "xmlcharrefreplace").decode("ascii")
        note_html = f'<div class="mgpt-note">{escaped}</div>\n'
    size = f"{T} token{'s' if T != 1 else ''}, {L} layer{'s' if L != 1 else ''} &times; {H} head{'s' if H != 1 else ''}"
    stops = json.dumps([list(s) for s in _VIRIDIS_STOPS], separators=(",", ":"))
    page = (_TEMPLATE.replace("__CSS__", _CSS.strip()).replace("__JS__", _JS.replace("__STOPS__", stops))
            .replace("__NOTE__", note_html).replace("__SIZE__", size).replace("__ID__", uid))
    return page.replace("__DATA__", data)  # last: the data is never searched for placeholders


def attention_html(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    max_tokens: int = HTML_MAX_TOKENS,
    layer: int = 0,
    head: int | str = 0,
) -> str:
    """A self-contained HTML+JS attention explorer for `prompt` (one str).

    Every layer x head of weights is embedded as JSON (rounded to 4 decimals); layer and head
    menus (plus the mean of heads) redraw a heatmap on a `<canvas>`, and hovering a cell shows the
    query token, the key token and the weight. No network request, no kernel: save it as a
    `.html` file, or show it in a notebook with `show_attention_html` (it stays interactive in
    the built book). The prompt keeps its last `min(block_size, max_tokens)` tokens (noted on
    the page). The same model and prompt always give the same bytes.
    """
    _check_max_tokens(max_tokens)
    block = _block_size(model)
    limit = max_tokens if block is None else min(block, max_tokens)
    name = "max_tokens" if block is None or max_tokens < block else "the model's block_size"
    ids, note = _encode_prompt(tokenizer, prompt, limit, name)
    attentions = _attention_of(model, ids)
    layer = _check_layer(layer, attentions.shape[0])
    head = _check_head(head, attentions.shape[1], choices=("mean",))
    return _render_html(attentions, token_labels(tokenizer, ids), note, layer, head)


def show_attention_html(model: torch.nn.Module, tokenizer: Any, prompt: str, **kwargs):
    """`attention_html(...)` as an `IPython.display.HTML` object: end a notebook cell with it."""
    display = _import_ipython_display()
    return display.HTML(attention_html(model, tokenizer, prompt, **kwargs))


# ---------------------------------------------------------------------------- training curves


def _read_metrics(metrics: Any) -> list[dict]:
    if isinstance(metrics, (str, os.PathLike)):
        path = Path(metrics)
        if path.is_dir():
            path = path / "metrics.jsonl"
        lines = path.read_text("utf-8").splitlines()
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # a line still being written by a running training
                    continue
                raise ValueError(f"{path}, line {n}: not a JSON object") from None
            records.append(rec)
    elif isinstance(metrics, Iterable) and not isinstance(metrics, (bytes, Mapping)):
        records = list(metrics)
    else:
        raise TypeError(f"metrics must be a metrics.jsonl path or a list of dicts, got {type(metrics).__name__}")
    for n, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"metrics[{n}] must be a dict, got {type(rec).__name__}")
        if "step" not in rec:
            raise ValueError(f"metrics[{n}] has no 'step' (keys: {sorted(rec)})")
    return records


def _series(by_step: dict[int, dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for step, rec in by_step.items():
        if rec.get(key) is not None:
            xs.append(step)
            ys.append(float(rec[key]))
    return xs, ys


def loss_curve(metrics: Any, ax=None, *, lr: bool = True, title: str | None = None, logy: bool = False):
    """Training (line) and validation (dots) loss against the step; learning rate on a second axis.

    metrics: a `metrics.jsonl` path (or the folder holding it), or a list of dicts with `step`,
        `train_loss`, and optionally `val_loss` (only on evaluated steps) and `lr`. Records of one
        step are merged, later ones winning (a resumed run re-logging steps draws once).
    lr: draw the learning rate (dashed, right-hand axis) when the records have one.
    Returns the loss Axes (the learning-rate axis is `ax.figure.axes`' twin of it).
    """
    records = _read_metrics(metrics)
    by_step: dict[int, dict] = {}
    for rec in records:
        by_step.setdefault(rec["step"], {}).update(rec)
    by_step = dict(sorted(by_step.items()))
    train_x, train_y = _series(by_step, "train_loss")
    val_x, val_y = _series(by_step, "val_loss")
    if not train_x and not val_x:
        raise ValueError("metrics hold no 'train_loss' or 'val_loss' to plot")
    if ax is None:
        plt = _import_pyplot()
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    else:
        _import_matplotlib()
    handles = []
    if train_x:
        handles += ax.plot(train_x, train_y, color="C0", lw=1.5, label="train loss")
    if val_x:
        handles += ax.plot(val_x, val_y, "o-", color="C1", lw=1.5, ms=4, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats)")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    lr_x, lr_y = _series(by_step, "lr")
    if lr and lr_x:
        ax2 = ax.twinx()
        handles += ax2.plot(lr_x, lr_y, "--", color="0.5", lw=1, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    # above the plot: never on top of a curve (the loss falls, the learning rate rises and decays)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncol=len(handles), frameon=False, fontsize=9)
    if title is not None:
        ax.set_title(title, pad=24)
    return ax


# ---------------------------------------------------------------------------- next-token distribution


def _prob(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"


def next_token_distribution(logits: Any, tokenizer: Any, k: int = 10, ax=None, *, temperature: float = 1.0,
                            title: str | None = None):
    """Bar chart of the k most likely next tokens: softmax(logits / temperature), top k, descending.

    logits: one position's logits (V,), e.g. `model(idx)[0, -1]`. Bars are labelled with each
    token's text (spaces and newlines made visible) and its probability. Returns the Axes.
    """
    if isinstance(logits, torch.Tensor):
        x = logits.detach().to("cpu", torch.float32)
    else:
        try:
            x = torch.as_tensor(np.asarray(logits, dtype=np.float32))
        except (TypeError, ValueError):
            raise TypeError(f"logits must be a (V,) tensor or array, got {type(logits).__name__}") from None
    if x.dim() != 1 or x.numel() == 0:
        hint = "; for a model's output pick one position, e.g. logits[0, -1]" if x.dim() > 1 else ""
        raise ValueError(f"logits must be 1-D (V,) with V >= 1, got shape {tuple(x.shape)}{hint}")
    V = x.numel()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= V:
        raise ValueError(f"k must be an int in [1, {V}], got {k!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    probs = torch.softmax(x / temperature, dim=-1)
    top = probs.topk(int(k))
    values, ids = top.values.tolist(), top.indices.tolist()
    vocab = getattr(tokenizer, "vocab_size", V)
    labels = token_labels(tokenizer, [i for i in ids if i < vocab])
    labels_iter = iter(labels)
    names = [next(labels_iter) if i < vocab else f"<id {i}>" for i in ids]
    if ax is None:
        plt = _import_pyplot()
        _, ax = plt.subplots(figsize=(max(4.0, 0.55 * k + 1.5), 3.5), layout="constrained")
    else:
        _import_matplotlib()
    bars = ax.bar(range(len(values)), values, color="C0")
    ax.bar_label(bars, labels=[_prob(v) for v in values], fontsize=8, padding=1)
    ax.set_xticks(range(len(values)))
    upright = k <= 12 and max(map(len, names)) <= 4
    ax.set_xticklabels([_mpl_label(n) for n in names], fontsize=9, rotation=0 if upright else 60,
                       ha="center" if upright else "right", rotation_mode="anchor")
    ax.set_ylim(0, max(values) * 1.15 if values[0] > 0 else 1)
    ax.set_ylabel("probability")
    ax.set_xlabel("next token")
    temp = "" if temperature == 1.0 else f", temperature {temperature:g}"
    ax.set_title(title if title is not None else f"top {k} next tokens (together p = {_prob(sum(values))}{temp})",
                 fontsize=10)
    return ax
