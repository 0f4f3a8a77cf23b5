"""Chapter 8's exercise checks (RoPE): each accepts right answers written in different ways,
rejects the usual wrong ones with the matching explanation, and reminds when unanswered."""

import math

import pytest
import torch

from mini_gpt import course
from mini_gpt.course.rope import library_frequencies
from mini_gpt.rope import RotaryEmbedding

from check_helpers import fails, passes

# ---------------------------------------------------------------------------- frequencies


def frequencies(head_dim, base):
    return base ** (-torch.arange(0, head_dim, 2) / head_dim)


def test_frequencies_right_answers(capsys):
    assert "5 (head_dim, base) pairs" in passes(course.check_rope_frequencies, frequencies, capsys)

    def with_logs(head_dim, base):  # another way to write the same numbers, in float64
        i = torch.arange(head_dim // 2, dtype=torch.float64)
        return torch.exp(-2 * i / head_dim * math.log(base))

    passes(course.check_rope_frequencies, with_logs, capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda d, b: b ** (-torch.arange(d // 2) / d), r"the exponent lacks the 2"),
        (lambda d, b: b ** (torch.arange(0, d, 2) / d), r"the exponent is positive"),
        (lambda d, b: 2 * math.pi * b ** (torch.arange(0, d, 2) / d), r"these are wavelengths"),
        (lambda d, b: frequencies(d, b).flip(0), r"the order is reversed"),
        (lambda d, b: b ** (-torch.arange(2, d + 2, 2) / d), r"i starts at 1"),
        (lambda d, b: b ** (-torch.arange(0, d, 2) / (d / 2)), r"divided by head_dim / 2"),
        (lambda d, b: b ** (-torch.arange(d) / d), r"shape \(8,\); one frequency per \*pair\*"),
        (lambda d, b: torch.arange(d // 2), r"dtype torch.int64 .* floating point"),
        (lambda d, b: frequencies(d, b) * 1.01, r"expected \[1.0, 0.1, 0.01, 0.001\], got \[1.01,"),
    ],
)
def test_frequencies_wrong_answers(wrong, match):
    fails(course.check_rope_frequencies, wrong, match)


def test_frequencies_are_compared_with_the_library():
    # the check's reference really is what RotaryEmbedding turns pair i by per position
    theta = library_frequencies(16, 10000.0)
    rope = RotaryEmbedding(16, max_len=4)
    torch.testing.assert_close(rope.cos_cached[3, :8].double(), (3 * theta).cos(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- rotating pairs


def rotate(x, offset, base=10000.0):
    d, T = x.shape[-1], x.shape[-2]
    theta = base ** (-torch.arange(0, d, 2) / d)  # (d/2,)
    angle = (torch.arange(T) + offset)[:, None] * theta  # (T, d/2)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def rotate_complex(x, offset):
    d, T = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = (torch.arange(T) + offset)[:, None] * theta
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1).float()


def rotate_loop(x, offset):
    """One pair and one position at a time, with 2x2 rotation matrices."""
    d, T = x.shape[-1], x.shape[-2]
    out = x.clone()
    for t in range(T):
        for j in range(d // 2):
            a = (offset + t) * 10000.0 ** (-2 * j / d)
            R = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            pair = torch.stack((x[..., t, j], x[..., t, j + d // 2]), dim=-1)  # (..., 2)
            turned = pair @ R.T
            out[..., t, j], out[..., t, j + d // 2] = turned[..., 0], turned[..., 1]
    return out


@pytest.mark.parametrize("right", [rotate, rotate_complex, rotate_loop])
def test_rotate_pairs_right_answers(right, capsys):
    assert "4 shapes and offsets" in passes(course.check_rotate_pairs, right, capsys)


def rotate_interleaved(x, offset):
    d, T = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-torch.arange(0, d, 2) / d)
    angle = (torch.arange(T) + offset)[:, None] * theta
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


def rotate_backwards(x, offset, sign=-1.0):
    d, T = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-torch.arange(0, d, 2) / d)
    angle = (torch.arange(T) + offset)[:, None] * theta
    cos, sin = angle.cos(), sign * angle.sin()
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def rotate_without_the_2(x, offset):
    d, T = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-torch.arange(d // 2) / d)
    angle = (torch.arange(T) + offset)[:, None] * theta
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()), dim=-1)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (rotate_interleaved, r"neighbours \(2j, 2j\+1\), the paper's interleaved layout"),
        (rotate_backwards, r"turns the wrong way"),
        (lambda x, offset: rotate(x, 0), r"offset=3 .* the offset is ignored"),
        (lambda x, offset: rotate(x, offset + 1), r"the positions start at 1"),
        (rotate_without_the_2, r"the frequencies lack the 2"),
        (lambda x, offset: x, r"x comes back unrotated"),
        (lambda x, offset: rotate(x, offset, base=100.0), r"differs from mini_gpt.rope.RotaryEmbedding by up to"),
        (lambda x, offset: rotate(x, offset)[..., : x.shape[-1] // 2], r"has shape \(1, 1, 5, 4\), but .* \(1, 1, 5, 8\)"),
        (lambda x, offset: (rotate(x, offset), x), r"returned a tuple of 2 items"),
    ],
)
def test_rotate_pairs_wrong_answers(wrong, match):
    fails(course.check_rotate_pairs, wrong, match)


# ---------------------------------------------------------------------------- relative scores


def relative_scores(q, k, distances):
    return torch.stack([rotate(q[None], int(t))[0] @ k for t in distances])


def relative_scores_library(q, k, distances):
    """Rotating both with the library, at positions far from 0: only the distance matters."""
    d = q.shape[-1]
    rope = RotaryEmbedding(d, max_len=8)
    scores = []
    for t in distances.tolist():
        rq, _ = rope(q.view(1, 1, 1, d), q.view(1, 1, 1, d), offset=1000 + t)
        _, rk = rope(k.view(1, 1, 1, d), k.view(1, 1, 1, d), offset=1000)
        scores.append((rq * rk).sum())
    return torch.stack(scores)


@pytest.mark.parametrize("right", [relative_scores, relative_scores_library])
def test_relative_scores_right_answers(right, capsys):
    assert "15 distances" in passes(course.check_relative_scores, right, capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda q, k, D: (q @ k).repeat(len(D)), r"do not change with distance"),
        (lambda q, k, D: torch.stack([rotate(k[None], int(t))[0] @ q for t in D]), r"the sign of the distance is flipped"),
        (lambda q, k, D: relative_scores(q, k, D) / math.sqrt(q.numel()), r"divided by sqrt\(head_dim\)"),
        (lambda q, k, D: torch.stack([rotate_interleaved(q[None], int(t))[0] @ k for t in D]), r"neighbours \(2j, 2j\+1\)"),
        (lambda q, k, D: relative_scores(q, k, D)[:, None], r"shape \(5, 1\); return one score per distance"),
        (lambda q, k, D: relative_scores(q, k, D + 1), r"differs from RoPE scores .* by up to"),
    ],
)
def test_relative_scores_wrong_answers(wrong, match):
    fails(course.check_relative_scores, wrong, match)
