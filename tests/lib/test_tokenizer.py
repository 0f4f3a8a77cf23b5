import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_gpt import BPETokenizer, CharTokenizer
from mini_gpt.data import load_text

SAMPLES = [
    "",
    "Hello, world!",
    "naïve café — déjà vu, Straße, Ελληνικά, русский, 日本語のテキスト, العربية",
    "emoji: 🤖🧠🎭 family 👨‍👩‍👧‍👦 flag 🇫🇷 and skin tone 👍🏽",
    "  leading spaces\n\n\ttabs\r\nand CRLF   ",
    "numbers 1234567890 3.14159 and symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "'s 't 're 've 'm 'll 'd contractions they're we've",
]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer("gpt2")


@pytest.fixture(scope="module")
def shakespeare():
    return load_text("shakespeare")


def test_bpe_equals_tiktoken_on_all_of_shakespeare(bpe, tiktoken_gpt2, shakespeare):
    ids = bpe.encode(shakespeare)
    assert ids == tiktoken_gpt2.encode_ordinary(shakespeare)
    assert 300_000 < len(ids) < 400_000  # ~338k GPT-2 tokens
    assert bpe.decode(ids) == shakespeare


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_equals_tiktoken_and_round_trips(bpe, tiktoken_gpt2, text):
    ids = bpe.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert bpe.decode(ids) == text


def test_bpe_known_ids(bpe):
    assert bpe.vocab_size == 50257
    assert bpe.encode("Hello world") == [15496, 995]  # the ids GPT-2 papers and tutorials show


def test_endoftext(bpe, tiktoken_gpt2):
    text = "First document.<|endoftext|>Second document."
    ids = bpe.encode(text)
    assert ids.count(50256) == 1 and bpe.eot_token == 50256
    assert ids == tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})
    assert bpe.decode(ids) == text
    plain = bpe.encode(text, allow_special=False)
    assert 50256 not in plain and bpe.decode(plain) == text


def test_bpe_decode_tokens_and_bad_ids(bpe):
    assert bpe.decode_tokens(bpe.encode("Hello world")) == ["Hello", " world"]
    with pytest.raises(ValueError, match=r"ids\[1\] = 50257 is not a token id; allowed range is \[0, 50256\]"):
        bpe.decode([1, 50257])
    with pytest.raises(ValueError, match="name must be one of"):
        BPETokenizer("cl100k_base")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text(text):
    bpe = BPETokenizer("gpt2")  # cached after the first build
    assert bpe.decode(bpe.encode(text, allow_special=False)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_char_round_trips_any_text(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))


def test_char_shakespeare_vocabulary(shakespeare):
    tok = CharTokenizer.from_text(shakespeare)
    assert tok.vocab_size == 65
    assert tok.chars[:2] == ["\n", " "] and tok.chars == sorted(tok.chars)
    assert tok.decode(tok.encode(shakespeare)) == shakespeare


def test_char_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.from_text(string.ascii_lowercase + " ")
    with pytest.raises(ValueError, match=r"character 'Z' at position 6 is not in this tokenizer's vocabulary of 27"):
        tok.encode("hello Zebra")
    with pytest.raises(ValueError, match=r"allowed range is \[0, 26\]"):
        tok.decode([0, 27])


def test_char_json_round_trip(tmp_path):
    tok = CharTokenizer.from_text("Ünïcödé text ✓ 🎭\n")
    path = tmp_path / "tok.json"
    tok.save(path)
    assert path.read_text("utf-8").startswith("{")  # JSON, not pickle
    again = CharTokenizer.load(path)
    assert again == tok and again.encode("✓🎭") == tok.encode("✓🎭")
    (tmp_path / "bad.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="not a saved CharTokenizer"):
        CharTokenizer.load(tmp_path / "bad.json")
