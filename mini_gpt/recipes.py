"""Recipes: everything needed to train a named model, in one registry.

A recipe names the model shape it starts from (a `GPTConfig` preset, plus changes), the text and
tokenizer it trains on, and the `TrainConfig` fields that differ from the defaults.
`mini-gpt train --preset NAME` trains `recipe(NAME)`, and the course's shared Shakespeare model is
`recipe("course-shakespeare")`:

    >>> model_config, train_config = recipe("shakespeare-char").configs(max_iters=200)

The GPT-2 recipes train on Tiny Shakespeare with GPT-2's tokenizer and keep GPT-2's batch of 64
windows of 1024 tokens per optimizer step (micro-batches x `grad_accum`). The larger the model,
the smaller its micro-batch (to fit in memory) and its peak learning rate, which follows the
sizes of the GPT-3 paper's table 2.1 (6e-4 at 125M parameters, 3e-4 at 350M, 2.5e-4 at 760M,
2e-4 at 1.3B). gpt2 and gpt2-medium are the recipes `mini-gpt train` always had; gpt2-large and
gpt2-xl are derived from them in this way and have not been tuned by training them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .config import PRESETS, GPTConfig
from .tokenizer import TOKENIZER_NAMES
from .train import TrainConfig
from .validation import check_choice


@dataclass(frozen=True)
class Recipe:
    """How to train one named model (frozen; its dicts are read-only views).

    name:        what `recipe()` and `mini-gpt train --preset` call it
    description: one line, for `mini-gpt train --help`
    preset:      the `GPTConfig` preset the model starts from
    model:       fields of the preset this recipe changes
    data:        'shakespeare' or the path of a UTF-8 text file (see `data.load_text`)
    tokenizer:   'char' (built from the data) or a BPE name ('gpt2')
    train:       `TrainConfig` fields that differ from TrainConfig's defaults
    """

    name: str
    description: str
    preset: str
    model: Mapping[str, Any] = field(default_factory=dict)
    data: str = "shakespeare"
    tokenizer: str = "char"
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("Recipe.preset", self.preset, PRESETS)
        check_choice("Recipe.tokenizer", self.tokenizer, TOKENIZER_NAMES)
        for what, given, cls in (("model", self.model, GPTConfig), ("train", self.train, TrainConfig)):
            unknown = sorted(set(given) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"Recipe {self.name!r}: {what} has no field(s) {unknown}; see {cls.__name__}")
        # read-only copies, so that no caller can change the registry for everyone after it
        object.__setattr__(self, "model", MappingProxyType(dict(self.model)))
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))
        self.configs()  # a recipe whose fields do not make valid configs fails here, at import

    def model_dict(self) -> dict[str, Any]:
        """The model's GPTConfig fields: the preset's, with this recipe's changes."""
        return {**PRESETS[self.preset], **self.model}

    def train_dict(self) -> dict[str, Any]:
        """The TrainConfig fields this recipe sets (the others keep TrainConfig's defaults)."""
        return dict(self.train)

    def model_config(self, **overrides: Any) -> GPTConfig:
        """The recipe's GPTConfig; keywords change fields (e.g. `vocab_size=data.vocab_size`)."""
        return GPTConfig(**{**self.model_dict(), **overrides})

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The recipe's TrainConfig; keywords change fields (e.g. `out_dir=...`)."""
        return TrainConfig(**{**self.train_dict(), **overrides})

    def configs(self, **train_overrides: Any) -> tuple[GPTConfig, TrainConfig]:
        """`(model_config(), train_config(**train_overrides))`."""
        return self.model_config(), self.train_config(**train_overrides)


def _recipes(*recipes: Recipe) -> dict[str, Recipe]:
    return {r.name: r for r in recipes}


# GPT-2's training shape, shared by its four sizes: 64 windows of 1024 tokens per optimizer step
_GPT2 = dict(block_size=1024, max_iters=5000, warmup_iters=200, eval_interval=250, eval_iters=20, beta2=0.95)
_GPT2_WINDOWS_PER_STEP = 64


def _gpt2_recipe(size: str, description: str, batch_size: int, learning_rate: float) -> Recipe:
    """A GPT-2 size on Tiny Shakespeare with GPT-2's tokenizer: micro-batches of `batch_size`,
    accumulated to 64 windows per step."""
    return Recipe(size, description, preset=size, tokenizer="gpt2",
                  train=dict(_GPT2, batch_size=batch_size, grad_accum=_GPT2_WINDOWS_PER_STEP // batch_size,
                             learning_rate=learning_rate))


# a character model of Tiny Shakespeare sized for a 2-core CPU (see `mini-gpt bench`'s time-to-loss table)
_CHAR_CPU = dict(batch_size=32, max_iters=2000, learning_rate=2e-3, warmup_iters=100, eval_interval=250,
                 eval_iters=20, weight_decay=0.1, beta2=0.99)

RECIPES: dict[str, Recipe] = _recipes(
    Recipe(
        "shakespeare-char",
        "a 0.8M-parameter character model of Tiny Shakespeare, minutes on a laptop CPU",
        preset="shakespeare-char",
        train=_CHAR_CPU,
    ),
    Recipe(
        "course-shakespeare",
        # the model the chapters share (mini_gpt.course): the shakespeare-char shape, spelled out so
        # that it stays this one if the preset changes, trained for 1,000 steps of 16 windows on the
        # CPU. The course keys its cached weights by these two dicts: changing either retrains it
        "the course's shared model: shakespeare-char, 1,000 steps of 16 windows on the CPU (~75 s on 2 cores)",
        preset="shakespeare-char",
        model=dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
        train=dict(batch_size=16, max_iters=1000, learning_rate=2e-3, min_lr=2e-4, warmup_iters=50,
                   weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10,
                   device="cpu", dtype="auto", seed=1337),
    ),
    Recipe(
        "llama-style",
        # shakespeare-char's recipe for the same size of model built the Llama way (see the preset)
        "shakespeare-char's size and recipe with Llama's blocks: RMSNorm, SwiGLU, RoPE, grouped-query attention",
        preset="llama-style",
        train=_CHAR_CPU,
    ),
    _gpt2_recipe("gpt2", "GPT-2 124M on Tiny Shakespeare with GPT-2's tokenizer: a GPU job", 8, 6e-4),
    _gpt2_recipe("gpt2-medium", "GPT-2 350M: gpt2's recipe in micro-batches of 4, peak learning rate 3e-4", 4, 3e-4),
    _gpt2_recipe("gpt2-large", "GPT-2 774M: gpt2's recipe in micro-batches of 2, peak learning rate 2.5e-4 "
                 "(derived, not tuned)", 2, 2.5e-4),
    _gpt2_recipe("gpt2-xl", "GPT-2 1.5B: gpt2's recipe in micro-batches of 1, peak learning rate 2e-4 "
                 "(derived, not tuned)", 1, 2e-4),
)


def recipe(name: str) -> Recipe:
    """The recipe called `name`; a ValueError listing the names for any other."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(map(repr, RECIPES))}")
    return RECIPES[name]
