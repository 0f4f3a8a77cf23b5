"""What every chapter notebook must hold besides its lesson, read from the .ipynb files:

- a first cell with the Colab badge, pointing at the notebook's own path in the course's
  repository (`mini_gpt.course.REPO`, `BRANCH`), and a title that names its file's topic and
  carries no number: the book numbers the chapters from `_toc.yml`, so one can be inserted anywhere;
- a setup cell that installs `mini_gpt` only when it is not importable, and never upgrades
  or reinstalls `torch` or `ipywidgets` (Colab ships its own; ipywidgets 7.7.1 there breaks when
  a notebook upgrades it);
- the ipywidgets state saved in the notebook, so that a kernel widget shows its last frame in the
  book and in a notebook viewer.
"""

import ast
import importlib.metadata
import json
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from mini_gpt import course

from book_toc import ROOT, TOC, chapter_files, chapter_paths, chapter_title

pytest.importorskip("IPython", reason="IPython comes with ipykernel (pip install -e '.[book]')")
from IPython.core.inputtransformer2 import TransformerManager

CHAPTERS = chapter_paths()  # in the book's order
IDS = [p.stem for p in CHAPTERS]
BADGE = re.compile(
    r"^\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
    r"\((https://colab\.research\.google\.com/github/(?P<repo>[^/]+/[^/]+)/blob/(?P<branch>[^/]+)/(?P<path>[^)]+))\)$"
)
PROTECTED = {"torch", "ipywidgets"}  # what Colab ships and a setup cell must leave alone
# pip options that replace what is installed even when it already satisfies the requirement
FORCING = {"-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed", "--upgrade-strategy"}
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_the_chapters_are_there():
    assert len(CHAPTERS) >= 5
    assert all(p.is_file() for p in CHAPTERS), [p.name for p in CHAPTERS if not p.is_file()]
    on_disk = sorted((ROOT / "chapters").glob("*.ipynb"))
    assert set(on_disk) == set(CHAPTERS), "every notebook in chapters/ is a chapter of _toc.yml, and no other"
    numbered = [p.name for p in on_disk if re.match(r"\d", p.name)]
    assert numbered == [], f"file names carry no number (the book numbers the chapters): {numbered}"


# ---------------------------------------------------------------------------- badge and title


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_first_cell_is_a_colab_badge_to_this_notebook(path):
    first = read(path)["cells"][0]
    assert first["cell_type"] == "markdown"
    line = source(first).splitlines()[0]
    m = BADGE.match(line)
    assert m, f"the first line of the first cell is not a Colab badge: {line!r}"
    assert m["repo"] == course.REPO
    assert m["branch"] == course.BRANCH
    assert m["path"] == f"chapters/{path.name}"
    assert m.group(1) == course.colab_url(path.stem)


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_title_carries_no_number_and_names_the_chapter(path):
    headings = [line for line in source(read(path)["cells"][0]).splitlines() if line.startswith("# ")]
    assert len(headings) == 1, f"the first cell needs one title (# Topic: ...), found {headings}"
    title = chapter_title(path)
    number = re.match(r"(?:chapter\s*)?\d+[.:)]?\s", title, re.IGNORECASE)  # "3. Blocks", "Chapter 3: Blocks"
    assert not number, f"the book numbers the chapters; the title carries no number: {title!r}"
    assert path.stem.replace("_", " ") in title.lower(), f"{title!r} does not name its file's topic ({path.stem})"


def test_the_chapter_parts_of_the_toc_are_numbered_and_the_other_parts_are_not():
    """Numbering counts on across the numbered parts (sphinx-multitoc-numbering), so the first
    chapter is 1 only when no page before it (setup) is numbered."""
    for part in TOC["parts"]:
        files = [entry["file"] for entry in part["chapters"]]
        if any(f in chapter_files() for f in files):
            assert part.get("numbered") is True, f"part {part['caption']!r} holds chapters but is not numbered"
            assert set(files) <= set(chapter_files()), f"part {part['caption']!r} mixes chapters and book pages"
        else:
            assert not part.get("numbered"), f"part {part['caption']!r} holds no chapter but is numbered"


