"""Training curves: train and validation loss (and the learning rate) against the step.

`loss_curve` reads what `mini_gpt.train` logs, `metrics.jsonl` (one JSON object per logged step),
or the same records as a list of dicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .optional import import_matplotlib, import_pyplot


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
        plt = import_pyplot()
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    else:
        import_matplotlib()
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
