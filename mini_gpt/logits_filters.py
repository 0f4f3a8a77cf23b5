"""Logits filters: each takes next-token logits (B, V) and returns them with the tokens it rules
out set to -inf (probability exactly 0 after softmax). `generate` applies them in this order:
repetition penalty (every strategy), then, when sampling, the temperature, top_k, top_p, min_p.
They are re-exported by `mini_gpt.generate`, where the sampling chapter meets them.
"""

from __future__ import annotations

import math

import torch

__all__ = ["top_k_filter", "top_p_filter", "min_p_filter", "apply_repetition_penalty"]



def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (ties with the k-th stay)."""
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits  # everything; a float cumsum could otherwise reach 1.0 early and drop a tail
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
    probs = sorted_logits.softmax(-1)
    # a token is dropped when the tokens before it already reach p (the first one always stays)
    drop_sorted = probs.cumsum(-1) - probs >= p  # (B, V)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the tokens whose probability is at least min_p times the most likely token's.

    prob_i >= min_p * prob_max  <=>  logit_i - logit_max >= log(min_p), since softmax divides
    both by the same sum; comparing logits avoids probabilities that underflow to 0.
    """
    if min_p <= 0.0:
        return logits
    top = logits.amax(dim=-1, keepdim=True)  # (B, 1)
    return logits.masked_fill(logits - top < math.log(min_p), float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: for tokens already in the sequence (`seen`, bool (B, V)),
    divide a positive logit by `penalty` and multiply a negative one by it.

    Either way a penalty > 1 lowers the token's score (dividing a negative logit would raise it).
    Each token is penalised once, however often it occurred.
    """
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)  # (B, V)
    return torch.where(seen, penalised, logits)
