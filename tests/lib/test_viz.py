"""mini_gpt.viz: what is drawn is exactly what the model computed."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mini_gpt import (
    GPT,
    BPETokenizer,
    CharTokenizer,
    GPTConfig,
    viz,
)

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
PROMPT = "To be, or not to be:\nthat is"


def sharpen(model: GPT, scale: float = 25.0) -> GPT:
    """Scale the query/key/value weights so the random model's heads differ clearly (a freshly
    initialised GPT attends almost uniformly)."""
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return sharpen(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=3, n_embd=48))).eval()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def reference(model, tok, prompt=PROMPT):
    idx = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        return model(idx, return_attention=True)[1]  # list of (1, H, T, T)


# ---------------------------------------------------------------------------- labels


def test_token_labels_make_whitespace_visible(tok):
    assert viz.token_labels(tok, tok.encode("a b\n")) == ["a", "\u2423", "b", "\u23ce"]
    assert viz.token_labels(tok, torch.tensor(tok.encode("to"))) == ["t", "o"]
    with pytest.raises(ValueError, match=r"\[0, "):
        viz.token_labels(tok, [tok.vocab_size])


def test_token_labels_bpe():
    bpe = BPETokenizer("gpt2")
    ids = bpe.encode("Hello world\n\nthe  end\n\n")
    assert viz.token_labels(bpe, ids) == ["Hello", "\u2423world", "\u23ce", "\u23ce", "the", "\u2423", "\u2423end",
                                          "\u23ce\u23ce"]


# ---------------------------------------------------------------------------- explorer state


def test_explorer_shows_exactly_the_models_attention(model, tok):
    ref = reference(model, tok)
    ex = viz.AttentionExplorer(model, tok, PROMPT)
    T = len(tok.encode(PROMPT))
    assert ex.ids == tok.encode(PROMPT) and ex.note is None
    for layer in range(2):
        for head in range(3):
            ex.layer = layer
            ex.head = head
            shown = ex.current_weights()
            assert shown.shape == (T, T)
            assert torch.equal(shown, ref[layer][0, head])
            ex.select(layer=layer, head=head)
            assert torch.equal(ex.current_weights(), ref[layer][0, head])
        ex.select(layer=layer, head="mean")
        assert torch.equal(ex.current_weights(), ref[layer][0].mean(dim=0))
        ex.head = "all"
        assert torch.equal(ex.current_weights(), ref[layer][0])
    # the heads really differ, so picking the wrong one would be caught
    assert not torch.allclose(ref[1][0, 0], ref[1][0, 1], atol=1e-2)


def test_shown_weights_are_causal(model, tok):
    ex = viz.AttentionExplorer(model, tok, PROMPT)
    for layer in range(2):
        for head in [0, 1, 2, "mean"]:
            w = ex.select(layer=layer, head=head).current_weights()
            assert torch.all(torch.triu(w, diagonal=1) == 0)
            torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]))


def test_explorer_runs_in_eval_mode_and_restores_the_mode(tok):
    torch.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=3, n_embd=48, dropout=0.5))
    m.train()
    m.transformer.h[1].eval()  # a mixed state must come back as it was
    ex = viz.AttentionExplorer(m, tok, PROMPT)
    assert m.training and m.transformer.h[0].training and not m.transformer.h[1].training
    m.eval()
    ref = reference(m, tok)
    assert torch.equal(ex.attentions[0, 2], ref[0][0, 2])  # no dropout in what is shown


def test_prompt_longer_than_block_size_keeps_the_last_tokens(model, tok):
    long = TEXT  # 86 characters, block_size 32
    ex = viz.AttentionExplorer(model, tok, long)
    assert ex.ids == tok.encode(long)[-32:]
    assert ex.current_weights().shape == (32, 32)
    assert "block_size=32" in ex.note and str(len(long)) in ex.note
    ref = reference(model, tok, tok.decode(tok.encode(long)[-32:]))
    assert torch.equal(ex.attentions[1, 1], ref[1][0, 1])


def test_changing_the_prompt_reruns_the_model(model, tok):
    ex = viz.AttentionExplorer(model, tok, PROMPT, layer=1, head=2)
    ex.prompt = "question"
    assert ex.tokens == list("question")
    assert torch.equal(ex.current_weights(), reference(model, tok, "question")[1][0, 2])


def test_bad_arguments_name_the_argument_and_range(model, tok):
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\], got 2"):
        viz.AttentionExplorer(model, tok, PROMPT, layer=2)
    with pytest.raises(ValueError, match=r"head must be an int in \[0, 2\].*'mean'.*'all'.*got 3"):
        viz.AttentionExplorer(model, tok, PROMPT, head=3)
    with pytest.raises(ValueError, match="prompt must be a non-empty str"):
        viz.AttentionExplorer(model, tok, "")
    with pytest.raises(ValueError, match="prompt .*'Z'"):
        viz.AttentionExplorer(model, tok, "Zebra")
    with pytest.raises(TypeError, match="prompt must be a str"):
        viz.AttentionExplorer(model, tok, [1, 2])
    ex = viz.AttentionExplorer(model, tok, PROMPT, layer=1, head=1)
    for bad in (-1, 2, 1.0, True, "1"):
        with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\]"):
            ex.layer = bad
    for bad in (-1, 3, "max", 2.0):
        with pytest.raises(ValueError, match=r"head must be an int in \[0, 2\]"):
            ex.head = bad
    with pytest.raises(ValueError, match="prompt must be a non-empty str"):
        ex.prompt = ""
    assert (ex.layer, ex.head, ex.prompt) == (1, 1, PROMPT)  # a rejected value changes nothing


# ---------------------------------------------------------------------------- static heatmaps


def test_heatmap_masks_the_future(model, tok):
    w = reference(model, tok)[0][0, 1]
    labels = viz.token_labels(tok, tok.encode(PROMPT))
    ax = viz.attention_heatmap(w, labels, title="layer 0, head 1")
    img = ax.images[0].get_array()
    T = w.shape[0]
    assert isinstance(img, np.ma.MaskedArray)
    np.testing.assert_array_equal(np.ma.getmaskarray(img), np.triu(np.ones((T, T), dtype=bool), k=1))
    np.testing.assert_array_equal(img.filled(0), w.numpy())
    assert ax.images[0].cmap.get_bad()[3] == 0  # masked cells are transparent, not a colour
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_title() == "layer 0, head 1"
    assert ax.images[0].get_clim() == (0.0, 1.0)
    ax.figure.canvas.draw()  # renders without error (labels include ␣ and ⏎)


def test_heatmap_into_given_axes_and_bad_input(model, tok):
    fig, (a, b) = plt.subplots(1, 2)
    w = torch.tril(torch.ones(4, 4))
    w = w / w.sum(-1, keepdim=True)
    assert viz.attention_heatmap(w, ["a", "$", " ", "\n"], ax=b, colorbar=False) is b
    assert [t.get_text() for t in b.get_xticklabels()] == ["a", "\\$", "\u2423", "\u23ce"]  # '$' is no mathtext
    assert viz.attention_heatmap(w.numpy(), None, ax=a).get_xticklabels()[0].get_text() == "0"
    fig.canvas.draw()
    with pytest.raises(ValueError, match=r"square \(T, T\).*\(2, 3\)"):
        viz.attention_heatmap(torch.zeros(2, 3), ["a", "b"])
    with pytest.raises(ValueError, match=r"attentions\[layer\]\[0, head\]"):
        viz.attention_heatmap(torch.zeros(1, 2, 3, 3), None)
    with pytest.raises(ValueError, match="one label per row.*T=4, got 3"):
        viz.attention_heatmap(w, ["a", "b", "c"])
    with pytest.raises(TypeError, match="list of T labels"):
        viz.attention_heatmap(w, "abcd")


def test_explorer_figure_is_the_current_selection(model, tok):
    ex = viz.AttentionExplorer(model, tok, PROMPT).select(layer=1, head=2)
    img = ex.figure().axes[0].images[0].get_array()
    np.testing.assert_array_equal(img.filled(0), ex.current_weights().numpy())
    assert img.mask[0, 1] and not img.mask[1, 0]
    ex.head = "all"
    fig = ex.figure()
    images = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(images) == 3
    for h, img in enumerate(images):
        np.testing.assert_array_equal(img.filled(0), ex.attentions[1, h].numpy())
    axes = ex.plot()
    assert len(axes) == 3
    ex.head = "mean"
    ax = ex.plot()
    np.testing.assert_array_equal(ax.images[0].get_array().filled(0), ex.current_weights().numpy())


# ---------------------------------------------------------------------------- the widget


def test_widget_follows_code_and_code_follows_widget(model, tok):
    widgets = pytest.importorskip("ipywidgets")
    ex = viz.AttentionExplorer(model, tok, PROMPT)
    box = ex.widget
    assert isinstance(box, widgets.VBox) and ex.widget is box
    text, selectors, out = box.children
    slider, dropdown = selectors.children
    assert isinstance(text, widgets.Text) and isinstance(slider, widgets.IntSlider)
    assert isinstance(dropdown, widgets.Dropdown) and isinstance(out, widgets.Output)
    assert [v for _, v in dropdown.options] == [0, 1, 2, "mean", "all"]
    assert (slider.min, slider.max) == (0, 1)

    def png():
        (shown,) = [o for o in out.outputs if o["output_type"] == "display_data"]
        return shown["data"]["image/png"]

    first = png()
    ex.select(layer=1, head=2)
    assert (slider.value, dropdown.value) == (1, 2)
    second = png()
    assert second != first
    dropdown.value = "mean"  # as a user would
    assert ex.head == "mean" and png() != second
    slider.value = 0
    assert ex.layer == 0
    assert torch.equal(ex.current_weights(), reference(model, tok)[0][0].mean(0))

    text.value = "question"
    assert ex.prompt == "question" and len(ex.ids) == 8
    text.value = "Zzz"  # not in the vocabulary: a message in the widget, the old prompt kept
    assert ex.prompt == "question"
    assert "'Z'" in out.outputs[0]["text"]

    bundle = ex._repr_mimebundle_()
    if hasattr(box, "_repr_mimebundle_"):  # ipywidgets 8; 7.x (Colab) displays through _ipython_display_
        assert "application/vnd.jupyter.widget-view+json" in bundle
    assert callable(ex._ipython_display_)


def test_widget_shows_the_crop_note(model, tok):
    pytest.importorskip("ipywidgets")
    ex = viz.AttentionExplorer(model, tok, TEXT)
    outputs = ex.widget.children[-1].outputs
    assert outputs[0]["output_type"] == "stream" and "block_size=32" in outputs[0]["text"]


# ---------------------------------------------------------------------------- self-contained HTML

DATA_RE = re.compile(r'<script type="application/json" data-mgpt="data">(.*?)</script>', re.DOTALL)


def embedded(page: str) -> dict:
    (data,) = DATA_RE.findall(page)
    return json.loads(data)


def assert_no_external_requests(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"@import", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"<(link|iframe|img|object|embed)\b", page, re.IGNORECASE)
    assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|importScripts)\b", page)
    assert "http" not in page


def test_html_embeds_every_layer_and_head(model, tok):
    page = viz.attention_html(model, tok, PROMPT)
    data = embedded(page)
    ref = reference(model, tok)
    T = len(tok.encode(PROMPT))
    assert data["tokens"] == viz.token_labels(tok, tok.encode(PROMPT))
    assert (data["n_layer"], data["n_head"], data["layer"], data["head"]) == (2, 3, 0, 0)
    assert len(data["weights"]) == 2
    for layer in range(2):
        assert len(data["weights"][layer]) == 3
        for head in range(3):
            rows = data["weights"][layer][head]
            assert [len(r) for r in rows] == list(range(1, T + 1))  # the lower triangle, row by row
            full = torch.zeros(T, T, dtype=torch.float64)
            for i, row in enumerate(rows):
                full[i, : i + 1] = torch.tensor(row, dtype=torch.float64)
            torch.testing.assert_close(full, ref[layer][0, head].double(), atol=1e-4, rtol=0)
            assert all(len(str(v).split(".")[-1]) <= 4 for r in rows for v in r)  # 4 decimals at most


def test_html_is_self_contained_and_stable(model, tok, tmp_path):
    page = viz.attention_html(model, tok, PROMPT, layer=1, head="mean")
    assert_no_external_requests(page)
    assert page.isascii()  # no encoding to get wrong, saved or embedded
    assert "<canvas" in page and "<select" in page and "<script>" in page
    assert page == viz.attention_html(model, tok, PROMPT, layer=1, head="mean")  # byte-identical
    ex = viz.AttentionExplorer(model, tok, PROMPT, layer=1, head="mean")
    path = tmp_path / "attention.html"
    assert ex.to_html(path) == page
    assert path.read_text("utf-8") == page
    (uid,) = set(re.findall(r'id="(mgpt-attn-[0-9a-f]+)"', page))
    assert page.count(uid) >= 3  # the root, its scoped CSS and its script use the same id
    other = viz.attention_html(model, tok, PROMPT, layer=1, head=0)
    assert re.findall(r'id="(mgpt-attn-[0-9a-f]+)"', other)[0] != uid


def test_html_escapes_tokens_that_look_like_markup():
    tok = CharTokenizer.from_text("</script><b>&\"' abc")
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    page = viz.attention_html(m, tok, "</script><b>&")
    assert page.count("</script>") == 2  # only the data element's and the code's own end tags
    assert embedded(page)["tokens"] == list("</script><b>&")


def test_html_crops_to_max_tokens_and_block_size(model, tok):
    data = embedded(page := viz.attention_html(model, tok, TEXT, max_tokens=10))
    assert data["tokens"] == viz.token_labels(tok, tok.encode(TEXT)[-10:])
    assert "max_tokens=10" in page
    ref = reference(model, tok, TEXT[-10:])
    got = torch.tensor(data["weights"][1][2][-1], dtype=torch.float64)
    torch.testing.assert_close(got, ref[1][0, 2, -1].double(), atol=1e-4, rtol=0)
    data = embedded(page := viz.attention_html(model, tok, TEXT))
    assert len(data["tokens"]) == 32 and "block_size=32" in page
    ex = viz.AttentionExplorer(model, tok, TEXT)
    assert len(embedded(ex.to_html(max_tokens=5))["tokens"]) == 5


def test_html_bad_arguments(model, tok):
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 1\]"):
        viz.attention_html(model, tok, PROMPT, layer=2)
    with pytest.raises(ValueError, match=r"head must be an int in \[0, 2\] or 'mean', got 'all'"):
        viz.attention_html(model, tok, PROMPT, head="all")
    with pytest.raises(ValueError, match="max_tokens must be an int >= 1"):
        viz.attention_html(model, tok, PROMPT, max_tokens=0)
    with pytest.raises(ValueError, match="prompt must be a non-empty str"):
        viz.attention_html(model, tok, "")


def test_show_attention_html(model, tok):
    pytest.importorskip("IPython")
    shown = viz.show_attention_html(model, tok, PROMPT, head=1)
    assert shown.data == viz.attention_html(model, tok, PROMPT, head=1)
    assert shown._repr_html_() == shown.data


# ---------------------------------------------------------------------------- loss curves


def metrics_records():
    records = []
    for step in range(0, 101, 10):
        rec = {"step": step, "train_loss": 4.0 - step / 50, "lr": 1e-3 * min(1.0, (step + 1) / 30), "tokens_per_s": 1e4}
        if step % 50 == 0:
            rec["val_loss"] = 4.2 - step / 60
        records.append(rec)
    return records


def test_loss_curve_from_jsonl(tmp_path):
    records = metrics_records()
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in records]
    # a run stopped after logging step 90 and resumed from step 80 logs step 90 again;
    # the last line is still being written
    lines.insert(9, json.dumps({"step": 90, "train_loss": 99.0, "lr": 1.0}))
    path.write_text("\n".join(lines) + '\n{"step": 110, "train_lo')
    for source in (path, str(path), tmp_path):
        ax = viz.loss_curve(source)
        train, val = ax.lines
        np.testing.assert_array_equal(train.get_xdata(), [r["step"] for r in records])
        np.testing.assert_allclose(train.get_ydata(), [r["train_loss"] for r in records])
        np.testing.assert_array_equal(val.get_xdata(), [0, 50, 100])
        np.testing.assert_allclose(val.get_ydata(), [records[i]["val_loss"] for i in (0, 5, 10)])
        (lr_ax,) = [a for a in ax.figure.axes if a is not ax]
        np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [r["lr"] for r in records])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss", "val loss", "learning rate"]
        plt.close("all")


def test_loss_curve_from_list_without_lr_or_val():
    records = [{"step": s, "train_loss": 3.0 / (s + 1)} for s in range(5)]
    fig, ax = plt.subplots()
    assert viz.loss_curve(records, ax=ax) is ax
    assert len(ax.lines) == 1 and len(fig.axes) == 1
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [3.0 / (s + 1) for s in range(5)])
    ax2 = viz.loss_curve(metrics_records(), lr=False, logy=True, title="run")
    assert len(ax2.figure.axes) == 1 and ax2.get_yscale() == "log" and ax2.get_title() == "run"


def test_loss_curve_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no 'step'"):
        viz.loss_curve([{"train_loss": 1.0}])
    with pytest.raises(ValueError, match="no 'train_loss' or 'val_loss'"):
        viz.loss_curve([{"step": 1, "lr": 0.1}])
    with pytest.raises(TypeError, match="metrics must be"):
        viz.loss_curve(3)
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"step": 1, "train_loss": 2}\nnot json\n{"step": 2, "train_loss": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        viz.loss_curve(bad)
    with pytest.raises(FileNotFoundError):
        viz.loss_curve(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------- next-token distribution


def test_next_token_distribution_bars_are_the_softmax_top_k(model, tok):
    logits = model(torch.tensor([tok.encode(PROMPT)]))[0, -1]
    for k in (1, 5, tok.vocab_size):
        ax = viz.next_token_distribution(logits, tok, k=k)
        heights = np.array([p.get_height() for p in ax.patches])
        assert len(heights) == k
        top = torch.softmax(logits.detach().float(), -1).topk(k)
        np.testing.assert_allclose(heights, top.values.numpy(), rtol=0, atol=1e-7)
        assert np.all(np.diff(heights) <= 0) and heights.sum() <= 1 + 1e-6
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == viz.token_labels(tok, top.indices.tolist())
        plt.close("all")
    assert np.isclose(heights.sum(), 1.0, atol=1e-5)  # k = V: the whole distribution


def test_next_token_distribution_temperature_and_errors(tok):
    logits = torch.linspace(-2, 2, tok.vocab_size)
    ax = viz.next_token_distribution(logits.numpy(), tok, k=3, temperature=0.5)
    expected = torch.softmax(logits / 0.5, -1).topk(3).values.numpy()
    np.testing.assert_allclose([p.get_height() for p in ax.patches], expected, rtol=1e-6)
    assert "temperature 0.5" in ax.get_title()
    with pytest.raises(ValueError, match=rf"k must be an int in \[1, {tok.vocab_size}\]"):
        viz.next_token_distribution(logits, tok, k=0)
    with pytest.raises(ValueError, match=r"logits\[0, -1\]"):
        viz.next_token_distribution(logits[None, None], tok)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        viz.next_token_distribution(logits, tok, temperature=0)
    # ids beyond the tokenizer's vocabulary (a padded embedding table) get a placeholder label
    ax = viz.next_token_distribution(torch.cat([logits, torch.tensor([10.0])]), tok, k=2)
    assert ax.get_xticklabels()[0].get_text() == f"<id {tok.vocab_size}>"


# ---------------------------------------------------------------------------- optional dependencies


def test_import_does_not_need_matplotlib_or_ipywidgets():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('matplotlib', 'ipywidgets', 'IPython'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from mini_gpt import viz, GPT, GPTConfig, CharTokenizer\n"
        "tok = CharTokenizer.from_text('abc')\n"
        "m = GPT(GPTConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=8))\n"
        "assert 'canvas' in viz.attention_html(m, tok, 'abc')\n"
        "ex = viz.AttentionExplorer(m, tok, 'abca')\n"
        "assert ex.current_weights().shape == (4, 4)\n"
        "for call in (lambda: viz.attention_heatmap(ex.current_weights()), lambda: ex.widget):\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as e:\n"
        "        assert \"pip install 'mini_gpt[book]'\" in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
