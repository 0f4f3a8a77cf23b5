"""`GPTConfig`: the sizes of a GPT, checked when it is made, and named presets.

Every field is validated at construction so that a bad size fails here, with the field's
name and the allowed values, instead of as a shape error deep inside torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


@dataclass(frozen=True)
class GPTConfig:
    """The architecture of a GPT (frozen: use `replace(...)` to derive a new one).

    vocab_size:   how many token ids exist (65 characters for Tiny Shakespeare, 50257 for GPT-2)
    block_size:   the longest context the model is trained on (learned positions stop there)
    n_layer:      how many transformer blocks
    n_head:       attention heads per block; n_embd must split evenly into them
    n_embd:       the width of the residual stream
    dropout:      dropout probability in [0, 1), used only in training mode
    bias:         biases in the Linear and LayerNorm layers (GPT-2 has them)
    pos_encoding: "learned" (GPT-2), "sinusoidal" (fixed, Attention Is All You Need) or "rope"
    rope_base:    the base of RoPE's rotation frequencies
    layer_norm_eps: LayerNorm's epsilon (GPT-2 uses 1e-5)
    activation_checkpointing: recompute each block in the backward pass to save memory
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "learned"
    rope_base: float = 10000.0
    layer_norm_eps: float = 1e-5
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"GPTConfig.{name} must be a positive int, got {type(value).__name__} {value!r}"
                )
            if value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int (>= 1), got {value}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) "
                f"so every head gets n_embd // n_head dimensions"
            )
        _check_number("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("bias", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"GPTConfig.pos_encoding must be one of {', '.join(map(repr, POS_ENCODINGS))}, "
                f"got {self.pos_encoding!r}"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"GPTConfig with pos_encoding='rope' needs an even head size "
                f"(n_embd // n_head), got {self.head_dim}: RoPE rotates pairs of dimensions"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError(
                f"GPTConfig with pos_encoding='sinusoidal' needs an even n_embd (sin and cos pairs), "
                f"got {self.n_embd}"
            )
        _check_number("rope_base", self.rope_base)
        if self.rope_base <= 1.0:
            raise ValueError(f"GPTConfig.rope_base must be > 1, got {self.rope_base}")
        _check_number("layer_norm_eps", self.layer_norm_eps)
        if self.layer_norm_eps <= 0.0:
            raise ValueError(f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def head_dim(self) -> int:
        """Dimensions per attention head (n_embd // n_head)."""
        return self.n_embd // self.n_head

    def replace(self, **changes: Any) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"GPTConfig has no field(s) {sorted(unknown)}; fields: {_field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown field(s) {sorted(unknown)}; fields: {_field_names()}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named size: 'shakespeare-char', 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'.

        Keyword overrides change fields of the preset, e.g. `preset("gpt2", dropout=0.1)`.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"GPTConfig.{name} must be a number, got {type(value).__name__} {value!r}")


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(GPTConfig)]


# Sizes of the named models. `shakespeare-char` is small enough to train on a 2-core laptop CPU
# in a few minutes (65 = the distinct characters of Tiny Shakespeare); the GPT-2 sizes are
# OpenAI's (head size 64, context 1024, vocabulary 50257).
PRESETS: dict[str, dict[str, Any]] = {
    "shakespeare-char": dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
}
