import hashlib

import pytest

from mini_gpt import files
from mini_gpt.files import ChecksumError, CourseFile, CourseFileNotFoundError, course_file

CONTENT = b"To be, or not to be, that is the question.\n"


@pytest.fixture
def fake_file(tmp_path, monkeypatch):
    """A course file whose 'public home' is a file:// URL, so the download path runs for real."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "hamlet.txt").write_bytes(CONTENT)
    spec = CourseFile("texts/hamlet.txt", (home / "hamlet.txt").as_uri(), hashlib.sha256(CONTENT).hexdigest())
    monkeypatch.setitem(files.FILES, spec.name, spec)
    monkeypatch.setenv("MINI_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINI_GPT_DATA", raising=False)
    monkeypatch.delenv("MINI_GPT_OFFLINE", raising=False)
    return spec, home / "hamlet.txt", tmp_path


def test_real_files_verify():
    for name, spec in files.FILES.items():
        path = course_file(name)
        assert files.sha256_of(path) == spec.sha256


def test_downloads_into_cache_and_verifies(fake_file):
    spec, source, tmp = fake_file
    path = course_file(spec.name)
    assert path == tmp / "cache" / "texts" / "hamlet.txt"
    assert path.read_bytes() == CONTENT
    source.unlink()  # the second call must use the cache, not the network
    assert course_file(spec.name) == path
    assert not list(path.parent.glob("*.part"))


def test_missing_offline_names_file_variable_and_url(fake_file, monkeypatch):
    spec, _, tmp = fake_file
    (tmp / "data").mkdir()
    monkeypatch.setenv("MINI_GPT_DATA", str(tmp / "data"))
    monkeypatch.setenv("MINI_GPT_OFFLINE", "1")
    with pytest.raises(CourseFileNotFoundError) as err:
        course_file(spec.name)
    msg = str(err.value)
    assert "texts/hamlet.txt" in msg and "MINI_GPT_DATA" in msg and spec.url in msg


def test_failed_download_is_a_clear_error(fake_file):
    spec, source, _ = fake_file
    source.unlink()  # the network is "down": the URL answers nothing
    with pytest.raises(CourseFileNotFoundError, match="download failed") as err:
        course_file(spec.name)
    assert "MINI_GPT_DATA" in str(err.value) and spec.url in str(err.value)


def test_prefers_mini_gpt_data(fake_file, monkeypatch):
    spec, source, tmp = fake_file
    data = tmp / "data" / "texts"
    data.mkdir(parents=True)
    (data / "hamlet.txt").write_bytes(CONTENT)
    source.unlink()
    monkeypatch.setenv("MINI_GPT_DATA", str(tmp / "data"))
    assert course_file(spec.name) == data / "hamlet.txt"


def test_bad_file_in_data_dir_is_refused_and_left_alone(fake_file, monkeypatch):
    spec, _, tmp = fake_file
    data = tmp / "data" / "texts"
    data.mkdir(parents=True)
    (data / "hamlet.txt").write_bytes(CONTENT[:-5])  # truncated
    monkeypatch.setenv("MINI_GPT_DATA", str(tmp / "data"))
    with pytest.raises(ChecksumError, match="sha256"):
        course_file(spec.name)
    assert (data / "hamlet.txt").read_bytes() == CONTENT[:-5]


def test_bad_download_is_not_kept(fake_file):
    spec, source, tmp = fake_file
    source.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ChecksumError, match=spec.sha256):
        course_file(spec.name)
    cache = tmp / "cache" / "texts"
    assert not cache.exists() or not any(cache.iterdir())


def test_corrupted_cache_is_replaced(fake_file):
    spec, _, tmp = fake_file
    cached = tmp / "cache" / "texts" / "hamlet.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    assert course_file(spec.name).read_bytes() == CONTENT


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown course file 'nope.txt'; known files: tinyshakespeare.txt"):
        course_file("nope.txt")
