"""The two normalisations a block can use: GPT-2's LayerNorm and Llama's RMSNorm.

LayerNorm centres each vector (subtracts its mean), scales it to unit variance, then applies a
learned gain and bias. RMSNorm (Zhang & Sennrich, 2019) only rescales by the root mean square,
x / sqrt(mean(x^2) + eps) * weight: no mean, no bias, one reduction instead of two. It trains as
well and is cheaper, which is why Llama, Mistral, Qwen and Gemma use it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GPTConfig
from .validation import check_int, check_number


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2 over the last dimension) + eps) * weight; `weight` starts at 1.

    The statistic is computed in float32 and the result cast back before the gain, as Hugging
    Face's `LlamaRMSNorm` does: squaring bf16/fp16 activations would lose most of their digits.
    In float32 it equals `torch.nn.RMSNorm`.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, min=1)
        self.eps = check_number("eps", eps, min=0.0, min_open=True)
        self.weight = nn.Parameter(torch.ones(self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., 1): 1 / rms
        return self.weight * (x32 * scale).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps:g}"


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    """The norm `config.norm` names, over `dim` features (default n_embd), with the config's eps.
    LayerNorm has a bias only where config.bias; RMSNorm never has one."""
    dim = config.n_embd if dim is None else dim
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.bias)
