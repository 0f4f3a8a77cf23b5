"""The exported attention explorer (mini_gpt.viz.attention_html) in a real browser.

Headless Chromium driven by Selenium opens the HTML from disk, reads the canvas pixels, changes
the head menu and hovers over cells. The `browser` fixture (tests/conftest.py) skips these tests,
with the reason, where no Chromium, chromedriver or selenium is installed; CI installs Debian's
`chromium` and `chromium-driver`.
"""

import json
import re

import pytest
import torch

from mini_gpt import GPT, CharTokenizer, GPTConfig, viz
from mini_gpt.viz.html_export import VIRIDIS_STOPS

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
PROMPT = "To be, or not to be:\nthat is"
# the viridis stops of the page's colour scale (the page gets them in its JSON data)
STOPS = VIRIDIS_STOPS


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=3, n_embd=48)).eval()
    with torch.no_grad():
        for block in m.transformer.h:
            block.attn.c_attn.weight.mul_(25.0)  # distinct, peaked heads instead of near-uniform ones
    return m


def open_page(browser, path):
    browser.get_log("browser")  # forget messages from earlier pages
    browser.get(path.as_uri())
    browser.find_element(By.CSS_SELECTOR, "div.mgpt-attn[data-mgpt-ready]")  # the script has run


def console_errors(browser):
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def canvas_png(browser, root):
    return browser.execute_script("return arguments[0].querySelector('canvas').toDataURL();", root)


def pixel(browser, root, i, j):
    """RGBA at the centre of cell (query i, key j)."""
    return browser.execute_script(
        """
        var c = arguments[0].querySelector('canvas'), d = window.devicePixelRatio || 1;
        var cell = +c.getAttribute('data-cell'), left = +c.getAttribute('data-left'), top = +c.getAttribute('data-top');
        var x = Math.floor((left + (arguments[2] + 0.5) * cell) * d), y = Math.floor((top + (arguments[1] + 0.5) * cell) * d);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);
        """,
        root, i, j,
    )


def viridis(w):
    """The page's colour for weight w (same interpolation as its script)."""
    x = min(max(w, 0.0), 1.0) * (len(STOPS) - 1)
    i = min(len(STOPS) - 2, int(x))
    f = x - i
    return [round(a + f * (b - a)) for a, b in zip(STOPS[i], STOPS[i + 1])]


def weights_in(page):
    return json.loads(re.search(r'<script type="application/json" data-mgpt="data">(.*?)</script>', page, re.DOTALL)[1])


