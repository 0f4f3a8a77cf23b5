"""Token labels a reader can read: each token's text, with whitespace and control characters shown.

`token_labels(tokenizer, ids)` gives each token's own text with newline, space and tab made
visible (⏎ ␣ ⇥): the labels of every heatmap, bar chart and HTML explorer. `mpl_label` then
makes one label safe for matplotlib, which would otherwise read '$' as mathtext and warn
("Glyph missing") about characters its font cannot draw.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch

_VISIBLE = {"\n": "\u23ce", " ": "\u2423", "\t": "\u21e5", "\r": "\\r"}  # ⏎ ␣ ⇥


def visible(text: str) -> str:
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
    return [visible(t) for t in texts]


@functools.lru_cache(maxsize=4)
def _font_charmap(family: tuple[str, ...]) -> frozenset[int] | None:
    """Code points the default matplotlib font can draw (None if it cannot be read)."""
    try:
        from matplotlib import font_manager, ft2font

        path = font_manager.findfont(font_manager.FontProperties(family=list(family)))
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # an unreadable font only loses this nicety
        return None


def mpl_label(label: str, max_len: int = 14) -> str:
    """A label matplotlib draws as plain text: '$' escaped (no mathtext), glyphs the font lacks as
    their \\u escape, e.g. \\u2581 (so drawing never warns "Glyph missing", which would land in a
    notebook's stderr). Only called once matplotlib is known to be importable."""
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
