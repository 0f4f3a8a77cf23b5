"""The tokens chapter: how compression grows with the vocabulary (`plot_compression`), a model's
bits per byte on a text (`bits_per_byte_on`), and the exercise checks of byte-level BPE:
counting adjacent pairs (`check_pair_counts`), one merge (`check_merge_pair`) and decoding (`check_decode`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..bpe import BytePairTokenizer, count_pairs, merge_pair
from ..evaluate import bits_per_byte
from ..validation import check_int
from .checking import Answer, Case, probably, run_check

__all__ = ["plot_compression", "bits_per_byte_on", "check_pair_counts", "check_merge_pair", "check_decode"]


def plot_compression(sizes: Sequence[int], bytes_per_token: Sequence[float], ax=None, *, label: str = "BPE"):
    """Bytes of text per token against the vocabulary size: how much shorter BPE makes a text.
    Returns the Axes."""
    import matplotlib.pyplot as plt

    if len(sizes) != len(bytes_per_token) or not sizes:
        raise ValueError(f"sizes and bytes_per_token must be non-empty and of one length, got {len(sizes)} "
                         f"and {len(bytes_per_token)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(sizes, bytes_per_token, marker="o", label=label)
    ax.axhline(1.0, color="grey", linestyle=":", label="bytes (256 ids)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("vocabulary size (ids)")
    ax.set_ylabel("bytes per token")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


@torch.no_grad()
def bits_per_byte_on(model: torch.nn.Module, ids: torch.Tensor, tokenizer: Any, block_size: int) -> float:
    """The model's bits per byte on the token ids `ids` (1-D): the text cut into windows of
    `block_size + 1` tokens side by side, each window predicting its last `block_size` tokens; the
    bytes counted are those of the predicted tokens (`tokenizer.decode` of each, in UTF-8)."""
    block_size = check_int("block_size", block_size, min=1)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or len(ids) <= block_size:
        raise ValueError(f"ids must be a 1-D tensor of more than block_size ({block_size}) token ids")
    n = (len(ids) - 1) // block_size
    windows = ids[: n * block_size + 1]
    x = windows[:-1].view(n, block_size)
    y = windows[1:].view(n, block_size)
    was_training = model.training
    model.eval()
    losses = [torch.nn.functional.cross_entropy(model(xb).flatten(0, 1).float(), yb.flatten(), reduction="sum")
              for xb, yb in zip(x.split(64), y.split(64))]
    model.train(was_training)
    token_bytes = _byte_lengths(tokenizer)
    n_bytes = int(token_bytes[y.flatten()].sum())
    return bits_per_byte(float(sum(losses)) / y.numel(), y.numel(), n_bytes)


def _byte_lengths(tokenizer: Any) -> torch.Tensor:
    if isinstance(tokenizer, BytePairTokenizer):
        lengths = [len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]
    else:
        lengths = [len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocab_size)]
    return torch.tensor(lengths)


# ---------------------------------------------------------------------------- counting pairs

PAIR_TEXTS = ["hello", "aaa", "abab", "banana bandana", "a", "é😀é", "to be or not to be"]


def _as_counts(answer: Answer, out: Any, where: str) -> dict:
    if not isinstance(out, dict):
        raise answer.fail(f"returned {type(out).__name__} on {where}; return a dict {{(a, b): count}}")
    try:
        return {(int(a), int(b)): int(c) for (a, b), c in out.items() if c}
    except (TypeError, ValueError):
        raise answer.fail(f"returned a dict whose keys are not pairs (a, b) of ids on {where}, e.g. "
                          f"{next(iter(out))!r}") from None


def _count_mistakes(ids: list[int]):
    def non_overlapping():
        counts: dict = {}
        i = 0
        while i + 1 < len(ids):
            counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
            i += 2 if ids[i] == ids[i + 1] else 1
        return counts

    return [
        ("every pair is counted once, however often it occurs: add 1 to its count each time.",
         lambda: dict.fromkeys(count_pairs(ids), 1)),
        ("overlapping pairs are skipped: in 'aaa' the pair (a, a) occurs twice, at positions 0 and 1.",
         non_overlapping),
        ("the last pair is missing: pair ids[i] with ids[i + 1] for every i up to len(ids) - 2.",
         lambda: count_pairs(ids[:-1])),
        ("these are the pairs (ids[i], ids[i + 2]); adjacent means ids[i + 1].", lambda: _skip_pairs(ids)),
    ]


def _skip_pairs(ids: list[int]) -> dict:
    counts: dict = {}
    for pair in zip(ids, ids[2:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def _report_counts(answer: Answer, got: dict, expected: dict, case: Case, hints: list[str]):
    wrong = sorted(set(got) | set(expected), key=lambda p: (p not in expected, p))
    first = next(p for p in wrong if got.get(p, 0) != expected.get(p, 0))
    return answer.fail(f"on {case.where} the pair {first} should have the count {expected.get(first, 0)}, "
                       f"got {got.get(first, 0)}" + probably(hints))


def check_pair_counts(fn: Callable[[list[int]], dict]) -> None:
    """fn(ids) -> {(a, b): how often b follows a in ids}, overlapping: compared with
    `mini_gpt.bpe.count_pairs(ids)` on the UTF-8 bytes of several texts."""
    cases = [Case(f"the bytes of {text!r}", (list(text.encode("utf-8")),)) for text in PAIR_TEXTS]
    run_check(fn, "check_pair_counts", cases, reference=lambda ids: count_pairs(ids), convert=_as_counts,
              agree=lambda got, expected: got == expected, mistakes=_count_mistakes, report=_report_counts,
              passed=f"counts the adjacent pairs like bpe.count_pairs on {len(cases)} texts")


# ---------------------------------------------------------------------------- one merge

MERGE_CASES = [
    ("hello", (108, 108)),   # 'll' in the middle
    ("aaaa", (97, 97)),      # two merges side by side
    ("aaa", (97, 97)),       # left to right: [new, a]
    ("abab", (97, 98)),      # at both ends
    ("banana", (110, 97)),   # 'na' twice, the last pair too
    ("xyz", (97, 98)),       # nothing to merge
]


def _as_ids(answer: Answer, out: Any, where: str) -> list[int]:
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    if isinstance(out, (str, bytes, dict)):
        raise answer.fail(f"returned {type(out).__name__} on {where}; return the new list of ids")
    try:
        return [int(i) for i in out]
    except (TypeError, ValueError):
        raise answer.fail(f"returned {out!r} on {where}; return a list of ints") from None


def _merge_mistakes(ids: list[int], pair: tuple[int, int], new_id: int):
    def not_skipping():  # the second id of the pair is kept as well
        out, i = [], 0
        while i < len(ids):
            out.append(new_id if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair else ids[i])
            i += 1
        return out

    def dropping_last():  # the loop stops one short: a last id left unmerged is never appended
        merged = merge_pair(ids, pair, new_id)
        return merged if merged[-1:] == [new_id] else merged[:-1]  # (a new id is never an old one)

    def right_to_left():
        return merge_pair(ids[::-1], pair[::-1], new_id)[::-1]

    return [
        ("after a merge, skip both ids of the pair (i += 2), not one: its second id is still in the result.",
         not_skipping),
        ("the last id is lost when it is not part of a pair: after the loop, keep what is left.", dropping_last),
        ("merges go left to right: in [a, a, a] merging (a, a) gives [new, a], not [a, new].", right_to_left),
    ]


def check_merge_pair(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """fn(ids, pair, new_id) -> ids with every occurrence of pair replaced by new_id, left to right:
    compared with `mini_gpt.bpe.merge_pair` on several byte sequences."""
    cases = [Case(f"the bytes of {text!r} merging {pair}", (list(text.encode("utf-8")), pair, 256))
             for text, pair in MERGE_CASES]

    def report(answer: Answer, got, expected, case: Case, hints: list[str]):
        return answer.fail(f"on {case.where} expected {expected}, got {got}" + probably(hints))

    run_check(fn, "check_merge_pair", cases, reference=merge_pair, convert=_as_ids,
              agree=lambda got, expected: got == expected, mistakes=_merge_mistakes, report=report,
              passed=f"merges like bpe.merge_pair on {len(cases)} cases")


# ---------------------------------------------------------------------------- decoding

# merges of a tiny tokenizer: 256 = 'th', 257 = 'the', 258 = ' the', 259 = é's two bytes
DECODE_MERGES = [((116, 104), 256), ((256, 101), 257), ((32, 257), 258), ((0xC3, 0xA9), 259)]
DECODE_CASES = [
    ("the ids of 'the the'", [257, 258]),
    ("plain bytes 'hi'", [104, 105]),
    ("'café the' with é one token", [99, 97, 102, 259, 258]),
    ("'é' as its two bytes, one id each", [0xC3, 0xA9]),
    ("a cut-off character (the first byte of é alone)", [104, 0xC3]),
    ("no ids", []),
]


def _decode_reference(ids: list[int], merges: list) -> str:
    return BytePairTokenizer(merges).decode(ids)


def _decode_mistakes(ids: list[int], merges: list):
    tok = BytePairTokenizer(merges)
    swapped: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges:
        swapped[new_id] = swapped[b] + swapped[a]
    return [
        ("each token is decoded on its own; a character's bytes may be split over tokens, so join the "
         "bytes of all tokens first, then decode them once.",
         lambda: "".join(tok.token_bytes(i).decode("utf-8", errors="replace") for i in ids)),
        ("a merge (a, b) stands for the bytes of a followed by those of b, in that order.",
         lambda: b"".join(swapped[i] for i in ids).decode("utf-8", errors="replace")),
        ("invalid bytes are dropped (errors='ignore'); the tokenizer shows them as U+FFFD (errors='replace').",
         lambda: tok.decode_bytes(ids).decode("utf-8", errors="ignore")),
    ]


def check_decode(fn: Callable[[list[int], list], str]) -> None:
    """fn(ids, merges) -> the text of ids, where merges is a BytePairTokenizer's `merges`
    (`[((a, b), new_id), ...]`; ids 0-255 are the bytes): compared with
    `BytePairTokenizer(merges).decode(ids)`, which decodes invalid UTF-8 with errors="replace"."""
    cases = [Case(where, (ids, DECODE_MERGES)) for where, ids in DECODE_CASES]

    def call(answer: Answer, case: Case):
        try:
            return answer.fn(list(case.args[0]), list(case.args[1]))
        except UnicodeDecodeError as exc:
            raise answer.fail(f"raised UnicodeDecodeError: {exc}\n  (on {case.where}).\n  Probably: bytes that are "
                              f"not valid UTF-8 need .decode('utf-8', errors='replace')") from exc
        except Exception as exc:  # the reader's code: report it with the input that triggered it
            raise answer.fail(f"raised {type(exc).__name__}: {exc}\n  (on {case.where})") from exc

    def convert(answer: Answer, out: Any, where: str) -> str:
        if isinstance(out, bytes):
            raise answer.fail(f"returned bytes on {where}; decode them to a str (UTF-8, errors='replace')")
        if not isinstance(out, str):
            raise answer.fail(f"returned {type(out).__name__} on {where}; return a str")
        return out

    def report(answer: Answer, got, expected, case: Case, hints: list[str]):
        return answer.fail(f"on {case.where} expected {expected!r}, got {got!r}" + probably(hints))

    run_check(fn, "check_decode", cases, reference=_decode_reference, call=call, convert=convert,
              agree=lambda got, expected: got == expected, mistakes=_decode_mistakes, report=report,
              passed=f"decodes like BytePairTokenizer.decode on {len(cases)} id lists")
