"""The autoregressive loss: how surprised the model is by each next token.

The logits at position t are the model's guess for token t+1, so the targets are the input
shifted left by one: logits[:, :-1] are scored against tokens[:, 1:]. The last position has no
next token in the batch and the first token is never a target. Cross-entropy averages
-log p(correct next token) over all scored positions; perplexity = exp(loss) reads as "the model
is as unsure as if it picked uniformly among this many tokens".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _shifted(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and return (predictions (B*(T-1), V), targets (B*(T-1),))."""
    if not isinstance(logits, torch.Tensor) or not isinstance(tokens, torch.Tensor):
        raise TypeError(f"logits and tokens must be tensors, got {type(logits).__name__} and {type(tokens).__name__}")
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits must have shape (B, T, vocab_size) and tokens (B, T) with the same B and T, "
            f"got logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}"
        )
    if tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must have T >= 2 (position t is scored on token t+1), got logits "
            f"{tuple(logits.shape)} and tokens {tuple(tokens.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer token ids, got {tokens.dtype}")
    V = logits.shape[-1]
    pred = logits[:, :-1, :].reshape(-1, V)  # (B*(T-1), V): the guesses for positions 1..T-1
    target = tokens[:, 1:].reshape(-1).long()  # (B*(T-1),): what actually came next
    return pred, target


def autoregressive_loss(logits: torch.Tensor, tokens: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy; `logits` (B, T, V) come from the model run on `tokens` (B, T).

    Targets equal to `ignore_index` (e.g. padding) are left out of the mean. Like
    `F.cross_entropy`, the result is NaN if every target is ignored.
    """
    pred, target = _shifted(logits, tokens)
    if pred.dtype in (torch.float16, torch.bfloat16):
        # log-softmax over a large vocabulary loses too much precision in 16 bits
        pred = pred.float()
    return F.cross_entropy(pred, target, ignore_index=ignore_index)


def perplexity(loss: float | torch.Tensor) -> float | torch.Tensor:
    """exp(loss): a tensor for a tensor, a float for a number (inf if it overflows)."""
    if isinstance(loss, torch.Tensor):
        return torch.exp(loss)
    try:
        return math.exp(float(loss))
    except OverflowError:
        return math.inf


@torch.no_grad()
def next_token_accuracy(logits: torch.Tensor, tokens: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Fraction of scored positions where the most likely token (argmax) is the true next one.

    Same shift and `ignore_index` as `autoregressive_loss`; returns a 0-dim float tensor
    (NaN if every target is ignored).
    """
    pred, target = _shifted(logits, tokens)
    keep = target != ignore_index  # (N,)
    correct = (pred.argmax(dim=-1) == target) & keep  # (N,)
    return correct.sum().float() / keep.sum().float()
