"""mini_gpt.bpe: byte-level BPE trained by hand, and GPT-2's merges equal to tiktoken."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mini_gpt.bpe import ENDOFTEXT, BytePairTokenizer, gpt2_bytes_to_unicode, pretokenize, train_bpe
from mini_gpt.data import load_text

# GPT-2's pre-tokenizer, written out again here so that the references below do not share it with the library
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

HARD = [
    "",
    "Hello world",
    "naïve café — déjà vu, Straße, Ελληνικά, русский, 日本語のテキスト, العربية, हिन्दी, 한국어",
    "emoji 🤖🧠🎭 family 👨‍👩‍👧‍👦 flag 🇫🇷 skin tone 👍🏽 and a lone 🦄",
    "digits 0 12 345 6789 3.14159 1,000,000 2024-01-01 ٣٤٥ ¾ Ⅻ",
    "'s 't 're 've 'm 'll 'd they're we've I'M 'S 'Re can't '' 'x",
    "  leading spaces\n\n\ttabs\r\nCRLF   trailing spaces   ",
    " \t \n \u00a0\u2028\u3000 mixed unicode whitespace \x0b\x0c\x85 ",
    "\n\n\n\n",
    "          ten spaces then text",
    "text then a tab\t",
    "First document.<|endoftext|>Second document.",
    "<|endoftext|>",
    "control \x00\x01\x1f\x7f and \ufeff BOM \ufffd replacement",
    "a\ud800b lone surrogates \udfff and a pair \ud83d\ude00",
]


@pytest.fixture(scope="module")
def gpt2():
    return BytePairTokenizer.from_gpt2()


@pytest.fixture(scope="module")
def shakespeare():
    return load_text("shakespeare")


@pytest.fixture(scope="module")
def small_text(shakespeare):
    return shakespeare[:10_000] + " naïve café 日本語 🤖🤖 aaaa aaaaaa 1234 1234"


@pytest.fixture(scope="module")
def trained(small_text):
    return train_bpe(small_text, 400)


# ---------------------------------------------------------------------------- references written here


def merge_reference(ids, pair, new_id):
    out, skip = [], False
    for k, i in enumerate(ids):
        if skip:  # the second half of a pair just fused
            skip = False
        elif k + 1 < len(ids) and (i, ids[k + 1]) == pair:
            out.append(new_id)
            skip = True
        else:
            out.append(i)
    return out


def train_reference(text, n_merges):
    """Recount every pair of every chunk (not deduplicated) before each merge; the most frequent
    pair wins, ties to the smallest (a, b)."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(PATTERN, text)]
    merges = []
    for new_id in range(256, 256 + n_merges):
        counts = Counter(p for c in chunks for p in zip(c, c[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append((best, new_id))
        chunks = [merge_reference(c, best, new_id) for c in chunks]
    return merges


# ---------------------------------------------------------------------------- GPT-2 equals tiktoken


def test_gpt2_equals_tiktoken_on_all_of_shakespeare(gpt2, tiktoken_gpt2, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert ids == tiktoken_gpt2.encode(shakespeare, disallowed_special=())
    assert 300_000 < len(ids) < 400_000  # ~338k GPT-2 tokens
    assert gpt2.decode(ids) == shakespeare
    gpt2.clear_cache()  # the same ids from a cold cache
    prefix = shakespeare[:5000]
    assert gpt2.encode(prefix) == tiktoken_gpt2.encode(prefix)


def test_gpt2_equals_tiktoken_on_hard_strings(gpt2, tiktoken_gpt2):
    for text in HARD:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, disallowed_special=()), text
        assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all"), text
        if "\ud800" not in text:  # lone surrogates are not Unicode: they come back as U+FFFD
            assert gpt2.decode(gpt2.encode(text)) == text, text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80) | st.text(alphabet=" \t\n\r'sdmtlvreA1é日🤖.!-\u00a0", max_size=40))
def test_gpt2_equals_tiktoken_on_any_text(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, disallowed_special=())


def test_gpt2_vocabulary_and_special_token(gpt2):
    assert gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_token == 50256 and gpt2.special_tokens == {ENDOFTEXT: 50256}
    text = "a<|endoftext|>b"
    assert 50256 not in gpt2.encode(text)  # ordinary text by default
    assert gpt2.encode(text, allowed_special={ENDOFTEXT}) == gpt2.encode("a") + [50256] + gpt2.encode("b")
    assert gpt2.decode(gpt2.encode(text, allowed_special="all")) == text
    assert gpt2.token_bytes(50256) == ENDOFTEXT.encode()
    assert gpt2.token_bytes(gpt2.encode(" the")[0]) == b" the"


def test_gpt2_byte_table():
    table = gpt2_bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_decode_replaces_invalid_utf8(gpt2):
    ids = gpt2.encode("🤖")
    assert len(ids) > 1 and gpt2.decode(ids[:1]) == "\ufffd"  # the first bytes of the character alone
    assert gpt2.decode_bytes(ids[:1]) + gpt2.decode_bytes(ids[1:]) == "🤖".encode()
    assert gpt2.decode(np.array(ids)) == "🤖"


# ---------------------------------------------------------------------------- training


def test_first_merge_is_the_most_frequent_pair(shakespeare):
    counts = Counter()
    for chunk in regex.findall(PATTERN, shakespeare):
        b = chunk.encode("utf-8")
        counts.update(zip(b, b[1:]))
    best = max(counts.values())
    expected = min(p for p, c in counts.items() if c == best)
    tok = train_bpe(shakespeare, 257)
    assert tok.merges == [(expected, 256)]
    assert tok.token_bytes(256) == bytes(expected) == b" t"  # Shakespeare's most frequent pair


def test_merges_equal_a_recount_every_merge_reference(small_text, trained):
    assert trained.merges == train_reference(small_text, 400 - 256)
    assert trained.vocab_size == 400


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c1'\n🤖", max_size=60), st.integers(256, 290))
def test_merges_equal_the_reference_on_any_small_text(text, vocab_size):
    text = text or "a"
    assert train_bpe(text, vocab_size).merges == train_reference(text, vocab_size - 256)


def test_no_merge_crosses_a_pre_token_boundary(small_text, trained):
    chunks = {c.encode("utf-8") for c in pretokenize(small_text)}
    for i in range(256, trained.vocab_size):
        piece = trained.token_bytes(i)
        assert any(piece in c for c in chunks), piece
    # "x." everywhere, but a letter and a punctuation mark are always different chunks
    assert train_bpe("x.x.x.x.x.", 300).merges == []
    assert pretokenize("I'll go  now") == ["I", "'ll", " go", " ", " now"]


def test_vocab_size_256_is_pure_bytes():
    tok = train_bpe("hello hello world ☃", 256)
    assert tok.merges == [] and tok.vocab_size == 256 and tok.eot_token is None
    assert tok.encode("héllo ☃") == list("héllo ☃".encode("utf-8"))


def test_training_stops_when_no_pair_is_left():
    tok = train_bpe("ab ab", 1000)
    assert [tok.token_bytes(i) for i in range(256, tok.vocab_size)] == [b"ab", b" ab"]  # " ab" is [" ", "ab"] once ab is a token


def test_progress_bar(capsys):
    assert train_bpe("the cat the hat", 260, progress=True).vocab_size == 260


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=100))
def test_round_trips_on_any_text(gpt2, trained, text):
    assert trained.decode(trained.encode(text)) == text
    assert gpt2.decode(gpt2.encode(text)) == text


