"""The built book in a real browser (headless Chromium through Selenium; see the `browser` and
`built_book` fixtures in tests/conftest.py).

- The attention explorer that a chapter shows as a cell output is live on the built page:
  changing its layer and head menus redraws its heatmap.
- Every chapter page's first screen shows the chapter: its title in view and a screen that is not
  blank. The screenshots are written to a temporary folder, or to $MINI_GPT_SCREENSHOTS when set,
  for a person to look at.

The pages load offline: what they would fetch from CDNs (MathJax, the ipywidgets manager) fails
fast and is not needed for what is tested here.
"""

import io
import os
from pathlib import Path

import pytest

pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (it comes with matplotlib)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from book_toc import chapter_files

WIDTH, HEIGHT = 1280, 900


@pytest.fixture(scope="module")
def book(built_book):
    assert built_book.returncode == 0, f"the book does not build:\n{built_book.log[-6000:]}"
    return built_book


@pytest.fixture(scope="module")
def page_browser(browser):
    browser.set_window_size(WIDTH, HEIGHT)
    return browser


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("MINI_GPT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("screenshots")


# Messages every page of a Jupyter Book 1.0.4 build logs, whatever its content: sphinx-thebe's
# configuration script is included twice in the page head (the second `const` fails; thebe is not
# used here), and the pydata theme reports the colour mode it falls back to on a first visit.
THEME_NOISE = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode")


def script_errors(browser) -> list[str]:
    """Console errors other than the offline page's failed CDN requests and the theme's noise."""
    out = []
    for entry in browser.get_log("browser"):
        msg = entry["message"]
        if entry["level"] not in ("SEVERE", "ERROR"):
            continue
        if "net::ERR_" in msg or "Failed to load resource" in msg or any(n in msg for n in THEME_NOISE):
            continue
        out.append(msg)
    return out


def explorer_pages(book) -> list[str]:
    return [f for f in chapter_files() if 'class="mgpt-attn"' in (book.html / f"{f}.html").read_text(encoding="utf-8")]


def canvas_png(browser, root) -> str:
    return browser.execute_script("return arguments[0].querySelector('canvas').toDataURL();", root)


def canvas_colours(browser, root) -> int:
    return browser.execute_script(
        """
        var c = arguments[0].querySelector('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        var seen = new Set();
        for (var i = 0; i < d.length; i += 4) { seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]); }
        return seen.size;
        """,
        root,
    )


def test_the_explorer_on_a_built_chapter_page_redraws_for_each_layer_and_head(book, page_browser, shots):
    pages = explorer_pages(book)
    assert pages, "no built chapter page holds the attention explorer"
    browser = page_browser
    for f in pages:
        browser.get_log("browser")
        browser.get((book.html / f"{f}.html").as_uri())
        roots = browser.find_elements(By.CSS_SELECTOR, "div.mgpt-attn")
        assert roots, f"{f}: the explorer is not in the page"
        for root in roots:
            assert root.get_attribute("data-mgpt-ready") == "1", f"{f}: the explorer's script did not run"
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", root)
            canvas = root.find_element(By.TAG_NAME, "canvas")
            assert canvas.is_displayed() and canvas.size["width"] > 100 and canvas.size["height"] > 100
            assert canvas_colours(browser, root) > 20  # a heatmap, not an empty canvas
            layer = Select(root.find_element(By.CSS_SELECTOR, "select[data-mgpt='layer']"))
            head = Select(root.find_element(By.CSS_SELECTOR, "select[data-mgpt='head']"))
            layers = [o.get_attribute("value") for o in layer.options]
            heads = [o.get_attribute("value") for o in head.options]
            assert len(layers) >= 2 and len(heads) >= 2

            seen = {canvas_png(browser, root)}
            for lv, hv in [(layers[-1], heads[0]), (layers[-1], heads[1]), (layers[0], heads[1])]:
                layer.select_by_value(lv)
                head.select_by_value(hv)
                seen.add(canvas_png(browser, root))
            assert len(seen) == 4, f"{f}: changing the layer and head did not redraw a different heatmap"
            root.screenshot(str(shots / f"explorer_{Path(f).name}.png"))
        assert script_errors(browser) == []


@pytest.mark.parametrize("f", chapter_files(), ids=[Path(f).name for f in chapter_files()])
def test_each_chapter_page_first_screen_shows_the_chapter(book, page_browser, shots, f):
    browser = page_browser
    browser.get_log("browser")
    browser.get((book.html / f"{f}.html").as_uri())
    h1 = browser.find_element(By.CSS_SELECTOR, "article.bd-article h1")
    number = chapter_files().index(f) + 1  # the book numbers the chapters in the order of _toc.yml
    assert h1.text.startswith(f"{number}. "), h1.text
    assert h1.is_displayed() and 0 <= h1.location["y"] < HEIGHT - 100, "the title is not on the first screen"

    png = browser.get_screenshot_as_png()
    (shots / f"{Path(f).name}.png").write_bytes(png)
    screen = Image.open(io.BytesIO(png)).convert("RGB")
    assert screen.size[0] >= WIDTH * 0.9 and screen.size[1] >= HEIGHT * 0.5
    # the chapter's own column (not the sidebars) on the first screen: title, text, code
    article = browser.find_element(By.CSS_SELECTOR, "article.bd-article")
    box = article.rect
    left, top = max(0, int(box["x"])), max(0, int(box["y"]))
    right, bottom = min(screen.size[0], int(box["x"] + box["width"])), screen.size[1]
    assert right - left > 400 and bottom - top > 300, f"{f}: the chapter's column is not on the first screen"
    counts = screen.crop((left, top, right, bottom)).getcolors(maxcolors=(right - left) * (bottom - top))
    total = sum(n for n, _ in counts)
    not_white = sum(n for n, rgb in counts if min(rgb) < 235) / total
    print(f"\n{f}: first screen {not_white:.1%} not white, {len(counts)} colours")
    assert not_white > 0.05, f"{f}: the chapter's first screen is almost blank ({not_white:.1%} not white)"
    assert len(counts) > 100, f"{f}: the chapter's first screen has only {len(counts)} colours"
    # the sidebar lists every chapter, and the page text is rendered, not raw markup
    sidebar = browser.find_element(By.CSS_SELECTOR, "nav.bd-docs-nav").text
    assert "Foundations" in sidebar and "Beyond the basics" in sidebar
    body = browser.find_element(By.CSS_SELECTOR, "article.bd-article").text
    assert "```" not in body and "{doc}" not in body
    assert script_errors(browser) == []
