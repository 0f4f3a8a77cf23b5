"""What the model would say next: the top-k next-token probabilities as bars."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..validation import check_int, check_number
from .labels import mpl_label, token_labels
from .optional import import_matplotlib, import_pyplot


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
    k = check_int("k", k, min=1, max=V)
    temperature = check_number("temperature", temperature, min=0, min_open=True)
    probs = torch.softmax(x / temperature, dim=-1)
    top = probs.topk(k)
    values, ids = top.values.tolist(), top.indices.tolist()
    vocab = getattr(tokenizer, "vocab_size", V)
    labels = token_labels(tokenizer, [i for i in ids if i < vocab])
    labels_iter = iter(labels)
    names = [next(labels_iter) if i < vocab else f"<id {i}>" for i in ids]
    if ax is None:
        plt = import_pyplot()
        _, ax = plt.subplots(figsize=(max(4.0, 0.55 * k + 1.5), 3.5), layout="constrained")
    else:
        import_matplotlib()
    bars = ax.bar(range(len(values)), values, color="C0")
    ax.bar_label(bars, labels=[_prob(v) for v in values], fontsize=8, padding=1)
    ax.set_xticks(range(len(values)))
    upright = k <= 12 and max(map(len, names)) <= 4
    ax.set_xticklabels([mpl_label(n) for n in names], fontsize=9, rotation=0 if upright else 60,
                       ha="center" if upright else "right", rotation_mode="anchor")
    ax.set_ylim(0, max(values) * 1.15 if values[0] > 0 else 1)
    ax.set_ylabel("probability")
    ax.set_xlabel("next token")
    temp = "" if temperature == 1.0 else f", temperature {temperature:g}"
    ax.set_title(title if title is not None else f"top {k} next tokens (together p = {_prob(sum(values))}{temp})",
                 fontsize=10)
    return ax
