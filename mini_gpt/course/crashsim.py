"""A file system that crashes on cue, to try saving code against the process dying mid-save.

`simulate_crashes(save, old, new)` runs `save(path, new)` once to list its file-system operations
(opening a file for writing, each write, fsync, rename, delete), then once per operation with a
crash there, and says what a restarted program would find at `path` each time. The checkpointing
chapter shows it on a naive and an atomic save, and its `check_atomic_write` is built on
`logged_save`, which also records what was fsync'ed, renamed and left behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SimulatedCrash", "simulate_crashes"]


class SimulatedCrash(BaseException):
    """Stands for the process dying in the middle of a save (kill -9, out of memory, a power cut).

    A BaseException, like KeyboardInterrupt, so that `except Exception` in the code under test
    cannot swallow it."""


class IOLog:
    """The file-system operations of one save, and the crash that stops it at operation `crash_at`.

    The model of a crash: the operation where it happens does not take place, except a write, half
    of whose bytes reach the file; after it nothing more reaches the disk (no clean-up in `except`
    or `finally`). Durability is tracked on the side: which files were fsync'ed after their last
    write (and after a flush), and which folders were fsync'ed, in what order with the renames.
    """

    def __init__(self, root: Path, crash_at: int | None = None, disk_full: bool = False) -> None:
        self.root = root
        self.crash_at = crash_at
        self.crashed = False
        self.disk_full = disk_full  # the first write gets half of its bytes out, then fails with ENOSPC
        self.ops: list[str] = []
        self.events: list[tuple] = []  # ("rename", src, dst, durable, fsync_before_flush) / ("fsync-dir", path)
        self.fd_paths: dict[int, Path] = {}
        self.raw_fds: dict[int, tuple[int, int]] = {}  # os.open'ed, not closed yet: fd -> (device, inode)
        self.files: list[_LoggedFile] = []
        self.dirty: set[Path] = set()  # changed since their last effective fsync
        self.fsync_before_flush: set[Path] = set()
        self.opened_for_writing: list[Path] = []

    def name(self, path: Path | None) -> str:
        if path is None:
            return "a file"
        if path == self.root:
            return "the folder"
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return f"{path} (outside the folder)"

    def step(self, description: str) -> bool:
        """Count one operation; True when the crash happens here (then the caller does not do it)."""
        if self.crashed:
            raise SimulatedCrash("the process is no longer running")
        self.ops.append(description)
        if len(self.ops) - 1 == self.crash_at:
            self.crashed = True
            return True
        return False

    def buffered(self, path: Path) -> bool:
        return any(f.path == path and f.pending for f in self.files)

    def write_fails(self) -> bool:
        """True once, at the first write, when the disk is full."""
        full, self.disk_full = self.disk_full, False
        return full

    def close_all(self, real_close: Callable[[int], None]) -> None:
        for f in self.files:
            with contextlib.suppress(Exception):
                f._real.close()
        for fd, identity in self.raw_fds.items():
            with contextlib.suppress(OSError):
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == identity:  # still ours, not a number reused since
                    real_close(fd)
        self.raw_fds.clear()


def _disk_full_error() -> OSError:
    import errno

    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _LoggedFile:
    """A file opened for writing while a save is logged. Bytes go to the OS at once (so a crash
    keeps what was written); `pending` counts those not yet flushed, as Python would still hold
    them in its buffer: an fsync before the flush would not cover them."""

    def __init__(self, log: IOLog, real: Any, path: Path | None, binary: bool) -> None:
        self._log, self._real, self.path, self._binary = log, real, path, binary
        self.pending = 0

    def write(self, data):
        n = len(data)
        unit = "bytes" if self._binary else "characters"
        if self._log.step(f"write {n:,} {unit} to {self._log.name(self.path)}"):
            self._write_all(data[: n // 2])
            raise SimulatedCrash("crashed in the middle of a write")
        if self._log.write_fails():
            self._write_all(data[: n // 2])
            raise _disk_full_error()
        self._write_all(data)
        self.pending += n
        if self.path is not None:
            self._log.dirty.add(self.path)
        return n

    def _write_all(self, data) -> None:
        if self._binary:
            view = memoryview(data).cast("B")
            while view:
                view = view[self._real.write(view):]
        else:
            self._real.write(data)
            self._real.flush()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._log.crashed:
            raise SimulatedCrash("the process is no longer running")
        self.pending = 0

    def close(self) -> None:
        self.pending = 0
        self._real.close()

    def fileno(self) -> int:
        return self._real.fileno()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._real, name)


@contextlib.contextmanager
def _swapped(mapping: dict, key: str, value: Any):
    old = mapping[key]
    mapping[key] = value
    try:
        yield
    finally:
        mapping[key] = old


@contextlib.contextmanager
def _logged_io(log: IOLog, fn_globals: dict | None = None):
    """Route open/os.open/os.write/os.fsync/os.replace/os.rename/deletes through `log`; also the
    `open` in `fn_globals` when it has its own (IPython puts a wrapper of io.open in the notebook's)."""
    import builtins
    import io
    import threading
    from unittest import mock

    real_open, real_os_open, real_write = io.open, os.open, os.write
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_unlink, real_rmdir, real_close = os.unlink, os.rmdir, os.close
    owner = threading.get_ident()

    def ours(real):
        """Only the thread running the save is logged: others (a notebook kernel's) go straight through."""
        def decorate(fake):
            @functools.wraps(fake)
            def call(*args, **kwargs):
                if threading.get_ident() != owner:
                    return real(*args, **kwargs)
                return fake(*args, **kwargs)
            return call
        return decorate

    def path_of(file, dir_fd=None) -> Path | None:
        if isinstance(file, int):
            return log.fd_paths.get(file)
        if dir_fd is not None:
            base = log.fd_paths.get(dir_fd)
            return None if base is None else Path(os.path.normpath(base / os.fsdecode(file)))
        return Path(os.path.abspath(os.fsdecode(os.fspath(file))))

    @ours(real_open)
    def fake_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
                  opener=None):
        if log.crashed:
            raise SimulatedCrash("the process is no longer running")
        if not any(c in mode for c in "wax+"):
            return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        binary = "b" in mode
        if opener is not None:  # e.g. tempfile: the opener's os.open is the step, and says which file
            real = real_open(file, mode, 0 if binary else buffering, encoding, errors, newline, closefd, opener)
            path = log.fd_paths.get(real.fileno())
            log.raw_fds.pop(real.fileno(), None)  # the file object owns the descriptor now
        else:
            path = path_of(file)
            empties = "w" in mode and not isinstance(file, int) and path is not None and path.exists()
            what = "create" if "x" in mode else "open"
            if log.step(f"{what} {log.name(path)} for writing" + (" (this empties it)" if empties else "")):
                raise SimulatedCrash("crashed while opening a file")
            real = real_open(file, mode, 0 if binary else buffering, encoding, errors, newline, closefd, opener)
            if isinstance(file, int) and closefd:
                log.raw_fds.pop(file, None)  # the file object owns the descriptor now
        wrapped = _LoggedFile(log, real, path, binary)
        log.files.append(wrapped)
        if path is not None:
            log.fd_paths[real.fileno()] = path
            log.opened_for_writing.append(path)
            if "w" in mode or "x" in mode:
                log.dirty.add(path)
        return wrapped

    @ours(real_os_open)
    def fake_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if log.crashed:
            raise SimulatedCrash("the process is no longer running")
        p = path_of(path, dir_fd)
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        if writing:
            what = "create" if flags & os.O_CREAT and p is not None and not p.exists() else "open"
            if log.step(f"{what} {log.name(p)} for writing"):
                raise SimulatedCrash("crashed while opening a file")
        fd = real_os_open(path, flags, mode, dir_fd=dir_fd)
        st = os.fstat(fd)
        log.raw_fds[fd] = (st.st_dev, st.st_ino)
        if p is not None:
            log.fd_paths[fd] = p
            if writing:
                log.opened_for_writing.append(p)
                log.dirty.add(p)
        return fd

    @ours(real_write)
    def fake_write(fd, data):
        p = log.fd_paths.get(fd)
        if p is None and not log.crashed:  # a descriptor opened before the save (stdout, ...)
            return real_write(fd, data)
        if log.step(f"write {len(data):,} bytes to {log.name(p)}"):
            real_write(fd, bytes(data)[: len(data) // 2])
            raise SimulatedCrash("crashed in the middle of a write")
        if log.write_fails():
            real_write(fd, bytes(data)[: len(data) // 2])
            raise _disk_full_error()
        n = real_write(fd, data)
        if p is not None:
            log.dirty.add(p)
        return n

    @ours(real_fsync)
    def fake_fsync(fd):
        if not isinstance(fd, int):
            fd = fd.fileno()
        p = log.fd_paths.get(fd)
        if p is None and not log.crashed:
            return real_fsync(fd)
        if log.step(f"fsync {log.name(p)}"):
            raise SimulatedCrash("crashed before an fsync")
        real_fsync(fd)
        if p is None:
            return
        if p.is_dir():
            log.events.append(("fsync-dir", p))
        elif log.buffered(p):
            log.fsync_before_flush.add(p)
        else:
            log.dirty.discard(p)

    def renamer(real, verb):
        @ours(real)
        def fake(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            s, d = path_of(src, src_dir_fd), path_of(dst, dst_dir_fd)
            over = "over" if d is not None and d.exists() else "to"
            if log.step(f"{verb} {log.name(s)} {over} {log.name(d)}"):
                raise SimulatedCrash("crashed before a rename")
            durable = s is not None and s not in log.dirty and not log.buffered(s)
            log.events.append(("rename", s, d, durable, s in log.fsync_before_flush))
            real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if s is not None and d is not None:
                for f in log.files:
                    if f.path == s:
                        f.path = d
                for fd, p in list(log.fd_paths.items()):
                    if p == s:
                        log.fd_paths[fd] = d
                if s in log.dirty:
                    log.dirty.discard(s)
                    log.dirty.add(d)
        return fake

    def deleter(real, what):
        @ours(real)
        def fake(path, *, dir_fd=None):
            p = path_of(path, dir_fd)
            if log.step(f"delete {what}{log.name(p)}"):
                raise SimulatedCrash("crashed before a delete")
            return real(path, dir_fd=dir_fd)
        return fake

    @ours(real_close)
    def fake_close(fd):
        log.raw_fds.pop(fd, None)
        return real_close(fd)

    patches = [
        mock.patch.object(builtins, "open", fake_open),
        mock.patch.object(io, "open", fake_open),
        mock.patch.object(os, "open", fake_os_open),
        mock.patch.object(os, "write", fake_write),
        mock.patch.object(os, "fsync", fake_fsync),
        mock.patch.object(os, "replace", renamer(real_replace, "rename")),
        mock.patch.object(os, "rename", renamer(real_rename, "rename")),
        mock.patch.object(os, "unlink", deleter(real_unlink, "")),
        mock.patch.object(os, "remove", deleter(real_unlink, "")),
        mock.patch.object(os, "rmdir", deleter(real_rmdir, "the folder ")),
        mock.patch.object(os, "close", fake_close),
    ]
    if isinstance(fn_globals, dict) and "open" in fn_globals:
        patches.append(_swapped(fn_globals, "open", fake_open))  # only that name: the namespace stays as it is
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        try:
            yield log
        finally:
            stack.close()
            log.close_all(real_close)


def _file_outcome(path: Path, old: bytes | None, new: bytes) -> str:
    """What a restarted program finds at `path`: 'the old file', 'the new file', 'no file' or 'a broken file: ...'."""
    if not path.exists():
        return "no file"
    data = path.read_bytes()
    if data == new:
        return "the new file"
    if old is not None and data == old:
        return "the old file"
    if not data:
        return "a broken file: it is empty"
    if new.startswith(data):
        return f"a broken file: the first {len(data):,} of the {len(new):,} new bytes"
    return f"a broken file: {len(data):,} bytes that are neither the old file nor the new one"


def logged_save(save: Callable, old: bytes | None, new: bytes, name: str, crash_at: int | None,
                disk_full: bool = False):
    """Run save(path, new) over a fresh file holding `old` (or no file) in an empty folder;
    -> (log, outcome, error, the names of the other files left in the folder)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mini-gpt-crash-") as tmp:
        root = Path(tmp).resolve()
        path = root / name
        if old is not None:
            path.write_bytes(old)
        log = IOLog(root, crash_at, disk_full)
        error = None
        with _logged_io(log, getattr(save, "__globals__", None)):
            with contextlib.suppress(SimulatedCrash):  # the process "died" there: nothing after it runs
                try:
                    save(path, new)
                except Exception as exc:  # after a crash, what the function does is moot: the process is gone
                    if not log.crashed:
                        error = exc
        leftovers = sorted(p.name for p in root.iterdir() if p.name != name)
        return log, _file_outcome(path, old, new), error, leftovers


def simulate_crashes(save: Callable[[Path, bytes], Any], old: bytes | None, new: bytes,
                     name: str = "model.safetensors") -> list[tuple[str, str]]:
    """Crash `save(path, new)` at each of its file-system operations in turn, over a file holding `old`.

    The save runs once without a crash, to list its operations (opening a file for writing, each
    write, fsync, rename, delete), then once per operation with a crash at that operation: the
    operation does not happen (a write gets half of its bytes out) and nothing after it does.
    Returns [(operation, what a restart finds at path)], the outcome being "the old file", "the new
    file", "no file" or "a broken file: ...", and last ("no crash", outcome).
    """
    if not callable(save):
        raise TypeError(f"save must be a function save(path, data), got {type(save).__name__}")
    if not isinstance(new, (bytes, bytearray)) or (old is not None and not isinstance(old, (bytes, bytearray))):
        raise TypeError("old and new must be bytes (old may be None: no file yet)")
    log, outcome, error, _ = logged_save(save, old, new, name, None)
    if error is not None:
        raise error
    rows = []
    for k in range(len(log.ops)):
        crash_log, crash_outcome, _, _ = logged_save(save, old, new, name, k)
        rows.append((crash_log.ops[k] if k < len(crash_log.ops) else log.ops[k], crash_outcome))
    rows.append(("no crash", outcome))
    return rows
