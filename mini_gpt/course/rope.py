"""The RoPE chapter's exercises: the rotation frequencies, rotating the pairs of a head, and
attention scores that depend only on the distance between query and key."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..rope import RotaryEmbedding
from .checking import Answer, Case, probably, random_generator, run_check

__all__ = ["check_rope_frequencies", "check_rotate_pairs", "check_relative_scores"]


def library_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """theta_i as mini_gpt.rope uses them, read off its tables: the angle of pair i at position 1."""
    rope = RotaryEmbedding(head_dim, max_len=2, base=base)
    half = head_dim // 2
    # every theta_i <= 1 radian, so atan2 gives back the angle itself
    return torch.atan2(rope.sin_cached[1, :half], rope.cos_cached[1, :half]).double()


def _rope_variant(x: torch.Tensor, offset: int, *, pairing: str = "half", sign: float = 1.0, start: int = 0,
                  exponent: float = 2.0, base: float = 10000.0) -> torch.Tensor:
    """A (possibly wrong) rotary embedding of x (..., T, d), in float64, for diagnosing answers."""
    d, T = x.shape[-1], x.shape[-2]
    theta = base ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)  # (d/2,)
    pos = torch.arange(T, dtype=torch.float64) + offset + start  # (T,)
    angle = pos[:, None] * theta  # (T, d/2)
    cos, sin = angle.cos(), sign * angle.sin()
    x = x.double()
    if pairing == "half":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # interleaved: neighbours (2j, 2j+1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------- frequencies


def _frequencies_form(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    if not out.is_floating_point():
        raise answer.fail(f"returned dtype {out.dtype} on {case.where}; the frequencies are fractions: "
                          f"compute them in floating point (e.g. torch.arange(...).float())")
    half = expected.numel()
    if out.dim() != 1 or out.numel() != half:
        hint = ("one frequency per *pair* of dimensions: head_dim // 2 values, i = 0 .. head_dim/2 - 1"
                if out.numel() == 2 * half else f"return a 1-D tensor of head_dim // 2 = {half} values")
        raise answer.fail(f"on {case.where} the result has shape {tuple(out.shape)}; {hint}")


def _frequencies_mistakes(d: int, base: float):
    i = torch.arange(d // 2, dtype=torch.float64)
    return [
        ("the exponent lacks the 2: theta_i = base ** (-2 * i / head_dim), with i counting pairs",
         lambda: base ** (-i / d)),
        ("the exponent is positive: the frequencies must shrink, theta_i = base ** (-2i / head_dim)",
         lambda: base ** (2 * i / d)),
        ("these are wavelengths (2 pi / theta_i, in positions), not frequencies",
         lambda: 2 * math.pi * base ** (2 * i / d)),
        ("the order is reversed: theta_0 = 1 (the fastest pair) comes first", lambda: (base ** (-2 * i / d)).flip(0)),
        ("i starts at 1; it starts at 0, so the first pair turns by exactly 1 radian per position",
         lambda: base ** (-2 * (i + 1) / d)),
        ("the exponent is divided by head_dim / 2 as well as multiplied by 2: use 2i / head_dim",
         lambda: base ** (-4 * i / d)),
    ]


def _report_frequencies(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case, hints: list[str]):
    rel = float(((out.double() - expected).abs() / expected).max())
    more = " ..." if expected.numel() > 4 else ""
    return answer.fail(f"on {case.where} expected {[round(v, 6) for v in expected.tolist()[:4]]}{more}, got "
                       f"{[round(v, 6) for v in out.double().tolist()[:4]]}{more} (largest relative difference "
                       f"{rel:.3g}, allowed 1e-4)" + probably(hints[:1]))


def check_rope_frequencies(fn: Callable[[int, float], torch.Tensor]) -> None:
    """fn(head_dim, base) -> (head_dim // 2,) rotation frequencies theta_i = base ** (-2i / head_dim),
    fastest first. Compared with the angles that `mini_gpt.rope.RotaryEmbedding` turns pair i by
    per position."""
    pairs = ((8, 10000.0), (16, 10000.0), (32, 500.0), (64, 1e6), (2, 10000.0))
    run_check(fn, "check_rope_frequencies", [Case(f"head_dim={d}, base={base:g}", (d, base)) for d, base in pairs],
              reference=library_frequencies, atol=1e-12, validate=_frequencies_form, mistakes=_frequencies_mistakes,
              report=_report_frequencies,
              passed=f"matches mini_gpt.rope's frequencies for {len(pairs)} (head_dim, base) pairs")


# ---------------------------------------------------------------------------- rotating pairs


def _rotated(x: torch.Tensor, offset: int) -> torch.Tensor:
    rotated, _ = RotaryEmbedding(x.shape[-1], max_len=x.shape[-2] + offset)(x, x, offset=offset)
    return rotated


def _rotate_mistakes(x: torch.Tensor, offset: int):
    return [
        ("x comes back unrotated", lambda: x),
        ("the pairs are neighbours (2j, 2j+1), the paper's interleaved layout; mini_gpt pairs dimension "
         "j with j + head_dim/2 (x1, x2 = x.chunk(2, dim=-1))", lambda: _rope_variant(x, offset, pairing="pairs")),
        ("the rotation turns the wrong way: a pair (a, b) becomes (a cos - b sin, a sin + b cos)",
         lambda: _rope_variant(x, offset, sign=-1.0)),
        ("the offset is ignored: position t of x is offset + t", lambda: _rope_variant(x, 0)),
        ("the positions start at 1: the first token of x sits at position offset, not offset + 1",
         lambda: _rope_variant(x, offset, start=1)),
        ("the frequencies lack the 2: theta_i = 10000 ** (-2i / head_dim)",
         lambda: _rope_variant(x, offset, exponent=1.0)),
    ]


def check_rotate_pairs(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """fn(x, offset) -> x rotated as RoPE rotates queries and keys: x has shape (B, H, T, head_dim),
    position t of the sequence is offset + t, base 10000, and dimension j is paired with
    j + head_dim/2 (mini_gpt's and Llama's "rotate half" layout). Compared with
    `mini_gpt.rope.RotaryEmbedding(head_dim, ...)(x, x, offset)`."""
    g = random_generator(8)
    inputs = (((1, 1, 5, 8), 0), ((2, 3, 7, 16), 3), ((1, 2, 4, 32), 100), ((2, 1, 1, 4), 9))
    cases = [Case(f"x of shape {shape}, offset={offset}", (torch.randn(shape, generator=g), offset))
             for shape, offset in inputs]
    run_check(fn, "check_rotate_pairs", cases, reference=_rotated, against="mini_gpt.rope.RotaryEmbedding",
              atol=1e-4, mistakes=_rotate_mistakes,
              passed=f"matches mini_gpt.rope.RotaryEmbedding on {len(inputs)} shapes and offsets")


# ---------------------------------------------------------------------------- scores by distance

_SHIFT = 7  # where the key sits: any position gives the same scores, that is the point


def _scores(q: torch.Tensor, k: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    d = q.shape[-1]
    dist = distances.tolist()
    rope = RotaryEmbedding(d, max_len=_SHIFT + max(dist) + 1)
    scores = []
    for delta in dist:
        rq, _ = rope(q.view(1, 1, 1, d), q.view(1, 1, 1, d), offset=_SHIFT + delta)  # the query, later
        _, rk = rope(k.view(1, 1, 1, d), k.view(1, 1, 1, d), offset=_SHIFT)  # the key
        scores.append((rq * rk).sum())
    return torch.stack(scores)


def _scores_form(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    if out.shape != expected.shape and out.numel() == expected.numel():
        raise answer.fail(f"on {case.where} the result has shape {tuple(out.shape)}; return one score per "
                          f"distance, shape ({expected.numel()},)")


def _scores_mistakes(q: torch.Tensor, k: torch.Tensor, distances: torch.Tensor):
    d, dist = q.shape[-1], distances.tolist()
    qq, kk = q[None, None, None], k[None, None, None]  # (1, 1, 1, d)

    def rotated(x, deltas, **kw):
        return torch.cat([_rope_variant(x, int(t), **kw) for t in deltas], dim=-2)[0, 0]  # (N, d)

    return [
        ("the scores do not change with distance: rotate q by the distance before the dot product",
         lambda: (q @ k).expand(len(dist))),
        ("the sign of the distance is flipped: the query comes *after* the key, so rotate q forward by "
         "the distance (or k backward), not k forward", lambda: rotated(kk, dist) @ q.double()),
        ("the scores are divided by sqrt(head_dim); return the plain dot product",
         lambda: rotated(qq, dist) @ k.double() / math.sqrt(d)),
        ("the pairs are neighbours (2j, 2j+1); mini_gpt pairs dimension j with j + head_dim/2",
         lambda: rotated(qq, dist, pairing="pairs") @ k.double()),
    ]


def check_relative_scores(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(q, k, distances) -> (N,) scores: for a query q and a key k (both (head_dim,) vectors) and
    every distance in `distances` (N,), the dot product of q and k after RoPE, when the query sits
    that many positions *after* the key. No 1/sqrt(head_dim) scaling.

    Compared with `mini_gpt.rope.RotaryEmbedding` rotating q at position 7 + distance and k at
    position 7 (where the pair starts does not matter: that is the point)."""
    g = random_generator(9)
    inputs = ((8, [0, 1, 2, 3, 10]), (16, [5, 0, 40, 1, 200]), (64, [0, 1, 7, 64, 150]))
    cases = []
    for d, dist in inputs:
        q, k = torch.randn(2, d, generator=g)
        cases.append(Case(f"head_dim={d}, distances={dist}", (q, k, torch.tensor(dist))))
    run_check(fn, "check_relative_scores", cases, reference=_scores,
              against="RoPE scores from mini_gpt.rope.RotaryEmbedding", atol=2e-3, validate=_scores_form,
              mistakes=_scores_mistakes,
              passed=f"matches mini_gpt.rope's scores for {sum(len(d) for _, d in inputs)} distances (3 head sizes)")
