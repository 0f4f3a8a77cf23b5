"""The sampling chapter's exercises: the filters `generate` applies to a batch of next-token logits
(top-k, top-p, the repetition penalty) and the distribution it finally samples from."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch

from ..generate import apply_repetition_penalty, top_k_filter, top_p_filter
from .checking import Answer, Case, mismatch, probably, random_generator, run_check

__all__ = ["check_top_k_filter", "check_top_p_filter", "check_repetition_penalty", "check_sampling_probs"]

_NEG_INF = float("-inf")
_ATOL = 1e-6


def _logits(seed: int, shapes: Iterable[tuple[int, int]], scale: float = 2.0) -> list[torch.Tensor]:
    g = random_generator(seed)
    return [torch.randn(shape, generator=g) * scale for shape in shapes]


def _all_logits(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case) -> None:
    """Refuses an answer that returns only the kept tokens of each row."""
    B, V = expected.shape
    if out.shape != expected.shape and out.dim() == 2 and out.shape[0] == B and out.shape[1] < V:
        raise answer.fail(f"on {case.where} the result has shape {tuple(out.shape)}: these are only the kept tokens; "
                          f"return all {V} logits of each row, with the ruled-out ones set to -inf")


def _filter_mismatch(answer: Answer, out: torch.Tensor, expected: torch.Tensor, case: Case, hints: list[str], *,
                     against: str) -> AssertionError:
    """Like `mismatch`, but says how many tokens each row keeps (-inf compared with -inf is not a number)."""
    hint = hints[0] if hints else None
    if out.shape == expected.shape:
        V = out.shape[-1]
        out_cut, exp_cut = torch.isneginf(out), torch.isneginf(expected)
        differs = (out_cut != exp_cut).any(-1)
        if bool(differs.any()):
            r = int(differs.nonzero()[0, 0])
            got, want = V - int(out_cut[r].sum()), V - int(exp_cut[r].sum())
            same = " (the same number, but not the same tokens)" if got == want else ""
            return answer.fail(f"on {case.where}, row {r} keeps {got} of its {V} tokens (logits above -inf); "
                               f"{against} keeps {want}{same}" + probably(hint))
        if not bool(out.isfinite().eq(expected.isfinite()).all()):
            return answer.fail(f"on {case.where} the result holds inf or nan where {against} does not" + probably(hint))
        out, expected = out.masked_fill(out_cut, 0.0), expected.masked_fill(exp_cut, 0.0)
    return mismatch(answer, out, expected, case.where, against, hint, _ATOL)


def _run_filter_check(fn, check: str, cases: list[Case], *, reference, against: str, mistakes, passed: str) -> None:
    """What the four checks share: logits in, all logits (or probabilities) out, within 1e-6."""
    run_check(fn, check, cases, reference=reference, atol=_ATOL, mistakes=mistakes, validate=_all_logits,
              report=functools.partial(_filter_mismatch, against=against), passed=passed)


# ---------------------------------------------------------------------------- top-k


def _top_k_mistakes(logits: torch.Tensor, k: int):
    def keep_top(n):
        kth = torch.topk(logits, n, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, _NEG_INF)

    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return [
        ("nothing is ruled out: set every logit below the k-th largest of its row to -inf", lambda: logits),
        ("one token too few: logits <= kth also drops the k-th largest; drop only the logits strictly "
         "below it (logits < kth)", lambda: logits.masked_fill(logits <= kth, _NEG_INF)),
        ("one token too many: keep the k largest (torch.topk(logits, k)), not k + 1", lambda: keep_top(k + 1)),
        ("the ruled-out tokens are set to 0, which still has a probability; set them to -inf",
         lambda: logits.masked_fill(logits < kth, 0.0)),
        ("the ruled-out tokens are set to a large negative number; use -inf (float('-inf')), so their "
         "probability is exactly 0", lambda: logits.masked_fill(logits < kth, -1e9)),
        ("this keeps the k smallest logits; keep the k largest",
         lambda: logits.masked_fill(logits > torch.topk(logits, k, dim=-1, largest=False).values[..., -1:],
                                    _NEG_INF)),
        ("these are probabilities (softmax); return the filtered logits", lambda: top_k_filter(logits, k).softmax(-1)),
        ("one threshold for the whole batch: each row needs its own k-th largest "
         "(torch.topk(logits, k, dim=-1).values[..., -1:])",
         lambda: logits.masked_fill(logits < torch.topk(logits.flatten(), k).values[-1], _NEG_INF)),
    ]


def check_top_k_filter(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """fn(logits (B, V), k) -> the logits with all but the k largest of each row set to -inf.

    Compared with `mini_gpt.generate.top_k_filter` on batches whose rows differ.
    """
    a, b, c = _logits(61, [(2, 8), (3, 65), (2, 65)])
    c[0, :20] = _NEG_INF  # a row an earlier filter already cut
    b[1] += 5.0  # rows on different scales: each needs its own threshold
    cases = [Case(f"logits of shape {tuple(logits.shape)}, k={k}", (logits, k)) for logits, k in
             [(a, 3), (b, 1), (c, 10), (a, 8)]]
    _run_filter_check(fn, "check_top_k_filter", cases, reference=top_k_filter, against="top_k_filter",
                      mistakes=_top_k_mistakes,
                      passed=f"matches mini_gpt.generate.top_k_filter on {len(cases)} batches")


# ---------------------------------------------------------------------------- top-p


def _top_p_variant(logits: torch.Tensor, p: float, *, drop: str = "before", order: str = "desc",
                   on: str = "probs", scatter: bool = True) -> torch.Tensor:
    """Nucleus filtering with one deliberate mistake (or none), for diagnosing answers."""
    sorted_logits, index = torch.sort(logits, descending=order == "desc", dim=-1)
    probs = sorted_logits.softmax(-1) if on == "probs" else sorted_logits
    cum = probs.cumsum(-1)
    mask = cum - probs >= p if drop == "before" else cum >= p
    if scatter:
        mask = mask.scatter(-1, index, mask)
    return logits.masked_fill(mask, _NEG_INF)


def _top_p_mistakes(logits: torch.Tensor, p: float):
    probs = logits.softmax(-1)
    return [
        ("nothing is ruled out: set the logits of the tokens outside the nucleus to -inf", lambda: logits),
        ("the token that makes the mass reach p is dropped; it belongs to the nucleus. Drop a token only "
         "when the tokens before it already reach p (cumsum - prob >= p)",
         lambda: _top_p_variant(logits, p, drop="after")),
        ("the mask is still in sorted order; put it back in vocabulary order (scatter it with the "
         "indices the sort returned)", lambda: _top_p_variant(logits, p, scatter=False)),
        ("the tokens are sorted from least to most likely; sort in descending order",
         lambda: _top_p_variant(logits, p, order="asc")),
        ("the cumulative sum adds up logits; turn them into probabilities (softmax) first",
         lambda: _top_p_variant(logits, p, on="logits")),
        ("this keeps the tokens whose own probability is at least p; the nucleus is the smallest set "
         "of most likely tokens whose probabilities add up to p", lambda: logits.masked_fill(probs < p, _NEG_INF)),
        ("the ruled-out tokens are set to 0, which still has a probability; set them to -inf",
         lambda: logits.masked_fill(torch.isneginf(top_p_filter(logits, p)), 0.0)),
        ("these are probabilities (softmax); return the filtered logits", lambda: top_p_filter(logits, p).softmax(-1)),
    ]


def check_top_p_filter(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """fn(logits (B, V), p) -> the logits with every token outside each row's nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probabilities add up to at least p.
    Compared with `mini_gpt.generate.top_p_filter` on batches whose rows keep different numbers of tokens.
    """
    # row 0: probabilities 0.5, 0.2, 0.15, ... shuffled; row 1 flatter; both out of order
    worked = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15], [0.15, 0.3, 0.1, 0.25, 0.2]]).log() + 2.0
    rows = [[round(x, 2) for x in row] for row in worked.softmax(-1).tolist()]
    a, b = _logits(62, [(3, 65), (2, 65)])
    cases = [Case(f"logits whose probabilities are {rows}, p={p}", (worked, p)) for p in (0.6, 0.8)]
    cases += [Case(f"logits of shape {tuple(logits.shape)}, p={p}", (logits, p)) for logits, p in
              [(a, 0.9), (b * 0.3 + 3.0, 0.5)]]
    _run_filter_check(fn, "check_top_p_filter", cases, reference=top_p_filter, against="top_p_filter",
                      mistakes=_top_p_mistakes,
                      passed=f"matches mini_gpt.generate.top_p_filter on {len(cases)} batches")


# ---------------------------------------------------------------------------- repetition penalty


def _penalty_mistakes(logits: torch.Tensor, seen: torch.Tensor, penalty: float):
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return [
        ("nothing changed: penalise the logits of the tokens where seen is True", lambda: logits),
        ("every seen logit is divided by the penalty, but dividing a negative logit by a penalty > 1 "
         "moves it up, towards 0: multiply the negative ones by the penalty",
         lambda: torch.where(seen, logits / penalty, logits)),
        ("multiplying and dividing are swapped: divide the positive logits by the penalty, multiply the "
         "negative ones", lambda: torch.where(seen, torch.where(logits < 0, logits / penalty, logits * penalty),
                                              logits)),
        ("the tokens that were not seen are penalised; penalise those where seen is True",
         lambda: torch.where(seen, logits, penalised)),
        ("every token is penalised; only those already seen should be", lambda: penalised),
        ("the penalty is subtracted; CTRL's penalty divides positive logits and multiplies negative ones",
         lambda: torch.where(seen, logits - penalty, logits)),
    ]


def check_repetition_penalty(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """fn(logits (B, V), seen bool (B, V), penalty) -> the logits after CTRL's repetition penalty:
    for the tokens already seen, positive logits divided by the penalty, negative ones multiplied.

    Compared with `mini_gpt.generate.apply_repetition_penalty`, with penalties above and below 1.
    """
    g = random_generator(63)
    cases = []
    for (B, V), penalty in (((2, 10), 1.5), ((3, 65), 1.2), ((2, 12), 0.7)):
        logits = torch.randn(B, V, generator=g) * 2
        seen = torch.rand(B, V, generator=g) < 0.4
        cases.append(Case(f"logits of shape {tuple(logits.shape)}, penalty={penalty}", (logits, seen, penalty)))
    _run_filter_check(fn, "check_repetition_penalty", cases, reference=apply_repetition_penalty,
                      against="apply_repetition_penalty", mistakes=_penalty_mistakes,
                      passed=f"matches mini_gpt.generate.apply_repetition_penalty on {len(cases)} batches "
                             f"(penalties above and below 1)")


# ---------------------------------------------------------------------------- what generate samples from


def sampling_probs(logits, temperature, top_k, top_p, *, order="kp", temp="first", use_k=True, use_p=True,
                   probs=True):
    """What `generate` samples from, with one deliberate mistake (or none)."""
    x = logits / temperature if temp == "first" else logits * temperature if temp == "times" else logits
    steps = [("k", top_k), ("p", top_p)] if order == "kp" else [("p", top_p), ("k", top_k)]
    for name, value in steps:
        if value is None or (name == "k" and not use_k) or (name == "p" and not use_p):
            continue
        x = top_k_filter(x, value) if name == "k" else top_p_filter(x, value)
    if temp == "last":
        x = x / temperature
    return x.softmax(-1) if probs else x


def _probs_mistakes(logits, temperature, top_k, top_p):
    args = (logits, temperature, top_k, top_p)
    return [
        ("these are logits; return probabilities (the softmax of the filtered logits, each row sums to 1)",
         lambda: sampling_probs(*args, probs=False)),
        ("the logits are multiplied by the temperature; divide them by it (a temperature below 1 sharpens)",
         lambda: sampling_probs(*args, temp="times")),
        ("the temperature is not applied: divide the logits by it", lambda: sampling_probs(*args, temp="none")),
        ("the probabilities are divided by the temperature; divide the logits by it, before the softmax",
         lambda: logits.softmax(-1) / temperature),
        ("the temperature comes after the filters; divide by it first, so that top-p measures the "
         "distribution you sample from (the nucleus depends on the temperature)",
         lambda: sampling_probs(*args, temp="last")),
        ("top-p is applied before top-k; generate (like transformers) applies top-k first, then top-p to "
         "the tokens that are left", lambda: sampling_probs(*args, order="pk")),
        ("top_k is not applied", lambda: sampling_probs(*args, use_k=False)),
        ("top_p is not applied", lambda: sampling_probs(*args, use_p=False)),
        ("the kept probabilities are not renormalised: take the softmax after filtering (the ruled-out "
         "tokens' logits are -inf), so each row sums to 1",
         lambda: (logits / temperature).softmax(-1) * (sampling_probs(*args) > 0)),
    ]


def check_sampling_probs(fn: Callable[[torch.Tensor, float, int | None, float | None], torch.Tensor]) -> None:
    """fn(logits (B, V), temperature, top_k, top_p) -> the probabilities (B, V) that `generate`
    samples the next token from (0 for the ruled-out tokens); top_k and top_p may be None (off).

    `generate` divides by the temperature first, then applies top-k, then top-p, then softmax.
    """
    a, b = _logits(64, [(2, 65), (3, 65)])
    settings = [(a, 1.0, None, None), (a, 0.5, None, None), (b, 0.7, None, 0.9), (a, 1.5, 10, None),
                (b, 0.8, 20, 0.7)]
    cases = [Case(f"logits of shape {tuple(args[0].shape)}, temperature={args[1]}, top_k={args[2]}, "
                  f"top_p={args[3]}", args) for args in settings]
    _run_filter_check(fn, "check_sampling_probs", cases, reference=sampling_probs, against="what generate samples from",
                      mistakes=_probs_mistakes, passed=f"matches what generate samples from in {len(cases)} settings")
