"""The autoregressive loss chapter's exercises: the shifted cross-entropy (padding left out) and the
next-token accuracy, each compared with `mini_gpt.loss`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..loss import autoregressive_loss, next_token_accuracy
from .checking import Answer, Case, as_tensor, random_generator, run_check

__all__ = ["check_shifted_loss", "check_next_token_accuracy"]


def _loss_cases(seed: int) -> list[Case]:
    g = random_generator(seed)
    cases = []
    for B, T, V in ((1, 2, 5), (2, 7, 11), (3, 16, 65)):
        logits = torch.randn(B, T, V, generator=g) * 2
        tokens = torch.randint(0, V, (B, T), generator=g)
        cases.append(Case(f"logits {tuple(logits.shape)}, tokens {tuple(tokens.shape)}", (logits, tokens)))
    # a padded batch: the second row's text ends early; its padding targets are ignore_index
    logits = torch.randn(2, 8, 13, generator=g) * 2
    tokens = torch.randint(0, 13, (2, 8), generator=g)
    tokens[1, 5:] = -100
    cases.append(Case("a padded batch (tokens[1, 5:] == -100)", (logits, tokens)))
    return cases


def _one_number(what: str) -> Callable[[Answer, Any, str], torch.Tensor]:
    """A converter to a 0-d tensor that refuses anything but one number, saying which (`what`)."""

    def convert(answer: Answer, out: Any, where: str) -> torch.Tensor:
        out = as_tensor(answer, out, where)
        if out.numel() != 1:
            raise answer.fail(f"returned shape {tuple(out.shape)} on {where}; {what}")
        return out.reshape(())

    return convert


def _loss_mistakes(logits: torch.Tensor, tokens: torch.Tensor):
    V = logits.shape[-1]
    pred, target = logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)
    keep = target != -100
    return [
        ("no shift: the logits at position t predict token t + 1, so score logits[:, :-1] against tokens[:, 1:]",
         lambda: F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1))),
        ("shifted the wrong way: score logits[:, :-1] against tokens[:, 1:] "
         "(not logits[:, 1:] against tokens[:, :-1])",
         lambda: F.cross_entropy(logits[:, 1:].reshape(-1, V), tokens[:, :-1].reshape(-1))),
        ("this is the sum over positions; the loss is the mean",
         lambda: F.cross_entropy(pred, target, reduction="sum")),
        ("padding is counted in the mean: divide by the number of real targets (tokens != -100), not all positions",
         lambda: F.cross_entropy(pred, target, reduction="sum") / target.numel()),
        ("the sign is flipped: the loss is -log p(next token), a positive number",
         lambda: -F.cross_entropy(pred, target)),
        ("log is missing: the loss averages -log p, not -p",
         lambda: -F.softmax(pred[keep], -1).gather(1, target[keep, None]).mean()),
        ("log_softmax is missing: the logits must be normalised into log-probabilities first",
         lambda: -pred[keep].gather(1, target[keep, None]).mean()),
    ]


def check_shifted_loss(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(logits (B, T, V), tokens (B, T)) -> the mean next-token cross-entropy (a number).

    The logits at position t are scored against tokens[:, t + 1]; tokens equal to -100
    (padding) are left out of the mean. Compared with `mini_gpt.loss.autoregressive_loss`.
    """
    run_check(fn, "check_shifted_loss", _loss_cases(2), reference=autoregressive_loss,
              against="mini_gpt.loss.autoregressive_loss", atol=1e-5, mistakes=_loss_mistakes,
              convert=_one_number("return the mean loss, one number (average over the scored positions)"),
              passed="matches autoregressive_loss on 4 batches (1 padded)")


def _accuracy_cases() -> list[Case]:
    cases = _loss_cases(3)
    # make the answer non-trivial: about half of the argmaxes are right
    for case in cases:
        logits, tokens = case.args
        right = tokens[:, 1:].clamp(min=0)
        logits[:, :-1].scatter_(-1, right[..., None], 10.0)
        logits[:, :-1:2] = logits[:, :-1:2].flip(-1)
    return cases


def _accuracy_mistakes(logits: torch.Tensor, tokens: torch.Tensor):
    pred, target = logits[:, :-1].argmax(-1).reshape(-1), tokens[:, 1:].reshape(-1)
    return [
        ("no shift: the argmax at position t is a guess for token t + 1",
         lambda: (logits.argmax(-1) == tokens).double().mean()),
        ("padding is counted: leave out the positions whose target is -100",
         lambda: (pred == target).double().mean()),
        ("this is the number right, not the fraction",
         lambda: ((pred == target) & (target != -100)).double().sum()),
        ("this is the fraction wrong", lambda: 1 - ((pred == target)[target != -100]).double().mean()),
    ]


def check_next_token_accuracy(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """fn(logits (B, T, V), tokens (B, T)) -> the fraction of scored positions whose argmax is the
    next token (padding, -100, left out). Compared with `mini_gpt.loss.next_token_accuracy`."""
    run_check(fn, "check_next_token_accuracy", _accuracy_cases(), reference=next_token_accuracy,
              against="mini_gpt.loss.next_token_accuracy", atol=1e-6, mistakes=_accuracy_mistakes,
              convert=_one_number("return one number, the fraction right"),
              passed="matches next_token_accuracy on 4 batches (1 padded)")
