"""The Jupyter Book: it builds without a single warning, every page of the table of contents is
there, the book numbers the chapters in the order of `_toc.yml`, and every link between the built
pages lands on a page and an anchor that exist. In the sources, a chapter is named by a link, never
by its number (so that a chapter can be inserted anywhere), and every link to a chapter or to the
repository's files names one that exists.

The book is built once per session by the `built_book` fixture (tests/conftest.py): the flags of
`make book` (`-W -n --keep-going`: every warning is an error), the sources of a fresh clone, and a
temporary output folder.
"""

import html
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from mini_gpt import course

from book_toc import ROOT, TOC, chapter_files, chapter_paths, chapter_title, toc_files, yaml

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))

# the issue's parts and the chapters in each, in order
PARTS = {
    "Foundations": ["overview", "tokens", "causal_masks", "autoregressive_loss", "transformer_blocks", "the_full_gpt"],
    "Training and sampling": ["training", "sampling", "evaluation"],
    "Beyond the basics": ["lora", "rope", "modern_blocks", "checkpointing"],
}
BOOK_PAGES = ["intro", "setup", "glossary", "common_mistakes", "references"]


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
    on_disk = {f"chapters/{p.stem}" for p in (ROOT / "chapters").glob("*.ipynb")}
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


# ---------------------------------------------------------------------------- chapters named by link
# The book numbers the chapters itself (`numbered: true` in _toc.yml). The sources name a chapter
# by a link (`[the loss chapter](autoregressive_loss.ipynb)`, {doc}`/chapters/sampling`), which
# works in the built book and in JupyterLab or Colab alike, never as "chapter 2".

PAGES = [*sorted((ROOT / "book").glob("*.md")), ROOT / "README.md", ROOT / "chapters" / "README.md"]
NUMBERED = re.compile(r"\b(?:chapters?|ch\.?)\s*\d", re.IGNORECASE)  # "chapter 2", "Chapters 5 to 9", "ch9"
OLD_NAME = re.compile(r"\b\d\d_[a-z]\w*")  # a numbered file name, "02_autoregressive_loss"
NOTEBOOK_LINK = re.compile(r"\]\(([^()\s]+?\.ipynb)(?:#[^()\s]*)?\)")  # [text](x.ipynb) or (x.ipynb#anchor)
DOC_ROLE = re.compile(r"\{doc\}`(?:[^`<]*<)?([^`<>]+)>?`")  # {doc}`/chapters/x` or {doc}`text </chapters/x>`
REPO_LINK = re.compile(rf"https://github\.com/{re.escape(course.REPO)}/(blob|tree)/{re.escape(course.BRANCH)}/([^)\s#>`\"]+)")


def sources() -> list[tuple[Path, str]]:
    """Every source a reader reads, with its text: each chapter notebook's cells (markdown, and the
    code with its comments), the book's pages and the READMEs."""
    out = []
    for path in chapter_paths():
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        out.append((path, "\n\n".join("".join(c["source"]) for c in cells)))
    return out + [(path, path.read_text(encoding="utf-8")) for path in PAGES]


def where(path: Path, text: str, match: re.Match) -> str:
    return f"{path.relative_to(ROOT)} (line {text.count(chr(10), 0, match.start()) + 1} of its text): {match[0]!r}"


def linked_pages(path: Path, text: str) -> list[tuple[str, str]]:
    """The book pages a source links to, as (toc name such as `chapters/sampling`, the link)."""
    out = []
    for m in NOTEBOOK_LINK.finditer(text):
        if not urlsplit(m[1]).scheme:
            target = (path.parent / unquote(m[1])).resolve()
            name = target.relative_to(ROOT).with_suffix("").as_posix() if ROOT in target.parents else str(target)
            out.append((name, m[0]))
    for m in DOC_ROLE.finditer(text):
        ref = m[1].strip()
        target = ROOT / ref.lstrip("/") if ref.startswith("/") else (path.parent / ref).resolve()
        out.append((target.relative_to(ROOT).as_posix() if ROOT in target.parents else str(target), m[0]))
    return out


