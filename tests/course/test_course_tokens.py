"""The tokens chapter's exercise checks: each accepts right answers written in different ways,
rejects the usual wrong ones with the matching explanation, and reminds when unanswered; and its
helpers (bits per byte of a model, the compression plot)."""

import math
from collections import Counter

import pytest
import torch

from mini_gpt import GPT, GPTConfig, course
from mini_gpt.bpe import BytePairTokenizer, train_bpe
from mini_gpt.tokenizer import CharTokenizer

from check_helpers import fails, passes

CHECKS = [course.check_pair_counts, course.check_merge_pair, course.check_decode]


@pytest.mark.parametrize("check", CHECKS)
def test_an_unanswered_exercise_gets_the_reminder(check, capsys):
    def my_answer(*args):
        ...

    assert check(my_answer) is None
    assert capsys.readouterr().out.startswith("\u270e my_answer returned None: write its body")


# ---------------------------------------------------------------------------- counting pairs


def test_pair_counts_right_answers(capsys):
    def with_a_dict(ids):
        counts = {}
        for a, b in zip(ids, ids[1:]):
            counts[(a, b)] = counts.get((a, b), 0) + 1
        return counts

    assert "7 texts" in passes(course.check_pair_counts, with_a_dict, capsys)
    passes(course.check_pair_counts, lambda ids: Counter(zip(ids, ids[1:])), capsys)


def _non_overlapping(ids):
    counts, i = Counter(), 0
    while i + 1 < len(ids):
        counts[(ids[i], ids[i + 1])] += 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return counts


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda ids: dict.fromkeys(zip(ids, ids[1:]), 1), r"every pair is counted once"),
        (_non_overlapping, r"overlapping pairs are skipped"),
        (lambda ids: Counter(zip(ids[:-1], ids[1:-1])), r"the last pair is missing"),
        (lambda ids: Counter(zip(ids, ids[2:])), r"adjacent means ids\[i \+ 1\]"),
        (lambda ids: Counter(zip(ids, ids[1:])).most_common(), r"returned list .* return a dict"),
        (lambda ids: {str(p): c for p, c in Counter(zip(ids, ids[1:])).items()}, r"keys are not pairs"),
    ],
)
def test_pair_counts_wrong_answers(wrong, match):
    fails(course.check_pair_counts, wrong, match)


# ---------------------------------------------------------------------------- one merge


def test_merge_right_answers(capsys):
    def by_index(ids, pair, new_id):
        positions = iter(range(len(ids)))
        out = []
        for i in positions:
            if tuple(ids[i:i + 2]) == pair:
                out.append(new_id)
                next(positions, None)  # the pair's second id is part of the new one
            else:
                out.append(ids[i])
        return out

    def with_a_flag(ids, pair, new_id):
        out, skip = [], False
        for i, x in enumerate(ids):
            if skip:
                skip = False
            elif tuple(ids[i:i + 2]) == pair:
                out.append(new_id)
                skip = True
            else:
                out.append(x)
        return out

    assert "6 cases" in passes(course.check_merge_pair, by_index, capsys)
    passes(course.check_merge_pair, lambda ids, pair, new_id: torch.tensor(with_a_flag(ids, pair, new_id)), capsys)


def _keeps_second(ids, pair, new_id):
    return [new_id if tuple(ids[i:i + 2]) == pair else x for i, x in enumerate(ids)]


def _drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _right_to_left(ids, pair, new_id):
    out, i = [], len(ids) - 1
    while i >= 0:
        if i >= 1 and (ids[i - 1], ids[i]) == pair:
            out.append(new_id)
            i -= 2
        else:
            out.append(ids[i])
            i -= 1
    return out[::-1]


@pytest.mark.parametrize(
    "wrong, match",
    [
        (_keeps_second, r"skip both ids of the pair \(i \+= 2\)"),
        (_drops_last, r"the last id is lost"),
        (_right_to_left, r"expected \[256, 97\], got \[97, 256\]\. Probably: merges go left to right"),
        (lambda ids, pair, new_id: bytes(ids), r"returned bytes .* return the new list of ids"),
    ],
)
def test_merge_wrong_answers(wrong, match):
    fails(course.check_merge_pair, wrong, match)


# ---------------------------------------------------------------------------- decoding


def _vocab(merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges:
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def test_decode_right_answers(capsys):
    def my_decode(ids, merges):
        vocab = _vocab(merges)
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    assert "6 id lists" in passes(course.check_decode, my_decode, capsys)
    passes(course.check_decode, lambda ids, merges: BytePairTokenizer(merges).decode(ids), capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda ids, m: "".join(_vocab(m)[i].decode("utf-8", errors="replace") for i in ids),
         r"each token is decoded on its own"),
        (lambda ids, m: b"".join(_vocab([((b, a), n) for (a, b), n in m])[i] for i in ids).decode("utf-8", "replace"),
         r"the bytes of a followed by those of b"),
        (lambda ids, m: b"".join(_vocab(m)[i] for i in ids).decode("utf-8", errors="ignore"),
         r"errors='ignore'"),
        (lambda ids, m: b"".join(_vocab(m)[i] for i in ids).decode("utf-8"),
         r"raised UnicodeDecodeError.*errors='replace'"),
        (lambda ids, m: b"".join(_vocab(m)[i] for i in ids), r"returned bytes .* decode them to a str"),
    ],
)
def test_decode_wrong_answers(wrong, match):
    fails(course.check_decode, wrong, match)


# ---------------------------------------------------------------------------- helpers


def test_bits_per_byte_on_counts_the_bytes_of_the_predicted_tokens():
    text = "to be or not to be, that is the question " * 20
    torch.manual_seed(0)
    for tok in (CharTokenizer.from_text(text), train_bpe(text, 300)):
        ids = torch.tensor(tok.encode(text))
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
        bpb = course.bits_per_byte_on(model, ids, tok, 8)
        n = (len(ids) - 1) // 8
        x, y = ids[: n * 8].view(n, 8), ids[1: n * 8 + 1].view(n, 8)
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        n_bytes = len(tok.decode(y.flatten().tolist()).encode("utf-8"))
        assert bpb == pytest.approx(loss.item() * y.numel() / (math.log(2) * n_bytes), rel=1e-5)
    with pytest.raises(ValueError, match="ids must be a 1-D tensor of more than block_size"):
        course.bits_per_byte_on(model, ids[:8], tok, 8)


def test_plot_compression():
    import matplotlib

    matplotlib.use("Agg")
    ax = course.plot_compression([256, 512, 1024], [1.0, 1.9, 2.3])
    assert ax.get_xlabel() == "vocabulary size (ids)" and len(ax.lines) == 2
    with pytest.raises(ValueError, match="of one length"):
        course.plot_compression([256, 512], [1.0])
