"""Evaluation measures that compare models across tokenizers.

A loss per token cannot compare a character model with a BPE model: a BPE token covers several
characters, so each of its predictions is harder and its loss per token is higher even when the
model is better. Counting the cost per byte of the text removes the tokenizer from the measure:

    bits per byte = loss * n_tokens / (ln 2 * n_bytes)

where `loss` is the mean cross-entropy in nats per token over `n_tokens` tokens that encode
`n_bytes` bytes of UTF-8 text. `loss * n_tokens` is the total cost of the text in nats, and
dividing by ln 2 turns nats into bits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .validation import check_int, check_number

__all__ = ["bits_per_byte"]


def bits_per_byte(loss: Any, n_tokens: int, n_bytes: int) -> float:
    """The bits per byte of a text: `loss * n_tokens / (ln 2 * n_bytes)`.

    loss:     mean cross-entropy in nats per token (a number >= 0, or a one-element tensor)
    n_tokens: how many tokens the loss is averaged over (an int >= 1)
    n_bytes:  how many bytes of UTF-8 text those tokens encode (an int >= 1)

    A character model of Tiny Shakespeare (one byte per character there) at loss 1.5 nats per
    token scores 1.5 / ln 2 = 2.16 bits per byte.
    """
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = loss.item()
    loss = check_number("loss", loss, min=0)
    n_tokens = check_int("n_tokens", n_tokens, min=1)
    n_bytes = check_int("n_bytes", n_bytes, min=1)
    return loss * n_tokens / (math.log(2) * n_bytes)
