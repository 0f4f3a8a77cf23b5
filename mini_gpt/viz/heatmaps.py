"""One attention matrix as a matplotlib heatmap.

Rows are queries (the token that looks), columns are keys (the tokens it looks at). The upper
triangle, the future the causal mask hides, is left blank rather than coloured as a weight of 0,
and the colour scale is fixed to [0, vmax] so that different heads compare directly.
`draw_heatmap` draws on given Axes (the explorer's grid of heads uses it too);
`attention_heatmap` is the public picture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..validation import check_int, check_number
from .labels import mpl_label, visible
from .optional import import_matplotlib, import_pyplot


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


def draw_heatmap(ax, w: np.ndarray, labels: list[str] | None, *, causal: bool, vmax: float, cmap: str,
                 max_labels: int, fontsize: float | None, axis_titles: bool = True):
    """Draw a (T, T) matrix on `ax`; returns the AxesImage. Needs matplotlib (already imported)."""
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
        names = [mpl_label(labels[t]) for t in ticks]
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
        labels = [visible(str(t)) for t in tokens]
        if len(labels) != T:
            raise ValueError(f"tokens must hold one label per row of weights: T={T}, got {len(labels)} labels")
    vmax = check_number("vmax", vmax, min=0, min_open=True)
    max_labels = check_int("max_labels", max_labels, min=1)
    if ax is None:
        plt = import_pyplot()
        side = min(9.0, max(4.0, 2.2 + 0.2 * T))
        _, ax = plt.subplots(figsize=(side + (1.0 if colorbar else 0.0), side), layout="constrained")
    else:
        import_matplotlib()
    im = draw_heatmap(ax, w, labels, causal=causal, vmax=vmax, cmap=cmap, max_labels=max_labels, fontsize=None)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    if title is not None:
        ax.set_title(title)
    return ax
