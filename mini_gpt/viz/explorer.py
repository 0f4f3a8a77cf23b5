"""`AttentionExplorer`: a model's attention on a prompt, every layer and head, in a notebook.

The explorer holds the attention of one prompt (one forward pass) and a selection: a layer, and a
head, the mean of heads or every head in a grid. Shown in a notebook it is an ipywidgets box
(prompt box, layer slider, head menu, heatmap) that follows the selection both ways: moving the
slider changes `explorer.layer`, and `explorer.layer = 1` moves the slider. `current_weights()` is
exactly the matrix on screen. The widget needs a kernel; `to_html` gives the same explorer as the
kernel-free page of `html_export.py`, and `plot()` / `figure()` a static picture.
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..validation import check_int
from .heatmaps import attention_heatmap, draw_heatmap
from .html_export import HTML_MAX_TOKENS, render_attention_html
from .labels import token_labels
from .model_attention import attention_of, block_size_of, check_head, check_layer, encode_prompt
from .optional import import_ipython_display, import_matplotlib, import_pyplot, import_widgets


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
        self._layer = check_layer(layer, self.n_layer)
        self._head = check_head(head, self.n_head)

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
        new_layer = self._layer if layer is None else check_layer(layer, self.n_layer)
        new_head = self._head if head is None else check_head(head, self.n_head)
        self._layer, self._head = new_layer, new_head
        self._sync_widgets()
        self._redraw()
        return self

    def _set_prompt(self, prompt: str) -> None:
        ids, note = encode_prompt(self.tokenizer, prompt, block_size_of(self.model), "the model's block_size")
        attentions = attention_of(self.model, ids)
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
            plt = import_pyplot()
            fig = plt.figure(figsize=self._figsize(), layout="constrained")
            return np.array(self._draw_all(fig))
        return attention_heatmap(self.current_weights(), self.tokens, ax=ax, title=self._title())

    def figure(self):
        """A new matplotlib Figure (not managed by pyplot) of the current selection: what the widget shows."""
        mpl = import_matplotlib()
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
            im = draw_heatmap(ax, weights[h], self.tokens if show_labels else None, causal=True, vmax=1.0,
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
        w = import_widgets()
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
        self._layer = check_layer(self._w_layer.value, self.n_layer)
        self._head = check_head(self._w_head.value, self.n_head)
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
        import_ipython_display().display(self.widget)

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
        max_tokens = check_int("max_tokens", max_tokens, min=1)
        head = "mean" if self._head == "all" else self._head
        if len(self.ids) > max_tokens:
            ids = self.ids[-max_tokens:]
            attentions = attention_of(self.model, ids)
            note = (f"The prompt is {len(self.ids)} tokens; only the last {max_tokens} are shown "
                    f"(max_tokens={max_tokens}).")
            if self.note:
                note = self.note + " " + note
        else:
            ids, attentions, note = self.ids, self.attentions, self.note
        page = render_attention_html(attentions, token_labels(self.tokenizer, ids), note, self._layer, head)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page