def test_colab_links_agree_with_the_book_config():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["repository"]["url"] == f"https://github.com/{course.REPO}"
    assert config["repository"]["branch"] == course.BRANCH
    assert course.colab_url("causal_masks") == (
        f"{config['launch_buttons']['colab_url']}/github/{course.REPO}/blob/{course.BRANCH}/chapters/causal_masks.ipynb"
    )


# ---------------------------------------------------------------------------- the setup cell


def pip_calls(code: str) -> list[tuple[list[str], list[ast.AST]]]:
    """Every pip command in a cell (`%pip ...`, `!pip ...`, `!python -m pip ...`), as its
    arguments and the AST nodes that enclose it (to see whether it sits in `except ImportError`)."""
    python = TransformerManager().transform_cell(code)  # IPython magics -> get_ipython() calls
    tree = ast.parse(python)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("run_line_magic", "system", "getoutput", "run_cell_magic"):
            continue
        args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if node.func.attr == "run_line_magic" and args[:1] == ["pip"]:
            words = shlex.split(" ".join(args[1:]))
        else:
            words = shlex.split(" ".join(args))
            while words and (words[0] in ("python", "python3", "-m") or words[0].endswith(("/python", "/python3"))):
                words = words[1:]
            if words[:1] not in (["pip"], ["pip3"]):
                continue
            words = words[1:]
        chain, cur = [], node
        while cur in parents:
            cur = parents[cur]
            chain.append(cur)
        calls.append((words, chain))
    return calls


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = []
    for t in handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]:
        if isinstance(t, ast.Name):
            names.append(t.id)
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def check_install_words(words: list[str]) -> list[str]:
    """What is wrong with one `pip ...` command of a setup cell (empty when nothing is)."""
    problems = []
    if not words or words[0] != "install":
        return [f"only `pip install` belongs in a setup cell, got `pip {' '.join(words)}`"]
    for w in words[1:]:
        if w.split("=")[0] in FORCING:
            problems.append(f"`{w}` would upgrade or reinstall what Colab ships")
    requirements = [w for w in words[1:] if not w.startswith("-")]
    if not requirements:
        problems.append("installs nothing")
    for r in requirements:
        name = Requirement(r).name.lower().replace("_", "-") if not r.startswith(("git+", "http")) else r
        if name in PROTECTED:
            problems.append(f"installs {name} itself; Colab's must stay as it is")
    return problems


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_setup_cell_installs_mini_gpt_only_when_missing_and_never_touches_torch_or_ipywidgets(path):
    code_cells = [c for c in read(path)["cells"] if c["cell_type"] == "code"]
    installs = [(i, words, chain) for i, c in enumerate(code_cells) for words, chain in pip_calls(source(c))]
    assert len(installs) == 1, f"expected one pip install (the setup cell), found {len(installs)}"
    index, words, chain = installs[0]
    assert index == 0, "the setup cell must be the first code cell"
    assert check_install_words(words) == []
    requirement = Requirement(next(w for w in words[1:] if not w.startswith("-")))
    assert requirement.name == "mini_gpt"
    assert requirement.url == f"git+https://github.com/{course.REPO}"
    # guarded: inside `try: import mini_gpt` / `except ImportError:`
    handler = next((n for n in chain if isinstance(n, ast.ExceptHandler)), None)
    assert handler is not None and _catches_import_error(handler), "install only when `import mini_gpt` fails"
    tried = next(n for n in chain if isinstance(n, ast.Try))
    imported = {a.name for n in tried.body if isinstance(n, ast.Import) for a in n.names}
    assert "mini_gpt" in imported
    # the next code cell sets the notebook up: seeds, one thread, no progress bars
    assert "course.setup_notebook(" in source(code_cells[1])