def test_no_source_names_a_chapter_by_its_number():
    found = [where(path, text, m) for path, text in sources() for pattern in (NUMBERED, OLD_NAME)
             for m in pattern.finditer(text)]
    assert found == [], "name chapters by a link, not by number:\n" + "\n".join(found)


def test_every_link_to_a_page_of_the_book_names_one_in_the_toc():
    links = [(path, name, link) for path, text in sources() for name, link in linked_pages(path, text)]
    wrong = [f"{path.relative_to(ROOT)}: {link}" for path, name, link in links if name not in toc_files()]
    assert wrong == [], "links to pages that are not in _toc.yml:\n" + "\n".join(wrong)
    chapter_links = [name for path, name, _ in links if path.suffix == ".ipynb" and name.startswith("chapters/")]
    assert len(chapter_links) >= 3 * len(chapter_files())  # the patterns did find the chapters' links
    assert set(chapter_files()) - {chapter_files()[0]} <= set(chapter_links), "a chapter no other chapter links to"


def test_links_to_the_repository_name_its_files():
    links = [(path, m) for path, text in sources() for m in REPO_LINK.finditer(text)]
    missing = [f"{path.relative_to(ROOT)}: {m[0]}" for path, m in links
               if not ((ROOT / m[2]).is_file() if m[1] == "blob" else (ROOT / m[2]).is_dir())]
    assert len(links) > 20
    assert missing == [], "links to files or folders the repository does not hold:\n" + "\n".join(missing)


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


def test_the_book_numbers_the_chapters_in_the_order_of_the_toc(book):
    """Page title, heading and sidebar read "1. Overview: ...", "2. Causal masks: ...", ...; the
    pages that are not chapters (intro, setup, glossary, ...) carry no number."""
    sidebar = (book.html / "book" / "intro.html").read_text(encoding="utf-8")
    for number, f in enumerate(chapter_files(), 1):
        title = html.escape(chapter_title(ROOT / f"{f}.ipynb"), quote=False)
        page = (book.html / f"{f}.html").read_text(encoding="utf-8")
        assert f"<title>{number}. {title} &#8212;" in page, f"{f}: the page's title is not {number}. {title}"
        assert f'<h1><span class="section-number">{number}. </span>{title}<a class="headerlink"' in page, (
            f"{f}: the heading is not {number}. {title}")
        assert f'href="../{f}.html">{number}. {title}</a>' in sidebar, f"{f}: the sidebar does not list {number}. {title}"
    for name in BOOK_PAGES:
        page = (book.html / "book" / f"{name}.html").read_text(encoding="utf-8")
        heading = re.search(r"<h1>(.*?)</h1>", page[page.index('<article class="bd-article"'):], re.DOTALL)
        assert heading and "section-number" not in heading[1], f"book/{name}: {heading and heading[1]!r}"


def test_links_between_pages_in_the_sources_are_links_between_built_pages(book):
    """A chapter's `[text](sampling.ipynb)` and a page's {doc}`/chapters/sampling` become links to
    `sampling.html` (a link Jupyter Book could not resolve would fail the -W build, or stay a link
    to a .ipynb file that the built book does not hold)."""
    cache: dict[Path, _Links] = {}
    checked = 0
    for path, text in sources():
        if path.parent.name not in ("chapters", "book") or path.name == "README.md":
            continue
        page = book.html / path.relative_to(ROOT).with_suffix(".html")
        hrefs = {urlsplit(ref).path for attr, ref in _parse(page, cache).refs if attr == "href" and not urlsplit(ref).scheme}
        notebooks = [h for h in hrefs if h.endswith(".ipynb") and "_sources/" not in h]  # not the download button
        assert notebooks == [], f"{page.name} still links to notebooks: {notebooks}"
        for name, link in linked_pages(path, text):
            target = os.path.relpath(book.html / f"{name}.html", page.parent).replace(os.sep, "/")
            assert target in hrefs, f"{path.relative_to(ROOT)}: {link} is not a link to {target} in {page.name}"
            checked += 1
    assert checked >= 3 * len(chapter_files())


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
    html = (book.html / "chapters" / "the_full_gpt.html").read_text(encoding="utf-8")
    assert '<script type="application/vnd.jupyter.widget-state+json">' in html
    assert '<script type="application/vnd.jupyter.widget-view+json">' in html
