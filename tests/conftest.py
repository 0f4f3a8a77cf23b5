"""Shared test setup: pinned threads (numbers and speed stay stable), offline GPT-2 reference."""

import hashlib
import os
import shutil

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
