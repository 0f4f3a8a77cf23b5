"""The evaluation chapter's pieces: an earlier checkpoint of the shared model (to compare two models
honestly) and the exercise checks: distinct-n, the expected calibration error, and choosing a
multiple-choice answer by the likelihood per byte, each compared with `mini_gpt.evaluate`."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..evaluate import distinct_n, expected_calibration_error
from ..validation import check_int
from .checking import Answer, Case, as_float, as_int, probably, random_generator, run_check
from .shared import SHAKESPEARE_TRAINING, shakespeare_model, shakespeare_model_dir, train_shakespeare_model

__all__ = ["shakespeare_model_at", "check_distinct_n", "check_expected_calibration_error", "check_choose_option"]


def shakespeare_model_at(step: int):
    """The shared model as it was after `step` steps of its training, in eval mode.

    Read from the shared model's own folder when it still keeps that checkpoint (it keeps the last
    two); otherwise the recipe is trained to `step` once (resume is exact, so the weights are the
    same) and cached beside it.
    """
    from ..checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, load_model

    last = SHAKESPEARE_TRAINING["max_iters"]
    step = check_int("step", step, min=1, max=last)
    if step == last:
        return shakespeare_model(progress=False)
    shakespeare_model(progress=False)
    for path in list_checkpoints(shakespeare_model_dir()):
        if load_checkpoint(path).step == step:
            return load_model(path)[0].eval()
    out_dir = Path(f"{shakespeare_model_dir()}-step{step}")
    if not list_checkpoints(out_dir) or latest_checkpoint(out_dir).step != step:
        train_shakespeare_model(out_dir, max_iters=step, progress=False)
    return load_model(out_dir)[0].eval()


# ---------------------------------------------------------------------------- distinct-n


def _grams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def _distinct_mistakes(sequences, n):
    pooled = [g for s in sequences for g in _grams(s, n)]
    joined = [t for s in sequences for t in s]
    return [
        ("this is the number of distinct n-grams; divide it by the number of all n-grams",
         lambda: float(len(set(pooled)))),
        ("this is the share of repeated n-grams (1 - distinct-n); return unique / all",
         lambda: 1 - len(set(pooled)) / len(pooled)),
        ("the samples are joined into one sequence, so n-grams run across the end of one sample into the next; "
         "take the n-grams of each sample separately, then pool them",
         lambda: len(set(_grams(joined, n))) / len(_grams(joined, n))),
        ("one n-gram short per sample: a sequence of length L has L - n + 1 n-grams (range(len(s) - n + 1))",
         lambda: (lambda g: len(set(g)) / len(g))([tuple(s[i:i + n]) for s in sequences
                                                   for i in range(len(s) - n)])),
        ("this is the mean of each sample's own distinct-n; pool the n-grams of all samples first (a phrase "
         "every sample repeats is counted once)",
         lambda: sum(len(set(_grams(s, n))) / len(_grams(s, n)) for s in sequences) / len(sequences)),
    ]


def check_distinct_n(fn: Callable[[list, int], float]) -> None:
    """fn(sequences, n) -> unique n-grams / all n-grams, pooled over the samples (lists of token ids).

    Compared with `mini_gpt.evaluate.distinct_n`.
    """
    g = random_generator(71)
    cases = [Case("[[1, 2, 1, 2, 3]], n=2", ([[1, 2, 1, 2, 3]], 2)),
             Case("[[1, 2, 3], [1, 2, 4], [5, 1, 2]], n=2", ([[1, 2, 3], [1, 2, 4], [5, 1, 2]], 2))]
    for n in (1, 3):
        samples = [torch.randint(0, 4, (12,), generator=g).tolist() for _ in range(3)]
        cases.append(Case(f"3 samples of 12 tokens from 4, n={n}", (samples, n)))
    run_check(fn, "check_distinct_n", cases, reference=lambda s, n: distinct_n(s, n), against="distinct_n",
              atol=1e-6, mistakes=_distinct_mistakes, convert=as_float, agree=lambda a, b: math.isclose(a, b, abs_tol=1e-6),
              report=_number_report("distinct_n"), passed=f"matches mini_gpt.evaluate.distinct_n on {len(cases)} cases")


def _number_report(against: str):
    def report(answer: Answer, out: float, expected: float, case: Case, hints: list[str]) -> AssertionError:
        return answer.fail(f"on {case.where} it returned {out:.4g}, but {against} gives {expected:.4g}"
                           + probably(hints))

    return report


# ---------------------------------------------------------------------------- calibration


def _ece_variant(conf: torch.Tensor, correct: torch.Tensor, n_bins: int, *, weighted: bool = True,
                 signed: bool = False) -> float:
    which = (conf * n_bins).long().clamp(max=n_bins - 1)
    total, gaps = 0.0, []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            gap = correct[inside].double().mean() - conf[inside].double().mean()
            gap = gap if signed else gap.abs()
            gaps.append(float(gap))
            total += float(gap) * int(inside.sum()) / conf.numel()
    return total if weighted else sum(gaps) / len(gaps)


def _ece_mistakes(conf, correct, n_bins):
    return [
        ("each bin counts the same; weight each bin's |accuracy - confidence| by its share of the tokens",
         lambda: _ece_variant(conf, correct, n_bins, weighted=False)),
        ("the gaps are signed, so over- and underconfident bins cancel; take |accuracy - confidence|",
         lambda: _ece_variant(conf, correct, n_bins, signed=True)),
        ("one bin for everything: cut the confidences into n_bins bins first",
         lambda: abs(float(correct.double().mean() - conf.double().mean()))),
        ("a confidence of exactly 1 is left out: it belongs in the last bin "
         "(clamp the bin index to n_bins - 1)",
         lambda: _ece_variant(conf[conf < 1], correct[conf < 1], n_bins) * int((conf < 1).sum()) / conf.numel()),
    ]


def check_expected_calibration_error(fn: Callable[[torch.Tensor, torch.Tensor, int], float]) -> None:
    """fn(confidence (N,), correct (N,) bool, n_bins) -> the expected calibration error: the
    confidences cut into n_bins equal bins of [0, 1] (1.0 in the last), and the mean over tokens of
    |accuracy - mean confidence| of each token's bin. Compared with `mini_gpt.evaluate`."""
    g = random_generator(72)
    cases = []
    for n, n_bins, power in ((50, 5, 1.0), (400, 10, 0.5), (300, 4, 2.0)):
        conf = torch.rand(n, generator=g)
        correct = torch.rand(n, generator=g) < conf ** power  # over- and underconfident
        conf[:3] = 1.0  # sure of itself: these belong in the last bin
        cases.append(Case(f"{n} tokens, n_bins={n_bins}", (conf, correct, n_bins)))
    run_check(fn, "check_expected_calibration_error", cases, reference=expected_calibration_error,
              against="expected_calibration_error", mistakes=_ece_mistakes, convert=as_float,
              agree=lambda a, b: math.isclose(a, b, abs_tol=1e-6), report=_number_report("expected_calibration_error"),
              passed=f"matches mini_gpt.evaluate.expected_calibration_error on {len(cases)} cases")


