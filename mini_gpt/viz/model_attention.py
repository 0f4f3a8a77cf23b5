"""Running the model for its attention: what both explorers show.

`encode_prompt` turns the prompt into token ids (keeping the last ones that fit), `attention_of`
runs the model once and returns every layer's attention for that one sequence, and
`check_layer` / `check_head` check a selection of what to show. The ipywidgets explorer
(`explorer.py`) and the HTML export (`html_export.py`) share all four, so they show the same
numbers and reject the same selections with the same words.
"""

from __future__ import annotations

from typing import Any

import torch

from ..validation import check_int, describe_range

HEAD_CHOICES = ("mean", "all")  # besides a head's number: the mean over heads, or every head in a grid


def block_size_of(model: torch.nn.Module) -> int | None:
    """The model's context length (`model.config.block_size`), or None when it has none."""
    config = getattr(model, "config", None)
    return getattr(config, "block_size", None)


def encode_prompt(tokenizer: Any, prompt: Any, limit: int | None, limit_name: str) -> tuple[list[int], str | None]:
    """Token ids of `prompt`, keeping the last `limit`; and a note when it was cropped."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt must be a non-empty str (at least 1 token)")
    try:
        ids = list(tokenizer.encode(prompt))
    except ValueError as exc:
        raise ValueError(f"prompt cannot be encoded by this tokenizer: {exc}") from None
    if not ids:
        raise ValueError("prompt must encode to at least 1 token, got none")
    note = None
    if limit is not None and len(ids) > limit:
        note = (f"The prompt is {len(ids)} tokens; only the last {limit} are used ({limit_name}={limit}).")
        ids = ids[-limit:]
    return ids, note


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def attention_of(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Every layer's attention for one sequence: (n_layer, n_head, T, T), float32 on the CPU.

    Runs in eval mode (no dropout) under no_grad; every module's previous mode is restored.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a mini_gpt GPT), got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            idx = torch.tensor([ids], dtype=torch.long, device=_model_device(model))
            out = model(idx, return_attention=True)
    finally:
        for m, training in modes:
            m.training = training
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (list, tuple)) and out[1]):
        raise TypeError("model(idx, return_attention=True) must return (logits, [attention per layer])")
    return torch.stack([a[0].detach().to("cpu", torch.float32) for a in out[1]])  # (L, H, T, T)


def check_layer(layer: Any, n_layer: int) -> int:
    """`layer` as an int, if it is one of the model's layers 0 .. n_layer - 1."""
    return check_int("layer", layer, min=0, max=n_layer - 1)


def check_head(head: Any, n_head: int, choices: tuple[str, ...] = HEAD_CHOICES) -> int | str:
    """`head` as an int (one of the heads 0 .. n_head - 1), or one of `choices` as it is."""
    if isinstance(head, str) and head in choices:
        return head
    allowed = describe_range("an int", 0, n_head - 1) + "".join(f" or {c!r}" for c in choices)
    return check_int("head", head, min=0, max=n_head - 1, what=allowed)