def assert_cells_show(browser, root, rows, T):
    for i, j in [(T - 1, 0), (T - 1, T - 1), (T // 2, 1), (5, 3), (1, 0)]:
        got = pixel(browser, root, i, j)
        want = viridis(rows[i][j])
        assert got[3] == 255 and all(abs(g - w) <= 2 for g, w in zip(got[:3], want)), (i, j, got, want)
    for i, j in [(0, 1), (0, T - 1), (T // 2, T // 2 + 1), (T - 2, T - 1)]:
        assert pixel(browser, root, i, j) == [255, 255, 255, 255], (i, j)  # the future stays empty


def test_standalone_file_draws_every_head_without_errors_or_requests(browser, model, tok, tmp_path):
    page = viz.attention_html(model, tok, PROMPT)
    data = weights_in(page)
    T = len(data["tokens"])
    path = tmp_path / "attention.html"
    path.write_text(page, encoding="utf-8")
    open_page(browser, path)
    root = browser.find_element(By.CSS_SELECTOR, "div.mgpt-attn")
    layer_sel = Select(root.find_element(By.CSS_SELECTOR, "select[data-mgpt='layer']"))
    head_sel = Select(root.find_element(By.CSS_SELECTOR, "select[data-mgpt='head']"))
    assert [o.get_attribute("value") for o in layer_sel.options] == ["0", "1"]
    assert [o.get_attribute("value") for o in head_sel.options] == ["0", "1", "2", "mean"]

    assert_cells_show(browser, root, data["weights"][0][0], T)
    seen = {canvas_png(browser, root)}
    for layer in ("0", "1"):
        layer_sel.select_by_value(layer)
        for head in ("0", "1", "2"):
            head_sel.select_by_value(head)
            assert_cells_show(browser, root, data["weights"][int(layer)][int(head)], T)
            seen.add(canvas_png(browser, root))
    assert len(seen) == 6  # every layer x head draws a different picture
    head_sel.select_by_value("mean")
    mean = [[sum(data["weights"][1][h][i][j] for h in range(3)) / 3 for j in range(i + 1)] for i in range(T)]
    assert_cells_show(browser, root, mean, T)

    assert console_errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length;") == 0


def test_hover_shows_query_key_and_weight(browser, model, tok, tmp_path):
    page = viz.attention_html(model, tok, PROMPT, layer=1, head=2)
    data = weights_in(page)
    path = tmp_path / "attention.html"
    path.write_text(page, encoding="utf-8")
    open_page(browser, path)
    root = browser.find_element(By.CSS_SELECTOR, "div.mgpt-attn")
    canvas = root.find_element(By.TAG_NAME, "canvas")
    info = root.find_element(By.CSS_SELECTOR, "[data-mgpt='info']")
    cell, left, top = (int(canvas.get_attribute(a)) for a in ("data-cell", "data-left", "data-top"))
    width, height = canvas.size["width"], canvas.size["height"]

    def hover(i, j):  # Selenium 4 offsets are from the element's centre
        x, y = left + (j + 0.5) * cell, top + (i + 0.5) * cell
        ActionChains(browser).move_to_element_with_offset(canvas, int(x - width / 2), int(y - height / 2)).perform()
        return info.text

    i, j = 7, 3
    text = hover(i, j)
    w = data["weights"][1][2][i][j]
    assert f"query #{i} \u201c{data['tokens'][i]}\u201d" in text
    assert f"key #{j} \u201c{data['tokens'][j]}\u201d" in text
    assert f"weight {w:.4f}" in text
    assert "masked" in hover(2, 9)
    assert console_errors(browser) == []


def test_many_explorers_on_one_page_as_notebooks_embed_them(browser, model, tok, tmp_path):
    """Two different exports, the same export twice, one inserted as JupyterLab does (innerHTML,
    then fresh script elements) and one whose script runs through eval (classic notebook): each
    sets itself up once and its menus redraw only its own canvas."""
    a = viz.attention_html(model, tok, PROMPT)
    b = viz.attention_html(model, tok, "Whether tis nobler", layer=1, head=1)
    c = viz.attention_html(model, tok, "the question", head="mean")
    d = viz.attention_html(model, tok, "in the mind")

    def js_string(s):
        return json.dumps(s).replace("</", "<\\/")

    harness = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>harness</title></head><body>
<h3>a</h3>{a}<h3>b</h3>{b}<h3>a again</h3>{a}
<div id="lab"></div><div id="classic"></div>
<script>
(function () {{
  // JupyterLab: set innerHTML (scripts do not run), then replace each script by a fresh copy
  var lab = document.getElementById("lab");
  lab.innerHTML = {js_string(c)};
  Array.prototype.forEach.call(lab.querySelectorAll("script"), function (old) {{
    var s = document.createElement("script");
    for (var k = 0; k < old.attributes.length; k++) {{ s.setAttribute(old.attributes[k].name, old.attributes[k].value); }}
    s.textContent = old.textContent;
    old.parentNode.replaceChild(s, old);
  }});
  // classic notebook (jQuery): the code runs through eval, so document.currentScript is not it
  var classic = document.getElementById("classic");
  classic.innerHTML = {js_string(d)};
  Array.prototype.forEach.call(classic.querySelectorAll("script:not([type])"), function (s) {{
    (0, eval)(s.textContent);
  }});
}})();
</script></body></html>"""
    path = tmp_path / "harness.html"
    path.write_text(harness, encoding="utf-8")
    open_page(browser, path)
    roots = browser.find_elements(By.CSS_SELECTOR, "div.mgpt-attn")
    assert len(roots) == 5
    assert all(r.get_attribute("data-mgpt-ready") == "1" for r in roots)
    for root, page in zip(roots, [a, b, a, c, d]):
        data = weights_in(page)
        T = len(data["tokens"])
        assert len(Select(root.find_element(By.CSS_SELECTOR, "select[data-mgpt='head']")).options) == 4
        head = data["head"]
        rows = data["weights"][data["layer"]][head] if head != "mean" else [
            [sum(data["weights"][data["layer"]][h][i][j] for h in range(3)) / 3 for j in range(i + 1)] for i in range(T)
        ]
        assert_cells_show(browser, root, rows, T)

    before = [canvas_png(browser, r) for r in roots]
    assert before[0] == before[2]  # the same export, drawn twice
    Select(roots[2].find_element(By.CSS_SELECTOR, "select[data-mgpt='head']")).select_by_value("1")
    after = [canvas_png(browser, r) for r in roots]
    assert after[2] != before[2]
    assert [after[k] for k in (0, 1, 3, 4)] == [before[k] for k in (0, 1, 3, 4)]
    assert console_errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length;") == 0
