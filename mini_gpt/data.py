"""Text -> tokens -> batches.

A language model learns from windows of `block_size + 1` consecutive tokens: the input `x`
is the first `block_size` of them and the target `y` is the same window shifted by one, so
`y[:, t]` is the token that follows `x[:, t]`. Windows start at random offsets.

A tokenizer trained on the data ("bpe:N") must not see the validation text: its merges would
then be fitted to it, and the validation loss would flatter the model. So for a byte-level BPE
the text is split first (by characters) and the tokenizer is learned from the training part only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .bpe import BytePairTokenizer
from .files import course_file
from .tokenizer import BPETokenizer, CharTokenizer, get_tokenizer, trained_bpe_size
from .validation import check_int, check_number

Tokenizer = CharTokenizer | BPETokenizer | BytePairTokenizer


def load_text(source: str | os.PathLike = "shakespeare") -> str:
    """'shakespeare' (Tiny Shakespeare, 1,115,394 characters) or the path of any UTF-8 text file."""
    if str(source) in ("shakespeare", "tinyshakespeare"):
        return course_file("tinyshakespeare.txt").read_text("utf-8")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"source must be 'shakespeare' or a UTF-8 text file; {str(source)!r} is neither")
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc})") from None


def split_tokens(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first (1 - val_fraction) of the tokens for training, the rest for validation.

    A split in one place (not shuffled windows) keeps validation text unseen in training.
    """
    check_number("val_fraction", val_fraction, min=0.0, max=1.0, max_open=True)
    n_train = int(len(tokens) * (1.0 - val_fraction))
    return tokens[:n_train], tokens[n_train:]


def split_text(text: str, val_fraction: float = 0.1) -> tuple[str, str]:
    """The first (1 - val_fraction) of the characters for training, the rest for validation: the
    split of `split_tokens`, made before tokenizing, for a tokenizer that is learned from the data."""
    check_number("val_fraction", val_fraction, min=0.0, max=1.0, max_open=True)
    n_train = int(len(text) * (1.0 - val_fraction))
    return text[:n_train], text[n_train:]


def get_batch(
    tokens: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows: x (B, T) and y = x shifted by one (B, T), on `device`."""
    _check_positive("batch_size", batch_size)
    _check_positive("block_size", block_size)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if len(tokens) <= block_size:
        raise ValueError(
            f"block_size ({block_size}) must be smaller than the number of tokens ({len(tokens)}): "
            f"each window needs block_size + 1 tokens"
        )
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)  # (B,)
    window = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    chunk = tokens[window].long()  # (B, T+1)
    x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T) each
    device = torch.device(device)
    if device.type == "cuda":
        # pinned memory lets the copy to the GPU overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class BatchStream:
    """An endless, reproducible stream of random batches that can be stopped and resumed.

    Micro-batches are numbered globally; batch number `i` depends only on (seed, i). With
    `world_size` data-parallel processes, rank `r` reads batches r, r + W, r + 2W, ... so the
    ranks together read exactly what one process reads alone (0, 1, 2, ...): one process with
    gradient accumulation over W micro-batches sees the same data as W ranks. Saving
    `state_dict()` (the step counter) and loading it later continues the exact same stream.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        block_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ):
        _check_positive("batch_size", batch_size)
        _check_positive("block_size", block_size)
        _check_positive("world_size", world_size)
        check_int("rank", rank, min=0, max=world_size - 1)
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.seed, self.rank, self.world_size, self.device = int(seed), rank, world_size, device
        self.step = 0  # how many batches this rank has read
        self._generator = torch.Generator()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.step * self.world_size + self.rank  # the global micro-batch number
        self._generator.manual_seed((self.seed * 2_147_483_647 + index) % (1 << 63))
        self.step += 1
        return get_batch(self.tokens, self.batch_size, self.block_size, generator=self._generator, device=self.device)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("world_size", 1)) != self.world_size:
            # a different number of ranks reads the global stream in a different order: continue
            # from the same global position so that no batch is read twice
            global_pos = int(state["step"]) * int(state.get("world_size", 1))
            self.step = global_pos // self.world_size
        else:
            self.step = int(state["step"])
        self.seed = int(state["seed"])


@dataclass
class TextDataset:
    """A tokenized text split into train and val token tensors (1-D, int64)."""

    tokenizer: Tokenizer
    train: torch.Tensor
    val: torch.Tensor

    @classmethod
    def from_text(cls, text: str, tokenizer: str | Tokenizer = "char", val_fraction: float = 0.1) -> "TextDataset":
        """tokenizer: 'char' (built from this text), 'gpt2', 'bpe:N' (a BPE of N ids learned from the
        training part of this text only), or a tokenizer object.

        'char' and 'gpt2' tokenize the whole text and split its tokens. A byte-level BPE ('bpe:N'
        or a `BytePairTokenizer`) splits the text instead (`split_text`), so the merges are learned
        without the validation text, and a trained model is later evaluated on the same tail.
        """
        if isinstance(tokenizer, str) and trained_bpe_size(tokenizer) is not None:
            train_text, _ = split_text(text, val_fraction)
            tokenizer = get_tokenizer(tokenizer, train_text)
        elif isinstance(tokenizer, str):
            tokenizer = get_tokenizer(tokenizer, text)
        if isinstance(tokenizer, BytePairTokenizer):
            parts = split_text(text, val_fraction)
            train, val = (torch.tensor(tokenizer.encode(part), dtype=torch.long) for part in parts)
        else:
            tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            train, val = split_tokens(tokens, val_fraction)
        return cls(tokenizer, train, val)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def batches(self, split: str, batch_size: int, block_size: int, **kwargs) -> BatchStream:
        return BatchStream(self.split(split), batch_size, block_size, **kwargs)

    def __repr__(self) -> str:
        return f"TextDataset({self.tokenizer!r}, train={len(self.train):,} tokens, val={len(self.val):,} tokens)"


def load_dataset(
    source: str | os.PathLike = "shakespeare", tokenizer: str | Tokenizer = "char", val_fraction: float = 0.1
) -> TextDataset:
    """Read a text ('shakespeare' or a file path), tokenize it and split it 90/10 by default
    (tokenizer: 'char', 'gpt2', 'bpe:N' or a tokenizer object; see `TextDataset.from_text`)."""
    return TextDataset.from_text(load_text(source), tokenizer, val_fraction)


def _check_positive(name: str, value: int) -> None:
    check_int(name, value, min=1, what="a positive int")
