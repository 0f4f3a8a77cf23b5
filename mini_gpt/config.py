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
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")

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
    "norm": Rule("choice", choices=NORMS),
    "mlp": Rule("choice", choices=MLPS),
    "mlp_hidden": Rule("int", min=1, optional=True, what="a positive int (>= 1) or None (the MLP's default width)"),
    "n_kv_head": Rule("int", min=1, optional=True, what="a positive int (>= 1) dividing n_head, or None (= n_head)"),
    "qk_norm": Rule("bool"),
    "tie_embeddings": Rule("bool"),
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
    layer_norm_eps: the epsilon of every norm, LayerNorm or RMSNorm (GPT-2 uses 1e-5)
    activation_checkpointing: recompute each block in the backward pass to save memory
    norm:         "layernorm" (GPT-2) or "rmsnorm" (Llama: rescale only, no centring, no bias)
    mlp:          "gelu" (GPT-2: widen, GELU, project) or "swiglu" (Llama: a SiLU gate times a
                  second projection)
    mlp_hidden:   the MLP's hidden width; None: 4 * n_embd for GELU, and for SwiGLU 2/3 of that
                  rounded up to a multiple of 8, which keeps the parameter count (SwiGLU has three
                  matrices, GELU two)
    n_kv_head:    key/value heads; None = n_head (multi-head), fewer = grouped-query attention
                  (n_head // n_kv_head query heads share each), 1 = multi-query attention
    qk_norm:      RMSNorm each head's queries and keys before the dot product (OLMo 2, Qwen3)
    tie_embeddings: the output head is the token embedding matrix (GPT-2) or its own (most Llamas)

    The GPT-2 defaults give GPT-2 exactly; `preset("llama-style")` turns the modern options on.
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
    norm: str = "layernorm"
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    n_kv_head: int | None = None
    qk_norm: bool = False
    tie_embeddings: bool = True

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
        if self.n_kv_head is not None and (self.n_kv_head > self.n_head or self.n_head % self.n_kv_head):
            raise ValueError(
                f"GPTConfig.n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): each "
                f"key/value head is shared by the same number of query heads"
            )

    @property
    def head_dim(self) -> int:
        """Dimensions per attention head (n_embd // n_head)."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer: n_kv_head, or n_head when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_hidden_size(self) -> int:
        """The MLP's hidden width: mlp_hidden, or the default for the kind of MLP (see the class)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return -(-8 * self.n_embd // 3 // 8) * 8  # ceil(2/3 * 4 * n_embd / 8) * 8

    def replace(self, **changes: Any) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"GPTConfig has no field(s) {sorted(unknown)}; fields: {_field_names()}")
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"GPTConfig({fields})"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict. The modern options (norm, mlp, ...) are left out where
        they hold GPT-2's default, so a GPT-2 config's dict, repr and checkpoint `state.json` are
        what they were before those options existed; `from_dict` fills the defaults back in."""
        d = dataclasses.asdict(self)
        for name, default in _MODERN_DEFAULTS.items():
            if d[name] == default and type(d[name]) is type(default):
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown field(s) {sorted(unknown)}; fields: {_field_names()}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named size: 'shakespeare-char', 'llama-style', 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'.

        Keyword overrides change fields of the preset, e.g. `preset("gpt2", dropout=0.1)`.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(map(repr, PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> list[str]:
        return list(PRESETS)


# the options added for Llama-style blocks, with the defaults that keep GPT-2's behaviour
_MODERN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GPTConfig)
                    if f.name in ("norm", "mlp", "mlp_hidden", "n_kv_head", "qk_norm", "tie_embeddings")}


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(GPTConfig)]


# Sizes of the named models. `shakespeare-char` is small enough to train on a 2-core laptop CPU
# in a few minutes (65 = the distinct characters of Tiny Shakespeare); the GPT-2 sizes are
# OpenAI's (head size 64, context 1024, vocabulary 50257). `llama-style` is shakespeare-char's size
# built the way Llama-family models are (RMSNorm, SwiGLU, RoPE, 2 key/value heads for 4 query
# heads, no biases, an untied head); it has ~9% fewer parameters (742,784 against 818,048): GQA's
# narrower c_attn, no position table and no biases outweigh the untied head.
PRESETS: dict[str, dict[str, Any]] = {
    "shakespeare-char": dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "llama-style": dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                        bias=False, pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2,
                        tie_embeddings=False, layer_norm_eps=1e-5),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
}
