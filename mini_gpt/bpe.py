"""Byte-level BPE by hand: training on a text, encoding, decoding, and GPT-2's own merges.

A byte-level BPE tokenizer starts from the 256 bytes of UTF-8 (so any text can be encoded, and no
character is ever unknown) and learns merges: "the pair of adjacent ids (a, b) becomes a new id".

Pre-tokenization. The text is first cut into chunks by GPT-2's pattern (`GPT2_PATTERN`): a word
with its leading space (" the"), a run of digits, a run of punctuation, the contractions 's 't 're
've 'm 'll 'd, and whitespace runs, where `\\s+(?!\\S)` leaves the last space of a run to the word
that follows it. Merges never cross a chunk boundary, so "dog." and "dog!" share the token " dog".

Training (`train_bpe`). Identical chunks are counted once, with their frequency. Each step merges
the most frequent adjacent pair over all chunks; the new id is 256, 257, ... in merge order.
Ties are broken by the smallest pair: (a, b) before (c, d) when a < c, or a == c and b < d
(Python's tuple order), so a training is fully determined by its text and vocab_size. Pairs are
counted with overlaps ("aaa" holds the pair (a, a) twice), and a merge replaces the occurrences of
a pair in a chunk left to right ("aaa" becomes "aa" "a"). Recounting all pairs after each merge
would cost the whole corpus per merge; instead the counts are kept (pair -> count, pair -> the
chunks that hold it) and a merge recounts only the chunks that contain the merged pair. The most
frequent pair comes from a heap of (-count, pair) entries; an entry whose count is no longer the
pair's count is stale and is dropped when it reaches the top (lazy invalidation).

Encoding (`BytePairTokenizer.encode`). Per chunk: start from its bytes, then repeatedly merge the
adjacent pair that was learned first (the lowest new id), until no adjacent pair is a merge. The
result of each distinct chunk is cached, which is what makes encoding a long text fast. The loop
costs O(n^2) for a chunk of n bytes: nothing for words, seconds for a single 10,000-letter "word".

GPT-2 (`BytePairTokenizer.from_gpt2`). GPT-2's files write bytes as printable characters (the
table of `gpt2_bytes_to_unicode`); `vocab.bpe` lists the 50,000 merges in order and
`encoder.json` gives every token its id. Converted to byte pairs and ids, they run through the
same merge loop, and the ids equal tiktoken's `gpt2` encoding.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import regex

from . import atomic
from .files import course_file
from .validation import WrongKindError, check_bool, check_int, is_int

__all__ = [
    "GPT2_PATTERN", "ENDOFTEXT", "pretokenize", "count_pairs", "merge_pair", "gpt2_bytes_to_unicode",
    "BytePairTokenizer", "train_bpe",
]

# GPT-2's pre-tokenizer (from its encoder.py): \p{L} letters, \p{N} digits, needs the `regex` module.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT = regex.compile(GPT2_PATTERN)

ENDOFTEXT = "<|endoftext|>"  # GPT-2's one special token, id 50256

FORMAT = "mini_gpt.bpe"  # the tag and version of a saved tokenizer's JSON
VERSION = 1

_CACHE_LIMIT = 200_000  # chunks whose encoding is remembered (a text's frequent chunks come first)


def _valid_unicode(text: str) -> str:
    """`text`, with lone surrogates (which UTF-8 cannot encode) replaced by U+FFFD and surrogate
    pairs joined into their character, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _check_text(text: Any, name: str = "text") -> str:
    if not isinstance(text, str):
        raise WrongKindError(f"{name} must be a str, got {type(text).__name__}")
    return _valid_unicode(text)


def pretokenize(text: str) -> list[str]:
    """`text` cut into GPT-2's chunks: `"I'll go  now"` -> `["I", "'ll", " go", " ", " now"]`."""
    return _SPLIT.findall(_check_text(text))


