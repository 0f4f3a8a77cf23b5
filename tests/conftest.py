"""Shared test setup: pinned threads (numbers and speed stay stable), offline GPT-2 reference,
headless Chromium for the browser tests, and the book built once per session."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# One thread: results do not depend on how the other core is loaded, and tolerances hold.
torch.set_num_threads(1)
# The library never reaches the network in tests; files come from MINI_GPT_DATA (CI) or the cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiktoken_gpt2(tmp_path_factory, monkeypatch):
    """tiktoken's own `gpt2` encoding, loaded offline from the course's vocab.bpe/encoder.json.

    tiktoken looks for a download under sha1(url) in TIKTOKEN_CACHE_DIR, so copying the files
    there gives the reference exactly as tiktoken builds it online (from a different file
    format than the one `BPETokenizer` reads).
    """
    import tiktoken
    import tiktoken.registry

    from mini_gpt.files import FILES, course_file

    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for name in ("gpt2/vocab.bpe", "gpt2/encoder.json"):
        key = hashlib.sha1(FILES[name].url.encode()).hexdigest()
        shutil.copy(course_file(name), cache / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tiktoken.registry.ENCODINGS.pop("gpt2", None)  # build it from our copies, not a cached one
    return tiktoken.get_encoding("gpt2")


# ---------------------------------------------------------------------------- headless Chromium
# The attention explorer's and the book's browser tests drive the system's Chromium through
# Selenium. Nothing is installed at run time: without the `selenium` package, a Chromium binary or
# its chromedriver those tests skip with the reason (CI installs Debian's `chromium` and
# `chromium-driver`, and sets MINI_GPT_REQUIRE_BROWSER=1 so that a missing browser fails there
# instead). MINI_GPT_CHROMIUM / MINI_GPT_CHROMEDRIVER name other binaries.


def _find_binary(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.path.exists(os.environ[env]) else None
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find_binary("MINI_GPT_CHROMIUM", ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
CHROMEDRIVER = _find_binary("MINI_GPT_CHROMEDRIVER", ("chromedriver",))


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import selenium.webdriver  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return (f"needs headless Chromium and chromedriver (apt-get install chromium chromium-driver); "
                f"found browser={CHROMIUM}, driver={CHROMEDRIVER}")
    return None


def skip_without_browser() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("MINI_GPT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MINI_GPT_REQUIRE_BROWSER=1 but the browser tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium (Selenium WebDriver), 1000 x 900 CSS pixels at scale 1, one per module."""
    skip_without_browser()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,900", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: Selenium Manager (which would download drivers) is not used
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------- the built book

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuiltBook:
    html: Path  # the HTML folder (index.html, book/, chapters/, _static/, ...)
    returncode: int
    log: str  # stdout and stderr of the build
    seconds: float
    command: list[str]


def book_build_flags() -> list[str]:
    """The flags of `make book` (`jupyter-book build . <flags>`), read from the Makefile so that the
    tests build the book exactly as the README's command does."""
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    m = re.search(r"^book:.*\n(?:\t.*\n)*?\t\S*jupyter-book build \. (.+)$", makefile, re.MULTILINE)
    assert m, "the Makefile's book target does not run `jupyter-book build . ...`"
    return m.group(1).split()


def _files_of_a_fresh_clone(root: Path) -> list[str] | None:
    """The files a clone of the working tree would hold once committed: tracked, plus untracked
    files git does not ignore. None when this is not a git checkout."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    out = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, timeout=60)
    if out.returncode != 0:
        return None
    return [p for p in out.stdout.decode().split("\0") if p and (root / p).is_file()]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BuiltBook:
    """The book built once per session, the way `make book` builds it, into a temporary folder.

    The sources are a copy of what a fresh clone holds (git's tracked and not-ignored files), so
    an ignored or stray local file cannot hide a missing one; the repository's own `_build` is
    never touched.
    """
    pytest.importorskip("jupyter_book", reason="jupyter-book is not installed (pip install -e '.[book]')")
    jupyter_book = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    assert jupyter_book, "the jupyter_book package is installed but its `jupyter-book` command is not on PATH"
    tmp = tmp_path_factory.mktemp("book")
    files = _files_of_a_fresh_clone(REPO_ROOT)
    if files is None:
        source = REPO_ROOT
    else:
        source = tmp / "src"
        for rel in files:
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, source / rel)
    out = tmp / "out"
    command = [jupyter_book, "build", str(source), "--path-output", str(out), *book_build_flags()]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NO_COLOR": "1"})
    seconds = time.perf_counter() - start
    return BuiltBook(html=out / "_build" / "html", returncode=proc.returncode,
                     log=proc.stdout + proc.stderr, seconds=seconds, command=command)


# ---------------------------------------------------------------------------- markers
# Registered in pyproject.toml. `browser` and `book` follow from what a test uses, so that
# `-m "not browser"` or `-m "not book"` never misses one; `slow` is set by hand on the tests it fits.


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)
        if "built_book" in fixtures or Path(item.fspath).parent.name == "book":
            item.add_marker(pytest.mark.book)