@pytest.mark.parametrize("words", [
    ["install", "-U", "mini_gpt[book] @ git+https://github.com/mini-gpt/mini_gpt"],
    ["install", "--upgrade", "torch"],
    ["install", "-q", "ipywidgets>=8"],
    ["install", "torch==2.13.0", "mini_gpt"],
    ["install", "--force-reinstall", "mini_gpt"],
    ["uninstall", "-y", "ipywidgets"],
])
def test_the_setup_cell_check_rejects_what_would_break_colab(words):
    assert check_install_words(words) != []


def test_the_pip_parser_finds_each_form():
    code = 'try:\n    import mini_gpt\nexcept ImportError:\n    %pip install -q "mini_gpt[book] @ git+https://x/y"\n'
    ((words, _),) = pip_calls(code)
    assert words == ["install", "-q", "mini_gpt[book] @ git+https://x/y"]
    assert pip_calls("!pip install -U torch")[0][0] == ["install", "-U", "torch"]
    assert pip_calls("!python -m pip install ipywidgets")[0][0] == ["install", "ipywidgets"]
    assert pip_calls("x = 1\nprint('pip install')") == []


def test_the_extras_a_setup_cell_installs_accept_what_colab_ships():
    """`mini_gpt[book]` must not make pip replace Colab's torch or its ipywidgets 7.7.1."""
    extras = set()
    for path in CHAPTERS:
        for c in read(path)["cells"]:
            if c["cell_type"] == "code":
                for words, _ in pip_calls(source(c)):
                    for w in words[1:]:
                        if not w.startswith("-") and Requirement(w).name == "mini_gpt":
                            extras |= Requirement(w).extras
    for spec in importlib.metadata.requires("mini_gpt") or []:
        req = Requirement(spec)
        wanted = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)
        if not wanted or req.name.lower() not in PROTECTED:
            continue
        assert all(s.operator in (">=", ">") for s in req.specifier), f"{req}: no upper bound or pin"
        if req.name.lower() == "ipywidgets":
            assert req.specifier.contains(Version("7.7.1")), req


# ---------------------------------------------------------------------------- widgets and kernels


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_every_widget_output_has_its_state_saved(path):
    nb = read(path)
    views = [o["data"][WIDGET_VIEW]["model_id"] for c in nb["cells"] if c["cell_type"] == "code"
             for o in c.get("outputs", []) if WIDGET_VIEW in o.get("data", {})]
    if not views:
        return
    state = nb["metadata"].get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    assert state, f"{path.name} shows widgets but saved no widget state (save it with the notebook)"
    for model_id in views:
        assert model_id in state, f"widget {model_id} is shown but its state is not saved"
        # every widget it holds (children, layouts, styles) is saved too, so the last frame renders
        todo, seen = [model_id], set()
        while todo:
            mid = todo.pop()
            if mid in seen:
                continue
            seen.add(mid)
            assert mid in state, f"widget {model_id} refers to {mid}, whose state is not saved"
            todo += re.findall(r"IPY_MODEL_([0-9a-f]{32})", json.dumps(state[mid]["state"]))


def test_a_chapter_embeds_the_self_contained_attention_explorer():
    """The explorer that stays interactive in the book is a text/html cell output."""
    found = []
    for path in CHAPTERS:
        for c in read(path)["cells"]:
            for o in c.get("outputs", []):
                html = o.get("data", {}).get("text/html", "")
                html = "".join(html) if isinstance(html, list) else html
                if 'class="mgpt-attn"' in html and 'data-mgpt="data"' in html:
                    found.append(path.name)
    assert found, "no chapter shows mini_gpt.viz.show_attention_html(...) as a cell output"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_kernel_is_the_default_python3(path):
    spec = read(path)["metadata"]["kernelspec"]
    assert spec["name"] == "python3" and spec["language"] == "python"
