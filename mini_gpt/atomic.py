"""Writing files so that a crash never leaves half of one: atomic replace, fsync, sha256.

`open(path, "wb").write(data)` empties the old file at once; a crash (kill -9, out of memory, a
power cut) before the last byte leaves a broken file and no old one. The safe recipe, used for
checkpoints (`checkpoint`), LoRA adapters (`lora`) and downloads (`files`):

    1. write a temp file in the same folder (os.replace is atomic only within one file system)
    2. flush and fsync it: its bytes are on the disk before any name points at them
    3. os.replace(tmp, path): `path` names the old file or the new one, never a mix
    4. fsync the folder: the rename itself survives a power cut

If anything fails before the rename (a full disk, Ctrl-C), the temp file is removed, the error
goes on, and the old file is untouched. A process killed outright leaves its temp file behind,
named `.tmp-...`: `remove_leftovers(folder)` clears them before the next write.

Every call goes through the `os` module and the builtin `open` at the moment it runs (no names
bound at import), so a test can replace them to simulate crashes (`course.simulate_crashes`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "TEMP_PREFIX",
    "write_bytes",
    "write_text",
    "write_with",
    "write_durably",
    "folder_swap",
    "remove_leftovers",
    "fsync_file",
    "fsync_folder",
    "sha256_file",
]

TEMP_PREFIX = ".tmp-"  # what a write in progress (or killed in progress) is called


def fsync_file(path: str | os.PathLike) -> None:
    """Push a closed file's bytes from the operating system's cache to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_folder(path: str | os.PathLike) -> None:
    """Make the names in a folder durable (a rename, a new file) by fsync'ing the folder itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_durably(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """`writer(path)` writes the file, then it is fsync'ed. Not atomic by itself: for files inside
    a folder that becomes visible in one step (`folder_swap`)."""
    path = Path(path)
    writer(path)
    fsync_file(path)
    return path


def write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Atomically replace `path` with what `writer(tmp)` writes to a temp path beside it.

    The writer may check what it wrote and raise (e.g. a download whose sha256 is wrong): the
    temp file is removed and the old `path` stays as it was.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        write_durably(tmp, writer)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace `path` with `data` (temp file, flush, fsync, rename, fsync the folder)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return write_with(path, write)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace `path` with `text`."""
    return write_bytes(path, text.encode(encoding))


@contextmanager
def folder_swap(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temp folder beside `path`; it takes `path`'s name only when the block
    ends without an error (a half-built folder is removed, and `path` is left as it was).

        with folder_swap(out / "ckpt-00000100") as tmp:
            write_durably(tmp / "model.safetensors", ...)

    A folder cannot be renamed over a non-empty one, so an existing `path` is removed just
    before the rename: re-saving the same name is the one moment without it.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}-"))
    try:
        yield tmp
        fsync_folder(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_folder(path.parent)


def remove_leftovers(folder: str | os.PathLike, name: str = "") -> None:
    """Delete the temp files and folders of writes into `folder` that were killed midway (only
    those of files called `name...` when given). Only one process may write there at a time."""
    for stale in Path(folder).glob(f"{TEMP_PREFIX}{name}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
