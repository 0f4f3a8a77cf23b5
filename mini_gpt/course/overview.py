"""The overview chapter: where tokenizers cut a text (`draw_tokens`), and its one exercise,
encoding characters as ids (`check_char_encode`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..tokenizer import CharTokenizer
from .checking import Answer, Case, run_check
from .figures import pyplot

__all__ = ["draw_tokens", "check_char_encode"]


def draw_tokens(text: str, tokenizers: Mapping[str, Any], ax=None, *, colors: tuple[str, str] = ("#dbeafe", "#fde68a")):
    """One row of coloured chips per tokenizer: where each one cuts `text` into tokens.

    tokenizers: {row label: tokenizer}. Spaces are drawn as "␣", newlines as "⏎". Returns the Axes.
    """
    from ..viz import token_labels

    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty str")
    rows = [(name, token_labels(tok, tok.encode(text))) for name, tok in tokenizers.items()]
    gap = 0.35
    widths = [sum(len(t) + gap for t in labels) for _, labels in rows]
    span = max(widths)
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(min(16.0, 1.5 + 0.115 * span), 0.3 + 0.55 * len(rows)), layout="constrained")
    for r, (name, labels) in enumerate(rows):
        y = -1.6 * r
        x = 0.0
        for i, label in enumerate(labels):
            w = len(label)
            ax.add_patch(plt.Rectangle((x, y - 0.55), w, 1.1, fc=colors[i % 2], ec="#6b7280", lw=0.6))
            ax.text(x + w / 2, y, label, ha="center", va="center", family="monospace", fontsize=10)
            x += w + gap
        ax.text(-0.6, y, f"{name}\n{len(labels)} tokens", ha="right", va="center", fontsize=9)
    ax.set_xlim(-0.5, span)
    ax.set_ylim(-1.6 * (len(rows) - 1) - 0.9, 0.9)
    ax.axis("off")
    return ax


# ---------------------------------------------------------------------------- encoding characters


def _ids(answer: Answer, out: Any, where: str) -> list[int]:
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    if isinstance(out, str):
        raise answer.fail(f"returned a str on {where}; return the list of ids (ints)")
    try:
        return [int(i) for i in out]
    except (TypeError, ValueError):
        raise answer.fail(f"returned {out!r} on {where}; return a list of ints") from None


def _encode_mistakes(text: str, chars: list[str]):
    return [
        ("These are Unicode code points (ord); the id is the character's index in chars.",
         lambda: [ord(c) for c in text]),
        ("Every id is one too large: ids count from 0.", lambda: [i + 1 for i in CharTokenizer(chars).encode(text)]),
    ]


def _report_encoding(answer: Answer, got: list[int], expected: list[int], case: Case, hints: list[str]):
    chars = case.args[1]
    if not hints and chars != sorted(chars):
        hints = ["chars is not always sorted alphabetically: use its order as given (chars.index(c))."]
    hint = f" {hints[0]}" if hints else ""
    return answer.fail(f"on {case.where} expected {expected}, got {got}.{hint}")


def check_char_encode(fn: Callable[[str, list[str]], list[int]]) -> None:
    """fn(text, chars) -> list of ids, where chars is the sorted vocabulary and chars[i] has id i.

    Compared with `CharTokenizer(chars).encode(text)` on several texts.
    """
    texts = [
        ("hello", sorted(set("hello world"))),
        ("First Citizen:\nBefore we proceed", sorted(set("First Citizen:\nBefore we proceed any further"))),
        ("abcabc", list("cba")),  # not sorted: the id is the position in chars as given
        ("a", ["a"]),
    ]
    cases = [Case(f"text={text!r}, chars={''.join(chars)!r}", (text, chars)) for text, chars in texts]
    run_check(fn, "check_char_encode", cases, reference=lambda text, chars: CharTokenizer(chars).encode(text),
              convert=_ids, agree=lambda got, expected: got == expected, mistakes=_encode_mistakes,
              report=_report_encoding, passed="encodes like CharTokenizer on 4 texts")
