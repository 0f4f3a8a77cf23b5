"""A transformer block: attention (tokens talk to each other) then an MLP (each token thinks alone).

GPT-2 is "pre-norm": each sub-layer reads a LayerNorm'ed copy of the residual stream and *adds*
its result back, x = x + f(ln(x)). The un-normalised residual path runs straight from the
embeddings to the output, which keeps gradients healthy in deep stacks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import CausalSelfAttention, KVCache
from .config import GPTConfig
from .linear import Linear


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back (GPT-2's `c_fc`, `c_proj`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new" in transformers);
        # the exact erf GELU would drift from its logits by ~1e-3
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.c_fc(x))  # (B, T, 4C)
        return self.dropout(self.c_proj(x))  # (B, T, C)


class Block(nn.Module):
    """x -> x + attn(ln_1(x)) -> x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.activation_checkpointing = config.activation_checkpointing

    def forward(
        self,
        x: torch.Tensor,
        *,
        return_attention: bool = False,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> (B, T, C); with return_attention also the weights (B, H, T, S)."""
        if return_attention:
            a, att = self.attn(
                self.ln_1(x),
                return_attention=True,
                kv_cache=kv_cache,
                position_ids=position_ids,
                attention_mask=attention_mask,
            )
            x = x + a  # (B, T, C)
            x = x + self.mlp(self.ln_2(x))  # (B, T, C)
            return x, att
        if (
            self.activation_checkpointing
            and self.training
            and torch.is_grad_enabled()
            # a cache update is a side effect: recomputing it in backward would write twice
            and kv_cache is None
        ):
            # keep only this block's input; its activations are recomputed during backward.
            # use_reentrant=False is the recommended implementation (works with kwargs, and
            # restores the RNG state so dropout draws the same masks when recomputing)
            return checkpoint(self._forward, x, None, position_ids, attention_mask, use_reentrant=False)
        return self._forward(x, kv_cache, position_ids, attention_mask)

    def _forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.attn(
            self.ln_1(x), kv_cache=kv_cache, position_ids=position_ids, attention_mask=attention_mask
        )  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x
