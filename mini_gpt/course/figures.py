"""The course's diagrams: the drawing primitives every chapter's figure is made of (rounded boxes,
arrows, the course's colours) and `draw_pipeline()`, the picture of the whole model that most
chapters open with, their own part highlighted. A chapter's own figures live in its module."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PIPELINE_PARTS", "draw_pipeline"]

HIGHLIGHT = "#fde68a"  # the chapter's part of the pipeline
BOX = "#e8eef7"
EDGE = "#4b5563"


def pyplot():
    """matplotlib.pyplot, or an ImportError saying which extra installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the course's figures need matplotlib: pip install 'mini_gpt[book]'") from exc
    return plt


def box(ax, x, y, w, h, text, *, fill=BOX, fontsize=10.5, bold=False, edge=EDGE, lw=1.2, va="center"):
    """A rounded box from (x, y), w wide and h high, its text centred (va="top": along its top edge)."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.8", fc=fill, ec=edge, lw=lw))
    ty = y + h / 2 if va == "center" else y + h - 1.2
    ax.text(x + w / 2, ty, text, ha="center", va=va, fontsize=fontsize, fontweight="bold" if bold else "normal")


def arrow(ax, start, end, *, color=EDGE, style="-|>", connection="arc3"):
    """An arrow from `start` to `end` (style "-" for a plain line, connection for a bent one)."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=color, lw=1.3, shrinkA=0, shrinkB=0,
                                connectionstyle=connection))


def canvas(ax, figsize: tuple[float, float], xlim: tuple[float, float], ylim: tuple[float, float]):
    """`ax` (a new figure of `figsize` when None) set up for a diagram: these limits, equal scales, no axes."""
    if ax is None:
        _, ax = pyplot().subplots(figsize=figsize, layout="constrained")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


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
    ax = canvas(ax, (9, 3.5), (0, 108), (-7, 33))

    def fill(part):
        return HIGHLIGHT if part in marked else BOX

    box(ax, 0, 12, 13, 8, "text\n\u201cFirst, you\u201d", fill=fill("text"))
    box(ax, 20, 12, 13, 8, "token ids\n[18, 47, \u2026]", fill=fill("tokens"))
    # the GPT: a big box holding its four stages, top to bottom
    box(ax, 38, 0, 32, 32, "GPT", fill="#f3f4f6" if "gpt" not in marked else HIGHLIGHT, bold=True,
        va="top", fontsize=11.5)
    stages = [
        ("embeddings", "token + position embeddings"),
        ("blocks", "N \u00d7 block (attention + MLP)"),
        ("norm", "final LayerNorm"),
        ("head", "head (tied to the embeddings)"),
    ]
    for i, (part, label) in enumerate(stages):
        y = 22.5 - 6.8 * i
        box(ax, 40, y, 28, 5, label, fill=fill(part), fontsize=9.5)
        if i:
            arrow(ax, (54, y + 6.8), (54, y + 5))
    box(ax, 74, 12, 11, 8, "logits\n(B, T, V)", fill=fill("logits"))
    box(ax, 91, 21, 16, 8, "loss\n(training)", fill=fill("loss"))
    box(ax, 91, 3, 16, 8, "sampling\n(generation)", fill=fill("sampling"))
    # the tokenizer is the arrow from text to ids
    tok_color = "#b45309" if "tokenizer" in marked else EDGE
    arrow(ax, (13, 16), (20, 16), color=tok_color)
    ax.text(16.5, 20.6, "tokenizer", ha="center", va="bottom", fontsize=9, color=tok_color,
            fontweight="bold" if "tokenizer" in marked else "normal")
    arrow(ax, (33, 16), (38, 16))
    arrow(ax, (70, 16), (74, 16))
    arrow(ax, (85, 17.5), (91, 25))
    arrow(ax, (85, 14.5), (91, 7))
    # generation appends the sampled token and runs again: a loop below everything
    loop = "#9ca3af"
    ax.plot([99, 99, 26.5], [3, -2.5, -2.5], color=loop, lw=1.3, solid_joinstyle="round")
    arrow(ax, (26.5, -2.5), (26.5, 12), color=loop)
    ax.text(62, -3.3, "append the sampled token to the ids and run again", ha="center", va="top", fontsize=9,
            color="#6b7280")
    return ax
