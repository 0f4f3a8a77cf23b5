"""The Jupyter Book: it builds without a single warning, every page of the table of contents is
there, and every link between the built pages lands on a page and an anchor that exist.

The book is built once per session by the `built_book` fixture (tests/conftest.py): the flags of
`make book` (`-W -n --keep-going`: every warning is an error), the sources of a fresh clone, and a
temporary output folder.
"""

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from mini_gpt import course

yaml = pytest.importorskip("yaml", reason="PyYAML comes with jupyter-book (pip install -e '.[book]')")

ROOT = Path(__file__).resolve().parents[2]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))

# the issue's parts and the chapters in each, in order
PARTS = {
    "Foundations": ["00_overview", "01_causal_masks", "02_autoregressive_loss", "03_transformer_blocks",
                    "04_the_full_gpt"],
    "Training and sampling": ["05_training", "06_sampling"],
    "Beyond the basics": ["07_lora", "08_rope", "09_checkpointing"],
}
BOOK_PAGES = ["intro", "setup", "glossary", "common_mistakes", "references"]


def toc_files() -> list[str]:
    files = [TOC["root"]]
    for part in TOC["parts"]:
        files += [entry["file"] for entry in part["chapters"]]
    return files


def chapter_files() -> list[str]:
    return [f for f in toc_files() if f.startswith("chapters/")]


@pytest.fixture(scope="module")
def book(built_book):
    assert built_book.returncode == 0, f"the book does not build:\n{built_book.log[-6000:]}"
    return built_book


# ---------------------------------------------------------------------------- the sources


def test_toc_has_the_three_parts_with_their_chapters_in_order():
    parts = {part["caption"]: [Path(e["file"]).name for e in part["chapters"]] for part in TOC["parts"]}
    for caption, chapters in PARTS.items():
        assert parts.get(caption) == chapters, caption
    captions = [part["caption"] for part in TOC["parts"]]
    assert captions.index("Foundations") < captions.index("Training and sampling") < captions.index("Beyond the basics")
    assert TOC["root"] == "book/intro"
    assert {f"book/{p}" for p in BOOK_PAGES} <= set(toc_files())


def test_every_toc_entry_exists_and_every_chapter_is_in_the_toc():
    for f in toc_files():
        found = [p for p in (ROOT / f"{f}.md", ROOT / f"{f}.ipynb") if p.is_file()]
        assert len(found) == 1, f"{f} in _toc.yml: expected one of {f}.md / {f}.ipynb, found {found}"
    on_disk = {f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")}
    assert on_disk <= set(chapter_files()), f"chapters missing from _toc.yml: {sorted(on_disk - set(chapter_files()))}"


def test_config_keeps_notebooks_unexecuted_and_the_repository_in_one_place():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["only_build_toc_files"] is True
    repo = CONFIG["repository"]
    assert repo["url"] == f"https://github.com/{course.REPO}"
    assert repo["branch"] == course.BRANCH
    launch = CONFIG["launch_buttons"]
    assert launch["colab_url"] == "https://colab.research.google.com"
    assert launch.get("binderhub_url") or launch.get("jupyterhub_url")
    assert CONFIG["bibtex_bibfiles"] == ["references.bib"]


def bib_keys() -> list[str]:
    return re.findall(r"^@\w+\{([^,\s]+),", (ROOT / "references.bib").read_text(encoding="utf-8"), re.MULTILINE)


def test_bibliography_has_the_papers_the_issue_names():
    keys = bib_keys()
    assert len(keys) == len(set(keys)), "duplicate keys in references.bib"
    for key in ("vaswani2017attention", "radford2019language", "hu2022lora", "su2021roformer",
                "dao2022flashattention"):
        assert key in keys


# ---------------------------------------------------------------------------- the build


def test_build_is_clean(book):
    # -W turns every warning into a failure, and --keep-going reports them all; check both
    lines = [line for line in book.log.splitlines() if re.search(r"\bWARNING\b|\bERROR\b", line)]
    assert lines == [], "the build warned:\n" + "\n".join(lines[:40])
    assert "build succeeded" in book.log
    assert ROOT not in book.html.parents  # built into a temporary folder, not the repository's _build
    print(f"\nbook built in {book.seconds:.1f} s with: jupyter-book build ... {' '.join(book.command[5:])}")


def built_pages(book) -> list[Path]:
    return sorted(p for p in book.html.rglob("*.html") if "_static" not in p.parts)


def test_every_toc_page_is_built_and_the_count_adds_up(book):
    for f in toc_files():
        assert (book.html / f"{f}.html").is_file(), f
    content = [p for p in built_pages(book) if p.parent != book.html]  # not index/search/genindex
    assert len(content) >= len(chapter_files()) + len(BOOK_PAGES)
    print(f"\n{len(built_pages(book))} HTML pages, {len(content)} of them chapters and book pages")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str]] = []  # (attribute, value)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in ("href", "src"):
                self.refs.append((name, value))
            elif name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)