def count_pairs(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict:
    """Add `weight` to `counts[(a, b)]` for every adjacent pair of `ids` (overlapping: "aaa" has
    (a, a) twice); a new dict when `counts` is None. Returns `counts`."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """`ids` with every occurrence of `pair` replaced by `new_id`, left to right: merging (a, a)
    in [a, a, a] gives [new, a]."""
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table, in which its `vocab.bpe` and `encoder.json` write tokens.

    The 188 bytes that are printable characters in Latin-1 ('!'..'~', '¡'..'¬', '®'..'ÿ') stand
    for themselves; the other 68 (control bytes, space, 0x7f-0xa0, the soft hyphen 0xad) take the
    characters 256, 257, ... in byte order, so that space (0x20) is written 'Ġ' (U+0120).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


class BytePairTokenizer:
    """A byte-level BPE tokenizer: byte ids, a list of merges and special tokens.

    merges:         the learned merges in order, `[((a, b), new_id), ...]`; merge i makes id 256 + i
                    out of two ids made before it
    byte_ids:       the id of each byte value 0..255, a permutation of 0..255 (default: byte b has
                    id b; GPT-2 numbers its bytes in another order)
    special_tokens: `{text: id}` of tokens that are not made of merges, with the ids that follow
                    the merges (GPT-2: `{"<|endoftext|>": 50256}`; a trained tokenizer has none)

    `vocab_size` = 256 + len(merges) + len(special_tokens), and the ids are exactly 0..vocab_size-1.
    Built by `train_bpe`, `BytePairTokenizer.from_gpt2()` or `BytePairTokenizer.load(path)`.
    """

    def __init__(self, merges: Iterable[tuple[tuple[int, int], int]], *, byte_ids: Sequence[int] | None = None,
                 special_tokens: dict[str, int] | None = None):
        self.byte_ids = _check_byte_ids(byte_ids)
        self.merges = _check_merges(merges)
        self.special_tokens = _check_special_tokens(special_tokens, 256 + len(self.merges))
        self._merge_of = {pair: new_id for pair, new_id in self.merges}  # (a, b) -> new id = its rank
        pieces = [b""] * 256
        for b, i in enumerate(self.byte_ids):
            pieces[i] = bytes([b])
        for (a, b), _ in self.merges:
            pieces.append(pieces[a] + pieces[b])
        pieces.extend(text.encode("utf-8") for text in self.special_tokens)
        self._bytes = pieces  # id -> the bytes it stands for
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ what it is

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    @property
    def eot_token(self) -> int | None:
        """The id of `<|endoftext|>`, or None when this tokenizer has no such special token."""
        return self.special_tokens.get(ENDOFTEXT)

    def token_bytes(self, id: int) -> bytes:
        """The bytes token `id` stands for (a token may be part of a character, so bytes, not str)."""
        return self._bytes[_check_ids([id], self.vocab_size, "id")[0]]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BytePairTokenizer) and self.byte_ids == other.byte_ids
                and self.merges == other.merges and self.special_tokens == other.special_tokens)

    def __repr__(self) -> str:
        return (f"BytePairTokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")

    # ------------------------------------------------------------------ encode and decode

    def encode(self, text: str, *, allowed_special: Collection[str] | str = ()) -> list[int]:
        """The ids of `text`.

        Special tokens are ordinary text unless named in `allowed_special` (a collection of keys
        of `special_tokens`, or "all"): `encode("a<|endoftext|>")` encodes the 13 characters as
        text, as tiktoken's `encode(s, disallowed_special=())` does, while
        `encode(s, allowed_special={"<|endoftext|>"})` gives id 50256 for it. Lone surrogates
        (not valid Unicode) become U+FFFD first, as in tiktoken.
        """
        text = _check_text(text)
        allowed = self._allowed_special(allowed_special)
        if not allowed:
            return self._encode_ordinary(text)
        ids: list[int] = []
        # longest first, so that a special token that contains another one wins
        pattern = "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
        for i, part in enumerate(regex.split(pattern, text)):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _allowed_special(self, allowed_special: Collection[str] | str) -> set[str]:
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str) or not isinstance(allowed_special, Collection):
            raise WrongKindError(f"allowed_special must be 'all' or a collection of special tokens, "
                                 f"got {allowed_special!r}")
        unknown = [s for s in allowed_special if s not in self.special_tokens]
        if unknown:
            raise ValueError(f"allowed_special must name special tokens of this tokenizer "
                             f"({list(self.special_tokens) or 'it has none'}), got {unknown!r}")
        return set(allowed_special)

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for chunk in _SPLIT.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = self._encode_chunk(chunk)
                if len(cache) < _CACHE_LIMIT:
                    cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def _encode_chunk(self, chunk: str) -> list[int]:
        """The merge loop: bytes, then the earliest-learned adjacent pair merged until none is left."""
        byte_ids = self.byte_ids
        ids = [byte_ids[b] for b in chunk.encode("utf-8")]
        merge_of = self._merge_of
        never = len(self._bytes)  # larger than every merge's id: a pair that is not a merge
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: merge_of.get(p, never))
            new_id = merge_of.get(pair)
            if new_id is None:
                break
            ids = merge_pair(ids, pair, new_id)
        return ids

    def clear_cache(self) -> None:
        """Forget the cached encodings of chunks (to time a cold encoder, or free memory)."""
        self._cache.clear()

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`. A token may hold part of a character's UTF-8 bytes; byte sequences that
        are not valid UTF-8 (a character cut off, or ids in an order no encoding produces) are
        decoded with errors="replace": each bad sequence shows as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of `ids`, joined (exact, even where they are not valid UTF-8)."""
        pieces = self._bytes
        return b"".join([pieces[i] for i in _check_ids(ids, self.vocab_size)])

    # ------------------------------------------------------------------ GPT-2

    @classmethod
    def from_gpt2(cls) -> "BytePairTokenizer":
        """GPT-2's tokenizer (50,257 ids), from `gpt2/vocab.bpe` and `gpt2/encoder.json` found through
        `mini_gpt.files.course_file` (offline with MINI_GPT_DATA). Its `encode` equals tiktoken's
        `gpt2` encoding; `<|endoftext|>` (id 50256) is a special token (see `encode`)."""
        vocab_path, encoder_path = course_file("gpt2/vocab.bpe"), course_file("gpt2/encoder.json")
        encoder = json.loads(encoder_path.read_text("utf-8"))
        byte_to_char = gpt2_bytes_to_unicode()
        byte_ids = [encoder[byte_to_char[b]] for b in range(256)]
        lines = vocab_path.read_text("utf-8").splitlines()
        if not lines or not lines[0].startswith("#version"):
            raise ValueError(f"{vocab_path}: expected a '#version' line first, as in GPT-2's vocab.bpe")
        merges = []
        for n, line in enumerate(lines[1:], start=2):
            if not line:
                continue
            left, right = line.split(" ")
            new_id = encoder[left + right]
            if new_id != 256 + len(merges):
                raise ValueError(f"{encoder_path}: token {left + right!r} (line {n} of {vocab_path.name}) has id "
                                 f"{new_id}; GPT-2's merges should take the ids 256, 257, ... in order")
            merges.append(((encoder[left], encoder[right]), new_id))
        return cls(merges, byte_ids=byte_ids, special_tokens={ENDOFTEXT: encoder[ENDOFTEXT]})

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer to `path` as JSON, atomically (a crash leaves the old file or the new
        one): the format tag and version, the byte ids, the merges as [a, b, new_id], the special
        tokens and the sha256 of all of them, which `load` checks."""
        payload = {
            "format": FORMAT, "version": VERSION, "byte_ids": self.byte_ids,
            "merges": [[a, b, new_id] for (a, b), new_id in self.merges],
            "special_tokens": self.special_tokens,
        }
        payload["sha256"] = _digest(payload)
        return atomic.write_text(path, json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BytePairTokenizer":
        """A tokenizer saved by `save`. A file that is not one (bad JSON, another format or version,
        a missing field, merges or ids out of order, a sha256 that does not match: corrupted or
        edited by hand) raises a ValueError naming the path and what is wrong."""
        try:
            payload = json.loads(Path(path).read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a saved BytePairTokenizer: not valid JSON ({exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a saved BytePairTokenizer: expected a JSON object with "
                             f"format {FORMAT!r}")
        if payload.get("version") != VERSION:
            raise ValueError(f"{path}: BytePairTokenizer file version {payload.get('version')!r} is not "
                             f"supported (this mini_gpt reads version {VERSION})")
        fields = {"format", "version", "byte_ids", "merges", "special_tokens", "sha256"}
        if set(payload) != fields:
            raise ValueError(f"{path}: a BytePairTokenizer file has the fields {sorted(fields)}, "
                             f"got {sorted(payload)}")
        stored = payload.pop("sha256")
        if stored != _digest(payload):
            raise ValueError(f"{path}: the content does not match its sha256 (the file is corrupted or was edited)")
        merges = payload["merges"]
        if not isinstance(merges, list) or not all(isinstance(m, list) and len(m) == 3 for m in merges):
            raise ValueError(f"{path}: merges must be a list of [a, b, new_id]")
        try:
            return cls([((a, b), new_id) for a, b, new_id in merges], byte_ids=payload["byte_ids"],
                       special_tokens=payload["special_tokens"])
        except ValueError as exc:  # a WrongKindError is a ValueError too
            raise ValueError(f"{path}: {exc}") from None


def _digest(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _check_ids(ids: Iterable[int], vocab_size: int, name: str = "ids") -> list[int]:
    if hasattr(ids, "tolist"):  # a numpy array or a torch tensor
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise WrongKindError(f"{name} must be an iterable of ints, got {type(ids).__name__}")
    ids = list(ids)
    for pos, i in enumerate(ids):
        if not is_int(i) or not 0 <= i < vocab_size:
            what = f"{name}[{pos}]" if name == "ids" else name
            error = ValueError if is_int(i) else WrongKindError
            raise error(f"{what} must be a token id, an int in [0, {vocab_size - 1}], got {i!r}")
    return ids


def _check_byte_ids(byte_ids: Sequence[int] | None) -> list[int]:
    if byte_ids is None:
        return list(range(256))
    if isinstance(byte_ids, (str, bytes)) or not isinstance(byte_ids, Sequence):
        raise WrongKindError(f"byte_ids must be a sequence of 256 ints, got {type(byte_ids).__name__}")
    if not all(is_int(i) for i in byte_ids) or sorted(byte_ids) != list(range(256)):
        raise ValueError("byte_ids must be a permutation of 0..255 (the id of each byte value)")
    return [int(i) for i in byte_ids]


def _check_merges(merges: Iterable[tuple[tuple[int, int], int]]) -> list[tuple[tuple[int, int], int]]:
    if isinstance(merges, (str, bytes)) or not isinstance(merges, Iterable):
        raise WrongKindError(f"merges must be a list of ((a, b), new_id), got {type(merges).__name__}")
    out = []
    seen = set()
    for n, merge in enumerate(merges):
        try:
            (a, b), new_id = merge
        except (TypeError, ValueError):
            raise ValueError(f"merges[{n}] must be ((a, b), new_id), got {merge!r}") from None
        expected = 256 + n
        if not is_int(new_id) or new_id != expected:
            raise ValueError(f"merges[{n}] must make id {expected} (merges take the ids 256, 257, ... in order), "
                             f"got {new_id!r}")
        for side in (a, b):
            if not is_int(side) or not 0 <= side < expected:
                raise ValueError(f"merges[{n}] must merge two ids made before it, ints in [0, {expected - 1}], "
                                 f"got {merge!r}")
        pair = (int(a), int(b))
        if pair in seen:
            raise ValueError(f"merges[{n}] repeats the pair {pair} of an earlier merge")
        seen.add(pair)
        out.append((pair, expected))
    return out


def _check_special_tokens(special_tokens: dict[str, int] | None, first_id: int) -> dict[str, int]:
    if special_tokens is None:
        return {}
    if not isinstance(special_tokens, dict):
        raise WrongKindError(f"special_tokens must be a dict {{text: id}}, got {type(special_tokens).__name__}")
    for text, i in special_tokens.items():
        if not isinstance(text, str) or not text:
            raise ValueError(f"special_tokens' keys must be non-empty strs, got {text!r}")
        if not is_int(i):
            raise ValueError(f"special_tokens' ids must be ints, got {text!r}: {i!r}")
    by_id = sorted(special_tokens.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(first_id, first_id + len(by_id))):
        raise ValueError(f"special_tokens must take the ids right after the merges ({first_id}, "
                         f"{first_id + 1}, ...), got {special_tokens!r}")
    return {text: int(i) for text, i in by_id}


# ---------------------------------------------------------------------------- training


def train_bpe(text: str, vocab_size: int, *, progress: bool = False) -> BytePairTokenizer:
    """A byte-level BPE tokenizer of `vocab_size` ids learned from `text` (ids 0-255 are the bytes).

    Merges are learned on GPT-2's chunks of the text (`pretokenize`), most frequent pair first,
    ties to the smallest pair (see the module's docstring). If fewer than vocab_size - 256 merges
    are possible (every chunk is down to one token), training stops there and the tokenizer is
    smaller. `progress=True` shows a tqdm bar of the merges.
    """
    text = _check_text(text)
    if not text:
        raise ValueError("text must be a non-empty str to learn merges from, got ''")
    vocab_size = check_int("vocab_size", vocab_size, min=256)
    progress = check_bool("progress", progress)

    chunk_counts = Counter(_SPLIT.findall(text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each distinct chunk once
    freqs = list(chunk_counts.values())
    pair_count: dict[tuple[int, int], int] = {}
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # may hold stale chunk indices
    for w, (word, freq) in enumerate(zip(words, freqs)):
        count_pairs(word, pair_count, freq)
        for pair in zip(word, word[1:]):
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_count.items()]
    heapq.heapify(heap)

    from tqdm.auto import tqdm

    merges = []
    for new_id in tqdm(range(256, vocab_size), desc="BPE merges", disable=not progress, leave=False):
        while heap and pair_count.get(heap[0][1]) != -heap[0][0]:
            heapq.heappop(heap)  # stale: the pair's count changed (a fresher entry is in the heap) or is 0
        if not heap:
            break
        _, pair = heapq.heappop(heap)
        merges.append((pair, new_id))
        delta: dict[tuple[int, int], int] = {}
        for w in where.pop(pair):
            word = words[w]
            merged = merge_pair(word, pair, new_id)
            if len(merged) == len(word):
                continue  # an earlier merge already took this chunk's pair
            count_pairs(word, delta, -freqs[w])
            count_pairs(merged, delta, freqs[w])
            for p in zip(merged, merged[1:]):
                if new_id in p:  # the other pairs of `merged` were in `word` already
                    where[p].add(w)
            words[w] = merged
        for p, d in delta.items():
            if d:
                count = pair_count.get(p, 0) + d
                if count:
                    pair_count[p] = count
                    heapq.heappush(heap, (-count, p))
                else:
                    del pair_count[p]
    return BytePairTokenizer(merges)
