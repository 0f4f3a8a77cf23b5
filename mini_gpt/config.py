"""`GPTConfig`: the sizes of a GPT, checked when it is made, and named presets.

Every field is validated at construction so that a bad size fails here, with the field's
name and the allowed values, instead of as a shape error deep inside torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .validation import Rule, check_settings

POS_ENCODINGS = ("learned", "sinusoidal", "rope")

_SIZE = Rule("int", min=1, what="a positive int (>= 1)")

# What each field may be, checked when a GPTConfig is made; `mini-gpt train` parses its model
# flags (--n-layer, --dropout, ...) with the same rules. The checks that tie fields together
# (heads split n_embd evenly, ...) are in `GPTConfig.__post_init__`.
FIELD_RULES: dict[str, Rule] = {
    "vocab_size": _SIZE,
    "block_size": _SIZE,
    "n_layer": _SIZE,
    "n_head": _SIZE,
    "n_embd": _SIZE,
    "dropout": Rule("number", min=0.0, max=1.0, max_open=True),
    "bias": Rule("bool"),
    "pos_encoding": Rule("choice", choices=POS_ENCODINGS),
    "rope_base": Rule("number", min=1.0, min_open=True),
    "layer_norm_eps": Rule("number", min=0.0, min_open=True),
    "activation_checkpointing": Rule("bool"),
}


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
        check_settings(self, FIELD_RULES)
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) "
                f"so every head gets n_embd // n_head dimensions"
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