def _parse(path: Path, cache: dict) -> _Links:
    if path not in cache:
        parser = _Links()
        parser.feed(path.read_text(encoding="utf-8"))
        cache[path] = parser
    return cache[path]


def test_every_internal_link_and_anchor_resolves(book):
    cache: dict[Path, _Links] = {}
    broken, checked = [], 0
    for page in built_pages(book):
        for attr, ref in _parse(page, cache).refs:
            url = urlsplit(ref)
            if url.scheme or ref.startswith("//") or ref == "#":
                continue  # external (https:, mailto:, data:, javascript:) or a link to nowhere
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(book.html)}: {attr}={ref!r} (no file)")
                continue
            if url.fragment and target.suffix == ".html":
                ids = _parse(target, cache).ids
                if unquote(url.fragment) not in ids:
                    broken.append(f"{page.relative_to(book.html)}: {attr}={ref!r} (no id {url.fragment!r})")
    assert checked > 500  # the parser did find the links
    assert broken == [], f"{len(broken)} broken links:\n" + "\n".join(broken[:40])


def test_chapter_pages_launch_their_own_notebook(book):
    for f in chapter_files():
        html = (book.html / f"{f}.html").read_text(encoding="utf-8")
        name = Path(f).name
        assert f'href="{course.colab_url(name)}"' in html, f"{f}: no Colab launch button"
        binder = f"https://mybinder.org/v2/gh/{course.REPO}/{course.BRANCH}?urlpath=lab/tree/{f}.ipynb"
        assert f'href="{binder}"' in html, f"{f}: no Binder (JupyterLab) launch button"


def test_every_reference_is_cited_and_listed(book):
    html = (book.html / "book" / "references.html").read_text(encoding="utf-8")
    listed = re.findall(r'<div class="citation" id="id\d+" role="doc-biblioentry">', html)
    assert len(listed) == len(bib_keys()), "every entry of references.bib should be cited somewhere and listed once"
    text = html.lower()  # the bibliography style writes titles in sentence case
    for title in ("Attention Is All You Need", "Language Models are Unsupervised Multitask Learners",
                  "LoRA: Low-Rank Adaptation", "RoFormer", "FlashAttention"):
        assert title.lower() in text, title


def test_glossary_and_common_mistakes_are_real_pages(book):
    glossary = (book.html / "book" / "glossary.html").read_text(encoding="utf-8")
    terms = re.findall(r'<dt id="term-([^"]+)"', glossary)
    assert len(terms) >= 30 and {"Causal-mask", "KV-cache", "LoRA", "RoPE"} <= set(terms)
    mistakes = (book.html / "book" / "common_mistakes.html").read_text(encoding="utf-8")
    sections = re.findall(r"<h2>(.*?)<a class=\"headerlink\"", mistakes)
    assert len(sections) >= 8
    for words in ("shifted", "mask", "eval()", "square root", "tied", "zeroed", "Padding"):
        assert any(words in s for s in sections), words
    assert mistakes.count("How the course catches it.") == len(sections)


def test_the_attention_explorer_is_a_live_cell_output_in_a_chapter_page(book):
    """The self-contained HTML explorer is embedded in the page with its data and its script, and
    the widget's saved state travels with the page (rendered by the ipywidgets HTML manager)."""
    pages = [f for f in chapter_files() if 'class="mgpt-attn"' in (book.html / f"{f}.html").read_text(encoding="utf-8")]
    assert pages, "no built chapter page holds the attention explorer"
    for f in pages:
        html = (book.html / f"{f}.html").read_text(encoding="utf-8")
        assert '<script type="application/json" data-mgpt="data">' in html
        assert "data-mgpt-ready" in html  # its script, not escaped into text
        assert "&lt;canvas" not in html and "&lt;script" not in html
    html = (book.html / "chapters" / "04_the_full_gpt.html").read_text(encoding="utf-8")
    assert '<script type="application/vnd.jupyter.widget-state+json">' in html
    assert '<script type="application/vnd.jupyter.widget-view+json">' in html
