"""The book's table of contents (`_toc.yml`), read once for the tests in tests/book.

The chapters are the notebooks the table of contents lists, in its order; the book numbers them
itself, so the order here is the only place a chapter's number comes from.
"""

import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with jupyter-book (pip install -e '.[book]')")

ROOT = Path(__file__).resolve().parents[2]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))


def toc_files() -> list[str]:
    """Every page of the book, root first, as `_toc.yml` names it (no suffix)."""
    files = [TOC["root"]]
    for part in TOC["parts"]:
        files += [entry["file"] for entry in part["chapters"]]
    return files


def chapter_files() -> list[str]:
    """The chapters (`chapters/overview`, ...) in the book's order."""
    return [f for f in toc_files() if f.startswith("chapters/")]


def chapter_paths() -> list[Path]:
    """The chapters' notebooks, in the book's order."""
    return [ROOT / f"{f}.ipynb" for f in chapter_files()]


def chapter_title(path: Path) -> str:
    """A chapter's title: the `# ` heading of its notebook's first cell (the badge's cell)."""
    first = json.loads(path.read_text(encoding="utf-8"))["cells"][0]["source"]
    text = "".join(first) if isinstance(first, list) else first
    return next(line[2:] for line in text.splitlines() if line.startswith("# "))
