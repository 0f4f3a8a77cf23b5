"""Causal self-attention: every token gathers information from itself and the tokens before it.

For each head, a token's query is compared with every key (dot product / sqrt(head size)), the
causal mask removes the future, softmax turns the scores into weights that sum to 1, and the
output is the weighted sum of the values. Two paths compute the same numbers:

- "explicit": the formula written out, softmax(Q K^T / sqrt(hs) + mask) V. Slower and uses
  memory for the full (T, T) weight matrix, but it can return those weights for heatmaps.
- "sdpa": PyTorch's fused `F.scaled_dot_product_attention`, which picks a flash / memory-
  efficient kernel when it can and never materialises the weights. The default.

`KVCache` keeps the keys and values of earlier tokens so that generation feeds only the new
token instead of re-running the whole sequence.

Grouped-query attention (GQA, `config.n_kv_head < n_head`): the queries keep n_head heads, but
there are only n_kv_head heads of keys and values, each shared by n_head // n_kv_head
consecutive query heads (n_kv_head = 1 is multi-query attention). The cache then stores
n_kv_head heads, so it shrinks by n_head / n_kv_head, which is what makes long contexts cheap
to decode. QK-norm (`config.qk_norm`) RMSNorms every head's queries and keys before RoPE, which
bounds the attention logits and steadies training at high learning rates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig
from .linear import Linear
from .masks import apply_mask, causal_mask, offset_causal_mask
from .norm import RMSNorm
from .rope import RotaryEmbedding
from .validation import check_choice, check_int

ATTENTION_IMPLS = ("sdpa", "explicit")


class KVCache:
    """Keys and values of the tokens seen so far, for every layer, in preallocated tensors.

    `k` and `v` have shape (n_layer, B, H, max_len, hs), H the model's key/value heads
    (`config.kv_heads`: n_head, or fewer with grouped-query attention). They are allocated by the first
    `update`, which reads B, H, hs, dtype and device off the keys it is given (so the cache
    matches whatever the model computes, e.g. bf16 under autocast). `length` says how many
    positions are filled; every layer of one forward pass writes at the same positions, and the
    pointer moves on once the last layer has written.

    Writing is in place (no `torch.cat` per step, which would copy the whole cache every token).
    """

    def __init__(self, n_layer: int, max_len: int) -> None:
        self.n_layer = check_int("KVCache n_layer", n_layer, min=1)
        self.max_len = check_int("KVCache max_len", max_len, min=1)
        self.length = 0  # positions filled, in every layer
        self.k: torch.Tensor | None = None  # (n_layer, B, H, max_len, hs) once allocated
        self.v: torch.Tensor | None = None
        self._pending = 0  # positions written by the layers of the forward pass in progress

    @classmethod
    def for_model(cls, model: nn.Module, max_len: int | None = None) -> KVCache:
        """A cache sized for `model` (a GPT); max_len defaults to its block_size."""
        config = model.config
        return cls(config.n_layer, config.block_size if max_len is None else max_len)

    @staticmethod
    def bytes_per_token(config: GPTConfig, dtype: torch.dtype = torch.float32) -> int:
        """Cache memory one token takes in one sequence: a key and a value per layer and kv head,
        2 * n_layer * kv_heads * head_dim numbers of `dtype`."""
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {type(dtype).__name__}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * config.n_layer * config.kv_heads * config.head_dim * itemsize

    @property
    def batch_size(self) -> int | None:
        return None if self.k is None else self.k.shape[1]

    def remaining(self) -> int:
        """How many more positions fit."""
        return self.max_len - self.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values (B, H, T, hs) of `layer`; return all of them so far.

        Returns views (B, H, length + T, hs) of the cache: the cached past followed by the new
        positions.
        """
        if not 0 <= layer < self.n_layer:
            raise ValueError(f"layer must be in [0, {self.n_layer - 1}], got {layer}")
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k and v must both have shape (B, H, T, hs), got {tuple(k.shape)} and {tuple(v.shape)}")
        B, H, T, hs = k.shape
        if T + self.length > self.max_len:
            raise ValueError(
                f"KV cache is full: it holds {self.length} of max_len={self.max_len} positions and "
                f"cannot take {T} more; make a larger cache or reset() it"
            )
        fits = self.k is not None and self.k.shape[1:3] == (B, H) and self.k.shape[-1] == hs
        if not fits and self.length == 0 and not self._pending:
            # first use (or first after reset()): allocate for this batch, dtype and device
            self.k = k.new_zeros(self.n_layer, B, H, self.max_len, hs)  # (L, B, H, max_len, hs)
            self.v = v.new_zeros(self.n_layer, B, H, self.max_len, hs)
        elif not fits:
            raise ValueError(
                f"keys of shape (B={B}, H={H}, T, hs={hs}) do not fit this cache, made for "
                f"(B={self.k.shape[1]}, H={self.k.shape[2]}, hs={self.k.shape[-1]}); reset() it for a new batch"
            )
        if self._pending and T != self._pending:
            raise ValueError(
                f"every layer of one forward pass must add the same number of positions: "
                f"an earlier layer added {self._pending}, layer {layer} adds {T}"
            )
        end = self.length + T
        self.k[layer, :, :, self.length : end] = k  # in place, into the preallocated storage
        self.v[layer, :, :, self.length : end] = v
        if layer == self.n_layer - 1:
            # the last layer has written: the next forward pass starts after these positions
            self.length = end
            self._pending = 0
        else:
            self._pending = T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, H, end, hs) views

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (1-D long): row i becomes old row index[i]. Beam search uses it
        to follow the surviving beams; the index may repeat rows or change the batch size."""
        if self.k is None:
            return
        index = index.to(self.k.device)
        if index.dim() != 1:
            raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
        if index.numel() == self.k.shape[1]:
            # same batch size: copy within the existing storage
            n = self.length
            self.k[:, :, :, :n] = self.k[:, :, :, :n].index_select(1, index)
            self.v[:, :, :, :n] = self.v[:, :, :, :n].index_select(1, index)
        else:
            self.k = self.k.index_select(1, index)
            self.v = self.v.index_select(1, index)

    def reset(self) -> None:
        """Forget every position (the storage is kept and reused if the next batch has the same shape)."""
        self.length = 0
        self._pending = 0

    def __repr__(self) -> str:
        shape = None if self.k is None else tuple(self.k.shape)
        return f"KVCache(n_layer={self.n_layer}, max_len={self.max_len}, length={self.length}, shape={shape})"


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with GPT-2's weight names (`c_attn`, `c_proj`)."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.n_embd = config.n_embd
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx  # which slot of a KVCache this layer uses
        # q, k and v for all heads in one matmul: n_embd -> (n_head + 2 * n_kv_head) * head_dim
        # (3 * n_embd without GQA); the output is split as [q | k | v]
        self.kv_dim = self.n_kv_head * self.head_dim
        self.c_attn = Linear(config.n_embd, config.n_embd + 2 * self.kv_dim, bias=config.bias)
        # mixes the heads' outputs back into the residual stream
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            # one gain per head dimension, shared by the heads (as in Qwen3 and OLMo 2)
            self.q_norm = RMSNorm(config.head_dim, eps=config.layer_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, eps=config.layer_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.rotary = (
            RotaryEmbedding(config.head_dim, config.block_size, base=config.rope_base)
            if config.pos_encoding == "rope"
            else None
        )
        self.impl = "sdpa"

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        self._impl = check_choice("impl", value, ATTENTION_IMPLS)

    def extra_repr(self) -> str:
        kv = f", n_kv_head={self.n_kv_head}" if self.n_kv_head != self.n_head else ""
        return f"n_head={self.n_head}{kv}, head_dim={self.head_dim}, impl={self.impl!r}"

    def forward(
        self,
        x: torch.Tensor,
        *,
        return_attention: bool = False,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (B, T, C); with return_attention also the weights (B, H, T, S).

        kv_cache: earlier keys/values; x holds the tokens after them (S = cached + T keys).
        position_ids: (B, T) positions for RoPE (default: cached length + 0..T-1).
        attention_mask: bool (B, S), True for real tokens, False for padding (keys to ignore).
        """
        B, T, C = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        S = past + T  # keys this pass attends to

        q, k, v = self.c_attn(x).split((self.n_embd, self.kv_dim, self.kv_dim), dim=2)  # (B, T, C), 2 x (B, T, kv)
        # split the channels into heads and bring heads forward: attention runs per head
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)

        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)

        if self.rotary is not None:
            # rotate by absolute position; the cached keys were rotated when they were new
            q, k = self.rotary(q, k, offset=past, position_ids=position_ids)

        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs) each: only the kv heads
            if k.dtype != q.dtype:
                k, v = k.to(q.dtype), v.to(q.dtype)

        mask, is_causal = self._mask(B, T, S, attention_mask, x.device)

        if return_attention or self.impl == "explicit":
            y, att = self._explicit(q, k, v, mask, is_causal)
        else:
            y, att = self._sdpa(q, k, v, mask, is_causal), None

        # put the heads side by side again: (B, nh, T, hs) -> (B, T, nh * hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        y = self.resid_dropout(self.c_proj(y))  # (B, T, C)
        return (y, att) if return_attention else y

    @staticmethod
    def _mask(
        B: int, T: int, S: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor | None, bool]:
        """Which keys each query may see, as (mask or None, is_causal).

        (None, True): plain causal attention with no cache, which the fused kernel does itself.
        (None, False): one new token after a cache: it may see every key.
        (mask, False): a bool (T, S) or (B, 1, T, S) mask, True = may attend.
        """
        if attention_mask is None:
            if S == T:
                return None, True
            if T == 1:
                return None, False
            return offset_causal_mask(T, S, device=device), False  # (T, S)
        if attention_mask.dtype != torch.bool or tuple(attention_mask.shape) != (B, S):
            raise ValueError(
                f"attention_mask must be a bool tensor of shape (B, S) = ({B}, {S}) (S = cached + new "
                f"tokens), True for real tokens, got {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        causal = offset_causal_mask(T, S, device=device)  # (T, S)
        mask = causal[None, None] & attention_mask[:, None, None, :]  # (B, 1, T, S)
        # a padding query has no real key at or before it; letting it see itself keeps its
        # softmax finite (its output is junk that no real token ever attends to)
        rows = torch.arange(T, device=device)  # (T,)
        mask[..., rows, rows + (S - T)] = True
        return mask, False

    def _explicit(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n_kv_head != self.n_head:
            # GQA written out: give every query head a copy of its group's keys and values
            # (query head h reads kv head h // group, as in Llama's `repeat_kv`)
            group = self.n_head // self.n_kv_head
            k = k.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)
        # how well each query matches each key, scaled so the scores' variance stays ~1 and
        # softmax does not saturate as the head size grows
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, S)
        if is_causal:
            mask = causal_mask(q.shape[-2], device=q.device)  # (T, T)
        if mask is not None:
            att = apply_mask(att, mask)  # future (and padding) -> -inf
        att = F.softmax(att, dim=-1)  # (B, nh, T, S): each row sums to 1
        weights = att  # kept before dropout: what the model "looks at"
        att = self.attn_dropout(att)
        y = att @ v  # (B, nh, T, hs): weighted sum of the values
        return y, weights

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
    ) -> torch.Tensor:
        # with GQA the fused kernel shares each kv head across its group itself (no copies)
        gqa = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            **gqa,
        )  # (B, nh, T, hs)
