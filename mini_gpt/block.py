"""A transformer block: attention (tokens talk to each other) then an MLP (each token thinks alone).

GPT-2 is "pre-norm": each sub-layer reads a LayerNorm'ed copy of the residual stream and *adds*
its result back, x = x + f(ln(x)). The un-normalised residual path runs straight from the
embeddings to the output, which keeps gradients healthy in deep stacks.

The norm is LayerNorm or RMSNorm (`config.norm`, see `norm.py`), the MLP GPT-2's GELU MLP or
Llama's SwiGLU (`config.mlp`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import CausalSelfAttention, KVCache
from .config import GPTConfig
from .linear import Linear
from .norm import make_norm


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back (GPT-2's `c_fc`, `c_proj`)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_hidden_size  # 4 * n_embd unless config.mlp_hidden says otherwise
        self.c_fc = Linear(config.n_embd, hidden, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new" in transformers);
        # the exact erf GELU would drift from its logits by ~1e-3
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.c_fc(x))  # (B, T, 4C)
        return self.dropout(self.c_proj(x))  # (B, T, C)


class SwiGLU(nn.Module):
    """Llama's MLP: c_proj(silu(gate) * up), where [gate | up] = c_fc(x) (Shazeer, 2020).

    One branch decides, token by token and channel by channel, how much of the other passes
    (a gated linear unit); SiLU(z) = z * sigmoid(z) makes the gate smooth. It has three
    matrices where GELU's MLP has two, so its hidden width defaults to 2/3 of 4 * n_embd.
    `c_fc` holds Llama's gate_proj and up_proj stacked, so both are one matmul.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.hidden = config.mlp_hidden_size
        self.c_fc = Linear(config.n_embd, 2 * self.hidden, bias=config.bias)  # rows: [gate | up]
        self.c_proj = Linear(self.hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)  # 2 x (B, T, hidden)
        return self.dropout(self.c_proj(F.silu(gate) * up))  # (B, T, C)


def make_mlp(config: GPTConfig) -> nn.Module:
    """The MLP `config.mlp` names: "gelu" (GPT-2) or "swiglu" (Llama)."""
    return SwiGLU(config) if config.mlp == "swiglu" else MLP(config)


class Block(nn.Module):
    """x -> x + attn(ln_1(x)) -> x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx=layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = make_mlp(config)
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
