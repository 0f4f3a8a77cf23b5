"""Rotary position embeddings (RoPE, Su et al. 2021): position as a rotation of q and k.

Instead of adding a position vector to the token embedding, RoPE rotates every query and key
by an angle proportional to its position. Split a head's dimensions into pairs; pair i turns by
angle `pos * theta_i` with `theta_i = base ** (-2i / head_dim)` (fast-turning pairs for fine
position, slow ones for coarse). Because rotating q by angle a and k by angle b leaves the dot
product depending only on a - b, attention scores depend on the *relative* distance between
tokens, and nothing limits the length to a table size.

Pairing convention: "rotate half" (GPT-NeoX, Llama). Dimension j is paired with j + head_dim/2,
not with its neighbour j+1 (the original paper's interleaved layout). Both are the same idea
with the dimensions permuted; we use the one that Llama's weights expect.
"""

from __future__ import annotations

import torch
from torch import nn

from .validation import check_int, check_number


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn per pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair (x_j, x_{j+d/2}) of x by the angle whose cos/sin are given.

    The 2-D rotation [[c, -s], [s, c]] written with `rotate_half`, so it is elementwise (fast).
    """
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions 0..max_len-1, applied to (q, k) of shape (B, H, T, head_dim).

    `rope(q, k, offset=0)` rotates position t of the sequence as absolute position offset + t
    (with a KV cache, offset is the number of cached tokens). `position_ids` (B, T) gives every
    token its own position instead (left-padded batches). Positions past `max_len` grow the
    tables, so `max_len` is a starting size, not a limit.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        even = "a positive even int (RoPE rotates pairs of dimensions)"
        head_dim = check_int("head_dim", head_dim, min=2, what=even)
        if head_dim % 2:
            raise ValueError(f"head_dim must be {even}, got {head_dim}")
        max_len = check_int("max_len", max_len, min=1)
        check_number("base", base, min=1.0, min_open=True)
        self.head_dim = head_dim
        self.base = float(base)
        self._build(max_len, device=None)

    @property
    def max_len(self) -> int:
        return self.cos_cached.shape[0]

    def _build(self, n: int, device: torch.device | None) -> None:
        # theta_i = base^(-2i/d) for i = 0..d/2-1: one frequency per pair. Recomputed in float32
        # here rather than kept as a buffer, so `model.half()` cannot round the frequencies
        # (positions times a rounded frequency drift further from the true angle as they grow)
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.base**exponents)  # (hd/2,)
        t = torch.arange(n, dtype=torch.float32, device=device)  # (n,)
        freqs = torch.outer(t, inv_freq)  # (n, hd/2): angle of pair i at position t
        # the same angle for dimension j and j + d/2, matching the rotate-half pairing
        emb = torch.cat((freqs, freqs), dim=-1)  # (n, hd)
        # non-persistent buffers: they follow .to(device) but are not saved in checkpoints,
        # since they are derived from head_dim and base
        self.register_buffer("cos_cached", emb.cos(), persistent=False)  # (n, hd)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)  # (n, hd)

    def _ensure(self, n: int) -> None:
        if n > self.max_len:
            # grow geometrically so a long generation rebuilds the tables only a few times
            self._build(max(n, 2 * self.max_len), device=self.cos_cached.device)

    def cos_sin(
        self,
        T: int,
        *,
        offset: int = 0,
        position_ids: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for T positions: (T, hd) from `offset`, or (B, 1, T, hd) from `position_ids`."""
        if position_ids is not None:
            if position_ids.dim() != 2 or position_ids.shape[1] != T:
                raise ValueError(f"position_ids must have shape (B, T) with T = {T}, got {tuple(position_ids.shape)}")
            if not torch.compiler.is_compiling():
                lo, hi = torch.stack(torch.aminmax(position_ids)).tolist()
                if lo < 0:
                    raise ValueError(f"position_ids must be >= 0, got {lo}")
                self._ensure(hi + 1)
            cos = self.cos_cached[position_ids].unsqueeze(1)  # (B, 1, T, hd): broadcast over heads
            sin = self.sin_cached[position_ids].unsqueeze(1)  # (B, 1, T, hd)
        else:
            check_int("offset", offset, min=0)
            self._ensure(offset + T)
            cos = self.cos_cached[offset : offset + T]  # (T, hd)
            sin = self.sin_cached[offset : offset + T]  # (T, hd)
        return cos.to(dtype), sin.to(dtype)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        offset: int = 0,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k (B, H, T, head_dim) for positions offset..offset+T-1 (or position_ids)."""
        for name, x in (("q", q), ("k", k)):
            if x.dim() != 4 or x.shape[-1] != self.head_dim:
                raise ValueError(f"{name} must have shape (B, H, T, head_dim={self.head_dim}), got {tuple(x.shape)}")
        if q.shape[-2] != k.shape[-2]:
            raise ValueError(f"q and k must cover the same positions, got T = {q.shape[-2]} and {k.shape[-2]}")
        cos, sin = self.cos_sin(q.shape[-2], offset=offset, position_ids=position_ids, dtype=q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
