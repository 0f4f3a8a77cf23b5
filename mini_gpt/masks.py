"""Causal masks: which positions a token may look at.

A language model predicts token t+1 from tokens 0..t, so position t must never see a later
position. Attention enforces that with a mask over the (query, key) score matrix:

    key ->   0 1 2 3
    query 0  T . . .        T = may attend (True)
    query 1  T T . .        . = masked out (False): its score becomes -inf,
    query 2  T T T .            so softmax gives it weight exactly 0
    query 3  T T T T

The boolean convention (True = may attend) is the one `F.scaled_dot_product_attention` uses.
"""

from __future__ import annotations

import torch

from .validation import check_int


def _check_length(name: str, value: object) -> int:
    return check_int(name, value, min=1, what="a positive int (a sequence length)")


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend to key j, i.e. j <= i.

    The lower triangle including the diagonal: every token sees itself and its past.
    """
    _check_length("T", T)
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def offset_causal_mask(T: int, S: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (T, S) mask for T new queries that come after S - T earlier (cached) keys.

    Query i sits at position (S - T) + i, so it may attend to keys 0..(S - T) + i. With S == T
    this is `causal_mask(T)`; with T == 1 it is all True (the newest token sees everything).
    This is what a KV cache needs when several tokens are fed at once.
    """
    _check_length("T", T)
    _check_length("S", S)
    if S < T:
        raise ValueError(f"S (keys, {S}) must be >= T (queries, {T}): every query is also a key")
    # the diagonal is shifted right by the number of earlier positions
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


def causal_bias(T: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """Additive (T, T) float bias: 0 where attending is allowed, -inf where it is not.

    Adding it to the scores before softmax is the same as `apply_mask(scores, causal_mask(T))`.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype (it holds -inf), got {dtype}")
    mask = causal_mask(T, device=device)
    bias = torch.zeros(T, T, dtype=dtype, device=device)  # (T, T)
    return bias.masked_fill(~mask, float("-inf"))


def apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return `scores` with every position where `mask` is False set to -inf.

    `mask` is boolean and broadcasts against `scores`, e.g. scores (B, H, T, S) and mask (T, S).
    After softmax the masked positions get weight exactly 0. A row that is masked everywhere
    would become NaN, so every query must be allowed at least one key (itself).
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = may attend), got {got}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    try:
        fits = torch.broadcast_shapes(mask.shape, scores.shape) == scores.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to scores of shape {tuple(scores.shape)}"
        )
    return scores.masked_fill(~mask, float("-inf"))
