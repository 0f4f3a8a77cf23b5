"""Pictures of what a GPT does: attention heatmaps, loss curves, next-token distributions.

- `attention_heatmap(weights, tokens)`: one (T, T) attention matrix as a matplotlib heatmap;
  rows are queries (the token that looks), columns are keys (the tokens it looks at), and the
  upper triangle (the future, which the causal mask hides) is left blank.  (`heatmaps.py`)
- `AttentionExplorer(model, tokenizer, prompt)`: an ipywidgets explorer (prompt box, layer and
  head selectors) that redraws the heatmap; `explorer.layer = 1; explorer.head = 2` does the
  same from code, and `explorer.current_weights()` is exactly the matrix on screen.  (`explorer.py`)
- `attention_html(model, tokenizer, prompt)` / `explorer.to_html(path)`: the same explorer as one
  self-contained piece of HTML + JavaScript (every layer and head embedded as JSON, drawn on a
  `<canvas>`, weight shown on hover). It needs no kernel and makes no network request, so it
  stays interactive in the built Jupyter Book and as a file opened from disk. Its script, style
  and template are the files in `assets/`.  (`html_export.py`)
- `loss_curve(metrics)`: train / validation loss (and learning rate) from `metrics.jsonl`.  (`curves.py`)
- `next_token_distribution(logits, tokenizer)`: the top-k next-token probabilities as bars.  (`distribution.py`)
- `token_labels(tokenizer, ids)`: each token's text with whitespace made visible, the labels of
  all of the above.  (`labels.py`)

Both explorers run the model through `model_attention.py`. matplotlib, ipywidgets and IPython are
optional (`pip install 'mini_gpt[book]'`): `optional.py` imports them inside the functions that
need them, so `import mini_gpt.viz` works without them.
"""

# HTML_MAX_TOKENS and HEAD_CHOICES are module constants mini_gpt.viz has always had (not in __all__)
from .curves import loss_curve
from .distribution import next_token_distribution
from .explorer import AttentionExplorer
from .heatmaps import attention_heatmap
from .html_export import HTML_MAX_TOKENS as HTML_MAX_TOKENS
from .html_export import attention_html, show_attention_html
from .labels import token_labels
from .model_attention import HEAD_CHOICES as HEAD_CHOICES

__all__ = [
    "AttentionExplorer",
    "attention_heatmap",
    "attention_html",
    "loss_curve",
    "next_token_distribution",
    "show_attention_html",
    "token_labels",
]
