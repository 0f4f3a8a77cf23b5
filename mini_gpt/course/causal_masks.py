"""The causal masks chapter's exercises: the boolean causal mask, the mask of new queries after a
cache (`offset_causal_mask`), and causal attention itself."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..masks import causal_mask, offset_causal_mask
from .checking import Answer, Case, random_generator, run_check

__all__ = ["check_causal_mask", "check_offset_causal_mask", "check_attention"]


# ---------------------------------------------------------------------------- masks


def _mask_shape(answer: Answer, out: torch.Tensor, expected: torch.Tensor, where: str, dims: str) -> None:
    if out.shape != expected.shape:
        raise answer.fail(f"for {where} the mask has shape {tuple(out.shape)}; it must be ({dims}) = "
                          f"{tuple(expected.shape)}")


def _not_bool(answer: Answer, out: torch.Tensor) -> AssertionError:
    return answer.fail(f"return a bool tensor (True = may attend), got dtype {out.dtype}")


def _causal_mask_form(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    _mask_shape(answer, out, expected, case.where, "T, T")
    if out.dtype != torch.bool:  # two float masks that are almost right get their own message
        additive = out.is_floating_point() and torch.equal(torch.isneginf(out), ~expected)
        if additive and bool((out[expected] == 0).all()):
            raise answer.fail("this is the additive bias (0 and -inf, mini_gpt.masks.causal_bias), not the "
                              "boolean mask: return True where attending is allowed")
        if torch.equal(out.ne(0), expected):
            raise answer.fail(f"the pattern is right but the dtype is {out.dtype}; the convention "
                              f"(F.scaled_dot_product_attention's) is a bool tensor: add .bool() or dtype=torch.bool")
        raise _not_bool(answer, out)


def _offset_mask_form(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    _mask_shape(answer, out, expected, case.where, "T, S")
    if out.dtype != torch.bool:
        raise _not_bool(answer, out)


def _wrong_mask(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case, hints: list[str]):
    hint = hints[0] if hints else f"expected\n{expected.int()}\n  got\n{out.int()}"
    return answer.fail(f"wrong mask for {case.where}: {hint}")


def _causal_mask_mistakes(T: int):
    right = causal_mask(T)
    return [
        ("this is the upper triangle: query i may see keys j >= i, i.e. the future. "
         "Row i must be True up to and including column i: torch.tril, not torch.triu", lambda: right.T),
        ("True and False are swapped: True must mean 'may attend' (the past), not 'masked out'", lambda: ~right),
        ("the diagonal is False, but every token must be able to attend to itself (row 0 "
         "would be all False, and softmax of a row of -inf is NaN)", lambda: right & ~torch.eye(T, dtype=torch.bool)),
        ("this marks the strict past as False; True must be where j <= i", lambda: ~right.T),
    ]


def check_causal_mask(fn: Callable[[int], torch.Tensor]) -> None:
    """fn(T) -> bool (T, T), True where query i may attend to key j (j <= i).

    Compared with `mini_gpt.masks.causal_mask` for several T.
    """
    sizes = (4, 1, 2, 7)  # 4 first: the usual mistakes are told apart there (at T=1 many coincide)
    run_check(fn, "check_causal_mask", [Case(f"T={T}", (T,)) for T in sizes], reference=causal_mask,
              validate=_causal_mask_form, agree=torch.equal, mistakes=_causal_mask_mistakes, report=_wrong_mask,
              passed=f"matches mini_gpt.masks.causal_mask for T = {', '.join(map(str, sorted(sizes)))}")


def _offset_mask_mistakes(T: int, S: int):
    mistakes = [("True and False are swapped: True must mean 'may attend'", lambda: ~offset_causal_mask(T, S))]
    if T < S:  # where T == S the triangle from column 0 is the right answer
        mistakes.insert(0, ("the triangle starts at column 0, as if the new queries were the first tokens; query i "
                            "sits at position (S - T) + i, so shift the diagonal: tril(diagonal=S - T)",
                            lambda: torch.ones(T, S, dtype=torch.bool).tril()))
    return mistakes


def check_offset_causal_mask(fn: Callable[[int, int], torch.Tensor]) -> None:
    """fn(T, S) -> bool (T, S): T new queries that come after S - T cached keys.

    Compared with `mini_gpt.masks.offset_causal_mask`.
    """
    pairs = ((1, 1), (3, 3), (1, 6), (2, 5), (3, 7))
    run_check(fn, "check_offset_causal_mask", [Case(f"T={T}, S={S}", (T, S)) for T, S in pairs],
              reference=offset_causal_mask, validate=_offset_mask_form, agree=torch.equal,
              mistakes=_offset_mask_mistakes, report=_wrong_mask,
              passed=f"matches mini_gpt.masks.offset_causal_mask on {len(pairs)} (T, S) pairs")


# ---------------------------------------------------------------------------- attention


def _attention_variant(q, k, v, *, scale="sqrt", mask="causal", dim=-1, weights=False):
    """Causal attention with one deliberate mistake (or none), for diagnosing answers."""
    d = q.shape[-1]
    s = q @ k.transpose(-2, -1)
    s = s / {"sqrt": math.sqrt(d), "d": d, "none": 1.0}[scale]
    T, S = s.shape[-2:]
    if mask == "causal":
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))
    elif mask == "upper":
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).triu(), float("-inf"))
    elif mask == "zero":  # masked scores set to 0 instead of -inf: they still get weight
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), 0.0)
    w = torch.softmax(s, dim=dim)
    return w if weights else w @ v


def _attention_mistakes(q, k, v):
    return [
        ("no causal mask: every query also attends to later keys (the future)",
         lambda: _attention_variant(q, k, v, mask="none")),
        ("the scores are not scaled: divide q @ k^T by sqrt(head size)",
         lambda: _attention_variant(q, k, v, scale="none")),
        ("the scores are divided by the head size; divide by its square root",
         lambda: _attention_variant(q, k, v, scale="d")),
        ("the mask keeps the upper triangle (the future) instead of the lower one: use tril",
         lambda: _attention_variant(q, k, v, mask="upper")),
        ("masked scores are set to 0, which still gets weight after softmax: set them to -inf",
         lambda: _attention_variant(q, k, v, mask="zero")),
        ("softmax runs over the queries (dim=-2); it must run over the keys (dim=-1), so each row sums to 1",
         lambda: _attention_variant(q, k, v, dim=-2)),
        ("this returns the attention weights; multiply them by v", lambda: _attention_variant(q, k, v, weights=True)),
    ]


def check_attention(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(q, k, v) -> causal attention output, all (B, H, T, hs).

    Compared with `F.scaled_dot_product_attention(q, k, v, is_causal=True)` on several shapes.
    """
    shapes = ((1, 1, 4, 8), (2, 3, 6, 16), (1, 2, 1, 4), (2, 4, 9, 5))
    g = random_generator(1)
    cases = [Case(f"q, k, v of shape {shape}", tuple(torch.randn(shape, generator=g) for _ in range(3)))
             for shape in shapes]
    run_check(fn, "check_attention", cases,
              reference=lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
              against="F.scaled_dot_product_attention(is_causal=True)", atol=1e-5, mistakes=_attention_mistakes,
              passed=f"matches causal F.scaled_dot_product_attention on {len(shapes)} shapes")