# ---------------------------------------------------------------------------- multiple choice


def _choose(log_likelihoods: list[float], n_bytes: list[int]) -> int:
    scores = [lp / n for lp, n in zip(log_likelihoods, n_bytes, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


def _choose_mistakes(log_likelihoods, n_bytes):
    def best(scores):
        return max(range(len(scores)), key=scores.__getitem__)

    return [
        ("the summed log-likelihood favours short options (each byte adds a negative term); divide each "
         "option's log-likelihood by its bytes", lambda: best(log_likelihoods)),
        ("this picks the least likely option: log-likelihoods are negative, the largest (closest to 0) wins",
         lambda: min(range(len(log_likelihoods)), key=lambda i: log_likelihoods[i] / n_bytes[i])),
        ("multiplied by the bytes; divide by them",
         lambda: best([lp * n for lp, n in zip(log_likelihoods, n_bytes, strict=True)])),
    ]


def check_choose_option(fn: Callable[[list[float], list[int]], Any]) -> None:
    """fn(log_likelihoods, n_bytes) -> the index of the option with the highest log-likelihood per
    byte (how `mini_gpt.evaluate.multiple_choice` answers with normalize="byte")."""
    cases = [Case(f"log_likelihoods={lp}, n_bytes={n}", (lp, n)) for lp, n in [
        ([-12.0, -30.0, -9.0, -50.0], [10, 40, 4, 20]),  # the short option has the largest sum, not per byte
        ([-5.0, -4.5], [3, 2]),
        ([-40.0, -44.0, -60.0, -41.0], [20, 25, 30, 20]),
    ]]
    run_check(fn, "check_choose_option", cases, reference=_choose, against="the per-byte choice",
              mistakes=_choose_mistakes, convert=as_int, agree=lambda a, b: a == b,
              report=lambda answer, out, expected, case, hints: answer.fail(
                  f"on {case.where} it chose option {out}, but the best per byte is option {expected}"
                  + probably(hints)),
              passed=f"chooses as multiple_choice(normalize='byte') does on {len(cases)} questions")
