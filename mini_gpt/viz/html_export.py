"""The attention explorer as one self-contained piece of HTML + JavaScript, needing no kernel.

`attention_html(model, tokenizer, prompt)` runs the model once and writes a page fragment with
every layer and head of attention embedded as JSON, layer and head menus, and a `<canvas>` the
script draws the heatmap on (the weight shown on hover). It makes no network request, so it stays
interactive in the built Jupyter Book and as a file opened from disk.

The page is made of three files in `assets/`, shipped as package data: `explorer.html` (the
fragment, a `string.Template`), `explorer.css` (its style, a `string.Template` whose one slot is
the root's id) and `explorer.js` (plain JavaScript, filled with nothing: the template calls it
with the root's id, and it reads everything else from the JSON element). The root's id is a hash
of the content, so the same model and prompt always give the same bytes (stable notebook outputs)
and different explorers on one page never collide.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
from importlib import resources
from string import Template
from typing import Any

import numpy as np
import torch

from ..validation import check_int
from .labels import token_labels
from .model_attention import attention_of, block_size_of, check_head, check_layer, encode_prompt
from .optional import import_ipython_display

HTML_MAX_TOKENS = 64  # default context of the HTML export: size grows as layers * heads * T^2 / 2

# viridis at 0, 1/8, ..., 1: the page's colour scale, the same as the matplotlib heatmaps'
VIRIDIS_STOPS = (
    (68, 1, 84), (71, 45, 123), (59, 82, 139), (44, 114, 142), (33, 145, 140),
    (40, 174, 128), (94, 201, 98), (173, 220, 48), (253, 231, 37),
)

# weights rounded to 4 decimals, written as short JSON numbers: 0, 0.0123, 0.5, 1
_FOUR_DECIMALS = ["0"] + [f"{k / 10000:.4f}".rstrip("0") for k in range(1, 10000)] + ["1"]


@functools.lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """One of the explorer's files in `assets/` (read once per process)."""
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


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


def render_attention_html(attentions: torch.Tensor, labels: list[str], note: str | None, layer: int,
                          head: int | str) -> str:
    """The explorer's HTML for `attentions` (n_layer, n_head, T, T) with T token `labels`, starting
    at `layer` and `head` (already checked), with `note` (or None) shown above the heatmap."""
    L, H, T, _ = attentions.shape
    meta = {"n_layer": L, "n_head": H, "layer": layer, "head": head, "tokens": labels,
            "stops": [list(s) for s in VIRIDIS_STOPS]}
    # the weights are by far the largest part: written directly, not through json.dumps
    data = _json_for_html(meta)[:-1] + ',"weights":' + _weights_json(attentions) + "}"
    uid = "mgpt-attn-" + hashlib.sha256((data + (note or "")).encode("ascii")).hexdigest()[:16]
    note_html = ""
    if note:
        escaped = html.escape(note).encode("ascii", "xmlcharrefreplace").decode("ascii")
        note_html = f'<div class="mgpt-note">{escaped}</div>\n'
    size = f"{T} token{'s' if T != 1 else ''}, {L} layer{'s' if L != 1 else ''} &times; {H} head{'s' if H != 1 else ''}"
    css = Template(_asset("explorer.css")).substitute(root_id=uid)
    # one substitution pass: what is filled in (the data, the script) is never searched for slots
    return Template(_asset("explorer.html")).substitute(
        root_id=uid, css=css.strip(), size=size, note=note_html, data=data, script=_asset("explorer.js").strip(),
    )


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
    max_tokens = check_int("max_tokens", max_tokens, min=1)
    block = block_size_of(model)
    limit = max_tokens if block is None else min(block, max_tokens)
    name = "max_tokens" if block is None or max_tokens < block else "the model's block_size"
    ids, note = encode_prompt(tokenizer, prompt, limit, name)
    attentions = attention_of(model, ids)
    layer = check_layer(layer, attentions.shape[0])
    head = check_head(head, attentions.shape[1], choices=("mean",))
    return render_attention_html(attentions, token_labels(tokenizer, ids), note, layer, head)


def show_attention_html(model: torch.nn.Module, tokenizer: Any, prompt: str, **kwargs):
    """`attention_html(...)` as an `IPython.display.HTML` object: end a notebook cell with it."""
    display = import_ipython_display()
    return display.HTML(attention_html(model, tokenizer, prompt, **kwargs))
