"""Finding the course's files: Tiny Shakespeare and the GPT-2 BPE vocabulary.

Where a file comes from, in order:

1. `$MINI_GPT_DATA/<name>` when the variable is set and the file is there (offline use;
   CI points it at a folder holding the files of `shared/data`);
2. the user cache (`$MINI_GPT_CACHE`, else `$XDG_CACHE_HOME/mini_gpt`, else `~/.cache/mini_gpt`);
3. a download from the file's public home into that cache.

Every file is checked against its sha256 before it is used. A file that fails the check is never
returned: a bad download is deleted, a bad cached copy is replaced, and a bad file in
`MINI_GPT_DATA` (which is the user's, so it is left alone) raises `ChecksumError`.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import atomic

DATA_ENV = "MINI_GPT_DATA"
CACHE_ENV = "MINI_GPT_CACHE"
OFFLINE_ENV = "MINI_GPT_OFFLINE"


@dataclass(frozen=True)
class CourseFile:
    name: str  # path relative to the data folder, e.g. "gpt2/r50k_base.tiktoken"
    url: str
    sha256: str


FILES: dict[str, CourseFile] = {
    f.name: f
    for f in [
        CourseFile(
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        CourseFile(
            "gpt2/vocab.bpe",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        CourseFile(
            "gpt2/encoder.json",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
        CourseFile(
            "gpt2/r50k_base.tiktoken",
            "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
    ]
}


class ChecksumError(ValueError):
    """A file's sha256 is not the one the course expects."""


class CourseFileNotFoundError(FileNotFoundError):
    """A course file is neither in MINI_GPT_DATA nor in the cache, and could not be downloaded."""


def cache_dir() -> Path:
    """The folder downloads go to (created on first use)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mini_gpt"


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of a file (what `FILES` records)."""
    return atomic.sha256_file(path)


def course_file(name: str, *, download: bool | None = None, timeout: float = 30.0) -> Path:
    """The local path of the course file `name` (a key of `FILES`), verified by sha256.

    download: whether a missing file may be fetched; default: yes unless $MINI_GPT_OFFLINE is set.
    """
    if name not in FILES:
        raise ValueError(f"unknown course file {name!r}; known files: {', '.join(FILES)}")
    spec = FILES[name]
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "") in ("", "0")

    data_dir = os.environ.get(DATA_ENV)
    if data_dir:
        local = Path(data_dir).expanduser() / spec.name
        if local.is_file():
            _verify(local, spec, where=f"{DATA_ENV}={data_dir}")
            return local

    cached = cache_dir() / spec.name
    if cached.is_file():
        if sha256_of(cached) == spec.sha256:
            return cached
        cached.unlink()  # a corrupted or truncated copy: fetch it again below

    if not download:
        raise CourseFileNotFoundError(_missing_message(spec, data_dir, reason="downloads are off"))
    try:
        _download(spec, cached, timeout)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        if isinstance(exc, ChecksumError):
            raise
        raise CourseFileNotFoundError(_missing_message(spec, data_dir, reason=f"download failed: {exc}")) from exc
    return cached


def _verify(path: Path, spec: CourseFile, where: str) -> None:
    got = sha256_of(path)
    if got != spec.sha256:
        raise ChecksumError(
            f"{path} ({where}) has sha256 {got}, but {spec.name} must have {spec.sha256}; "
            f"the file is corrupted or is a different file. Replace it with a fresh copy of {spec.url}"
        )


def _download(spec: CourseFile, dest: Path, timeout: float) -> None:
    """Download into a temp file beside `dest`, check sha256, then rename (atomic): a failed or
    bad download leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fetch(tmp: Path) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                out.write(chunk)
        _verify(tmp, spec, where=f"downloaded from {spec.url}")

    atomic.write_with(dest, fetch)


def _missing_message(spec: CourseFile, data_dir: str | None, reason: str) -> str:
    looked = f"{DATA_ENV}={data_dir} (no {spec.name} there)" if data_dir else f"{DATA_ENV} (not set)"
    return (
        f"course file {spec.name!r} not found: looked in {looked} and in the cache {cache_dir()}; "
        f"{reason}. Offline, set {DATA_ENV} to a folder holding {spec.name} "
        f"(e.g. the project's ../shared/data); online, it is downloaded from {spec.url}"
    )
