"""Tokenizers: text -> list of ids -> text.

- `CharTokenizer`: one id per distinct character of a text (65 for Tiny Shakespeare). Tiny,
  exact, and easy to read; saved as JSON (never pickle).
- `BPETokenizer("gpt2")`: GPT-2's byte-pair encoding (50257 ids), run by tiktoken, built from
  the course's verified copy of the vocabulary so it works offline through `MINI_GPT_DATA`.
- `"bpe:N"`: a byte-level BPE of N ids learned from a text by `mini_gpt.bpe.train_bpe` (the data
  API learns it from the training split only; see `mini_gpt.data`).
"""

from __future__ import annotations

import base64
import functools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from .bpe import BytePairTokenizer, train_bpe
from .files import course_file
from .validation import WrongKindError, check_choice


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    out = []
    for pos, i in enumerate(ids):
        i = int(i)
        if not 0 <= i < vocab_size:
            raise ValueError(f"ids[{pos}] = {i} is not a token id; allowed range is [0, {vocab_size - 1}]")
        out.append(i)
    return out


class CharTokenizer:
    """Maps each character to an id: `chars[i]` has id `i`."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars must be single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must not repeat a character")
        if not chars:
            raise ValueError("chars must not be empty")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary is the sorted set of the text's characters."""
        if not isinstance(text, str) or not text:
            raise ValueError("text must be a non-empty str")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in this tokenizer's vocabulary "
                f"of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in _check_ids(ids, self.vocab_size))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False), "utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        d = json.loads(Path(path).read_text("utf-8"))
        if not isinstance(d, dict) or d.get("type") != "char" or not isinstance(d.get("chars"), list):
            raise ValueError(f"{path} is not a saved CharTokenizer (expected JSON with type 'char' and chars)")
        return cls(d["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """GPT-2's byte-level BPE (the `gpt2` / `r50k_base` vocabulary of tiktoken).

    `<|endoftext|>` in the text becomes its id (50256) when `allow_special=True` (the default);
    with `allow_special=False` it is encoded as ordinary text.
    """

    NAMES = ("gpt2", "r50k_base")
    EOT = "<|endoftext|>"

    def __init__(self, name: str = "gpt2"):
        self.name = check_choice("BPETokenizer name", name, self.NAMES)
        self._enc = _gpt2_encoding()
        self.eot_token = self._enc.eot_token

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if allow_special:
            return self._enc.encode(text, allowed_special={self.EOT})
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        # Invalid UTF-8 (a multi-byte character cut between tokens) shows as U+FFFD.
        return self._enc.decode(_check_ids(ids, self.vocab_size), errors="replace")

    def decode_tokens(self, ids: Iterable[int]) -> list[str]:
        """Each token's own text: handy for labelling plots."""
        return [self._enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")
                for i in _check_ids(ids, self.vocab_size)]

    def __repr__(self) -> str:
        return f"BPETokenizer({self.name!r}, vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    """tiktoken's Encoding for GPT-2, from the verified local vocabulary (built once)."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=_read_tiktoken_ranks(course_file("gpt2/r50k_base.tiktoken")),
        special_tokens={BPETokenizer.EOT: 50256},
        explicit_n_vocab=50257,
    )


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A `.tiktoken` file: one `base64(token_bytes) rank` pair per line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


# what `get_tokenizer` (and so `load_dataset` and `mini-gpt train --tokenizer`) accepts, besides
# "bpe:N" (a BPE of N ids trained on the text; N >= 256, the bytes)
TOKENIZER_NAMES = ("char", *BPETokenizer.NAMES)
TRAINED_BPE_PREFIX = "bpe:"
MIN_BPE_SIZE = 256  # the 256 byte ids come before any merge


def trained_bpe_size(name: str) -> int | None:
    """N for a tokenizer name "bpe:N", None for the other names; a bad name raises (see
    `check_tokenizer_name`)."""
    name = check_tokenizer_name(name)
    return int(name[len(TRAINED_BPE_PREFIX):]) if name.startswith(TRAINED_BPE_PREFIX) else None


def check_tokenizer_name(name: str) -> str:
    """`name` if it is a tokenizer name: 'char', 'gpt2', 'r50k_base' or 'bpe:N' with N an int >= 256
    (returned as written, except that N loses any leading zeros: 'bpe:0300' -> 'bpe:300')."""
    allowed = f"one of {', '.join(map(repr, TOKENIZER_NAMES))} or 'bpe:N' (N an int >= {MIN_BPE_SIZE})"
    if not isinstance(name, str):
        raise WrongKindError(f"tokenizer must be {allowed}, got {type(name).__name__}")
    if name in TOKENIZER_NAMES:
        return name
    if name.startswith(TRAINED_BPE_PREFIX):
        size = name[len(TRAINED_BPE_PREFIX):]
        # digits only: int() would also take " 300", "+300" and "3_00"
        if size.isascii() and size.isdigit() and int(size) >= MIN_BPE_SIZE:
            return f"{TRAINED_BPE_PREFIX}{int(size)}"
    raise ValueError(f"tokenizer must be {allowed}, got {name!r}")


def get_tokenizer(name: str, text: str | None = None) -> CharTokenizer | BPETokenizer | BytePairTokenizer:
    """'char' (built from `text`), a BPE name ('gpt2'), or 'bpe:N' (a BPE of N ids trained on `text`)."""
    name = check_tokenizer_name(name)
    size = trained_bpe_size(name)
    if name == "char" or size is not None:
        if text is None:
            raise ValueError(f"the {name!r} tokenizer is built from a text: pass text=")
        return CharTokenizer.from_text(text) if size is None else train_bpe(text, size)
    return BPETokenizer(name)
