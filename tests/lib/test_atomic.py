"""The one atomic-write helper that checkpoints, LoRA adapters and downloads share.

References: the course's crash simulator (which crashes a save at each of its file-system
operations in turn and checks the order of fsyncs and renames) and hashlib.
"""

import hashlib
import os

import pytest

from mini_gpt import atomic, course


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(atomic.TEMP_PREFIX))


def test_write_bytes_and_text_replace_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    assert atomic.write_bytes(path, b"old") == path and path.read_bytes() == b"old"
    atomic.write_bytes(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    atomic.write_text(tmp_path / "state.json", "{\"step\": \u00e9}")
    assert (tmp_path / "state.json").read_text("utf-8") == "{\"step\": \u00e9}"
    assert leftovers(tmp_path) == []


def test_a_crash_at_any_operation_leaves_the_old_file_or_the_new_one(capsys):
    old, new = b"old weights" * 100, b"new weights" * 200
    for before in (old, None):
        outcomes = course.simulate_crashes(atomic.write_bytes, before, new)
        allowed = {"the new file", "the old file" if before is not None else "no file"}
        assert len(outcomes) > 5 and {outcome for _, outcome in outcomes} <= allowed, outcomes
        assert outcomes[-1] == ("no crash", "the new file")
    # the course's own check: crashes, the order of the fsyncs and the rename, a disk that fills up
    course.check_atomic_write(atomic.write_bytes)
    assert capsys.readouterr().out.startswith("\u2713 write_bytes ")


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"old")

    def bad_download(tmp):
        tmp.write_bytes(b"<html>captive portal</html>")
        raise ValueError("sha256 mismatch")  # a writer may check what it wrote

    with pytest.raises(ValueError, match="sha256 mismatch"):
        atomic.write_with(path, bad_download)
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "adapter.json"
    atomic.write_text(path, "old")

    def refuse(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", refuse)  # looked up when called, as the crash simulator needs
    with pytest.raises(OSError, match="simulated"):
        atomic.write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_folder_swap(tmp_path):
    final = tmp_path / "ckpt-00000001"
    with atomic.folder_swap(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(atomic.TEMP_PREFIX) and not final.exists()
        atomic.write_durably(tmp / "a.txt", lambda p: p.write_text("one"))
    assert (final / "a.txt").read_text() == "one" and leftovers(tmp_path) == []
    # a body that fails leaves the folder as it was, and no half-built one
    with pytest.raises(RuntimeError, match="midway"), atomic.folder_swap(final) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("midway")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"] and (final / "a.txt").read_text() == "one"
    assert leftovers(tmp_path) == []
    # a body that succeeds replaces it whole
    with atomic.folder_swap(final) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_remove_leftovers(tmp_path):
    (tmp_path / ".tmp-ckpt-00000002-x1").mkdir()
    (tmp_path / ".tmp-ckpt-00000002-x1" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".tmp-adapter.json.x2").write_text("half")
    (tmp_path / "ckpt-00000001").mkdir()
    atomic.remove_leftovers(tmp_path, "ckpt-")  # only those of ckpt-... writes
    assert leftovers(tmp_path) == [".tmp-adapter.json.x2"]
    atomic.remove_leftovers(tmp_path)
    assert leftovers(tmp_path) == [] and (tmp_path / "ckpt-00000001").is_dir()


def test_sha256_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # read in several chunks
    (tmp_path / "big").write_bytes(data)
    assert atomic.sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert atomic.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