def test_trained_tokenizer_compresses(small_text, trained):
    ids = trained.encode(small_text)
    assert len(ids) < 0.6 * len(small_text.encode("utf-8"))
    assert trained.decode(ids) == small_text


# ---------------------------------------------------------------------------- save and load


@pytest.mark.parametrize("which", ["trained", "gpt2"])
def test_save_load_equal(request, tmp_path, which):
    tok = request.getfixturevalue(which)
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BytePairTokenizer.load(path)
    assert loaded == tok and loaded.vocab_size == tok.vocab_size and loaded.special_tokens == tok.special_tokens
    text = "To be, or not to be 🤖 <|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind
    tok.save(path)  # replacing an existing file
    assert BytePairTokenizer.load(path) == tok


def _rewrite(path, edit, fix_digest=True):
    """Edit the saved JSON; with `fix_digest`, recompute its sha256 (that of the canonical JSON of
    the other fields, as the file format says) so that the structural checks are reached."""
    payload = json.loads(path.read_text())
    edit(payload)
    if fix_digest and "sha256" in payload:
        body = {k: v for k, v in payload.items() if k != "sha256"}
        canonical = json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        payload["sha256"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    path.write_text(json.dumps(payload))


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


TAMPERED = [
    ("format", _set("format", "something else"), "format"),
    ("version", _set("version", 2), "version"),
    ("missing field", lambda p: p.pop("special_tokens"), "fields"),
    ("extra field", _set("pattern", "x"), "fields"),
    ("merge id out of order", lambda p: p["merges"][3].__setitem__(2, 300), "merges[3]"),
    ("merge of a later id", lambda p: p["merges"][0].__setitem__(1, 260), "merges[0]"),
    ("merge not a triple", lambda p: p["merges"].__setitem__(0, [1, 2]), "merges"),
    ("merges not a list", _set("merges", {"a": 1}), "merges"),
    ("repeated pair", lambda p: p["merges"][1].__setitem__(slice(0, 2), p["merges"][0][:2]), "repeats"),
    ("byte ids", lambda p: p["byte_ids"].__setitem__(0, 1), "byte_ids"),
    ("byte ids floats", lambda p: p["byte_ids"].__setitem__(0, 0.0), "byte_ids"),
    ("special token id", _set("special_tokens", {"<|x|>": 5}), "special_tokens"),
]


@pytest.mark.parametrize("name, edit, words", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_load_refuses_a_tampered_file(tmp_path, trained, name, edit, words):
    path = tmp_path / "tok.json"
    trained.save(path)
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=regex.escape(words)) as info:
        BytePairTokenizer.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_an_edit_that_keeps_the_structure(tmp_path, trained):
    path = tmp_path / "tok.json"
    trained.save(path)
    _rewrite(path, lambda p: p["merges"][0].__setitem__(0, 65), fix_digest=False)  # still a valid merge list
    with pytest.raises(ValueError, match="sha256") as info:
        BytePairTokenizer.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '"text"', "\udcff"])
def test_load_refuses_a_corrupt_file(tmp_path, content):
    path = tmp_path / "tok.json"
    if content == "\udcff":
        path.write_bytes(b"\xff\xfe{")
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match="not a saved BytePairTokenizer") as info:
        BytePairTokenizer.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_a_truncated_file(tmp_path, trained):
    path = tmp_path / "tok.json"
    trained.save(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not valid JSON"):
        BytePairTokenizer.load(path)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("vocab_size, error", [(255, ValueError), (0, ValueError), (-1, ValueError),
                                               (300.0, TypeError), (True, TypeError), ("300", TypeError),
                                               (None, TypeError)])
def test_train_refuses_a_bad_vocab_size(vocab_size, error):
    with pytest.raises(error, match="vocab_size"):
        train_bpe("some text", vocab_size)


@pytest.mark.parametrize("text, error", [("", ValueError), (b"bytes", TypeError), (None, TypeError),
                                         (["a list"], TypeError)])
def test_train_refuses_a_bad_text(text, error):
    with pytest.raises(error, match="text"):
        train_bpe(text, 300)


def test_train_refuses_a_bad_progress():
    with pytest.raises(TypeError, match="progress"):
        train_bpe("some text", 300, progress="yes")


@pytest.mark.parametrize("text", [b"bytes", None, 12, ["a"]])
def test_encode_refuses_a_non_str(trained, text):
    with pytest.raises(TypeError, match="text"):
        trained.encode(text)
    with pytest.raises(TypeError, match="text"):
        pretokenize(text)


def test_encode_refuses_an_unknown_special_token(gpt2, trained):
    with pytest.raises(ValueError, match="allowed_special"):
        gpt2.encode("x", allowed_special={"<|im_start|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        trained.encode("x", allowed_special={ENDOFTEXT})
    with pytest.raises(TypeError, match="allowed_special"):
        gpt2.encode("x", allowed_special=ENDOFTEXT)  # a str, not a collection of them
    assert trained.encode("x", allowed_special="all") == trained.encode("x")


@pytest.mark.parametrize("ids, error", [([-1], ValueError), ([400], ValueError), ([1, 2, 10**9], ValueError),
                                        ([1.0], TypeError), ([True], TypeError), (["a"], TypeError),
                                        ("abc", TypeError), (5, TypeError)])
def test_decode_refuses_bad_ids(trained, ids, error):
    with pytest.raises(error, match="ids"):
        trained.decode(ids)


def test_decode_names_the_bad_position(trained):
    with pytest.raises(ValueError, match=r"ids\[2\].*\[0, 399\].*400"):
        trained.decode([1, 2, 400])
    with pytest.raises(ValueError, match="id must be"):
        trained.token_bytes(400)


@pytest.mark.parametrize("kwargs, words", [
    ({"merges": [((1, 2), 257)]}, "merges[0] must make id 256"),
    ({"merges": [((1, 256), 256)]}, "merges[0] must merge two ids made before it"),
    ({"merges": [((1, 2), 256), ((1, 2), 257)]}, "repeats the pair"),
    ({"merges": [(1, 2, 256)]}, "merges[0] must be ((a, b), new_id)"),
    ({"merges": "abc"}, "merges must be"),
    ({"merges": [], "byte_ids": list(range(255))}, "byte_ids"),
    ({"merges": [], "byte_ids": "x" * 256}, "byte_ids"),
    ({"merges": [], "special_tokens": {"<|a|>": 257}}, "special_tokens"),
    ({"merges": [], "special_tokens": {"": 256}}, "special_tokens"),
    ({"merges": [], "special_tokens": [("<|a|>", 256)]}, "special_tokens"),
])
def test_constructor_refuses_bad_tables(kwargs, words):
    with pytest.raises(ValueError, match=regex.escape(words)):
        BytePairTokenizer(**kwargs)


def test_constructor_takes_special_tokens():
    tok = BytePairTokenizer([((104, 105), 256)], special_tokens={"<|b|>": 258, "<|a|>": 257})
    assert tok.vocab_size == 259 and list(tok.special_tokens) == ["<|a|>", "<|b|>"]
    assert tok.encode("hi<|b|>hi", allowed_special="all") == [256, 258, 256]
    assert repr(tok) == "BytePairTokenizer(vocab_size=259, merges=1, special_tokens=['<|a|>', '<|b|>'])"
