"""How good is the text a model writes, and how does the decoding setting change it?

Two failures pull in opposite directions. Sampled too cautiously (a low temperature, a small top-p)
a model repeats itself: few distinct n-grams, a high repetition rate, and text it finds far more
predictable than real text. Sampled too freely, it writes text no one would: varied, but the model
itself (and a reader) finds it far less likely than real text. So for each setting this measures

- `distinct_n` of the samples (unique n-grams / all n-grams) and their `repetition_rate`;
- the model's own bits per byte on its samples, beside its bits per byte on held-out real text:
  the closer the two, the more the samples are as surprising as real text ("how close to real text").

It sits on `mini_gpt.evaluate` (the measures) and `mini_gpt.generate` (the sampling).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .evaluate import bits_per_byte, distinct_n, evaluate_text, evaluate_tokens, repetition_rate
from .generate import generate
from .validation import check_int, check_number

__all__ = ["QualityRow", "QualitySweep", "sample_quality"]


@dataclass(frozen=True)
class QualityRow:
    """One decoding setting: the samples' diversity, repetition and bits per byte (under the model)."""

    temperature: float
    top_p: float | None
    distinct: float
    repetition: float
    bits_per_byte: float
    samples: tuple[str, ...]


@dataclass(frozen=True)
class QualitySweep:
    """The rows of `sample_quality`, and the model's bits per byte on real held-out text."""

    rows: list[QualityRow]
    reference_bits_per_byte: float
    n: int

    def gap(self, row: QualityRow) -> float:
        """Bits per byte of the samples minus that of real text: < 0 too predictable, > 0 too wild."""
        return row.bits_per_byte - self.reference_bits_per_byte

    def table(self) -> list[dict[str, Any]]:
        return [{"temperature": r.temperature, "top_p": r.top_p, f"distinct_{self.n}": r.distinct,
                 f"repetition_{self.n}": r.repetition, "bits_per_byte": r.bits_per_byte, "gap": self.gap(r)}
                for r in self.rows]


def _settings(settings: Iterable[Any]) -> list[tuple[float, float | None]]:
    out = []
    for s in settings:
        temperature, top_p = (s, None) if not isinstance(s, (tuple, list)) else tuple(s)
        temperature = check_number("temperature", temperature, min=0, min_open=True)
        if top_p is not None:
            top_p = check_number("top_p", top_p, min=0, max=1, min_open=True)
        out.append((temperature, top_p))
    if not out:
        raise ValueError("settings must hold at least one temperature or (temperature, top_p) pair")
    return out


@torch.no_grad()
def sample_quality(model: torch.nn.Module, tokenizer: Any, reference_text: str, settings: Iterable[Any], *,
                   prompt: str = "\n", n_samples: int = 8, length: int = 200, n: int = 4,
                   seed: int = 0) -> QualitySweep:
    """For each setting (a temperature, or a (temperature, top_p) pair), `n_samples` samples of
    `length` new tokens after `prompt`: their distinct-`n`, repetition rate (of `n`-grams) and the
    model's bits per byte on them (prompt and samples, windowed as `evaluate_text` does), next to
    its bits per byte on `reference_text`. The same `seed` draws the same samples."""
    settings = _settings(settings)
    n_samples = check_int("n_samples", n_samples, min=1)
    length = check_int("length", length, min=1)
    n = check_int("n", n, min=1)
    check_int("seed", seed, min=0)
    start = tokenizer.encode(prompt)
    if not isinstance(prompt, str) or not start:
        raise ValueError("prompt must be a str that encodes to at least one token")
    device = next(model.parameters()).device
    idx = torch.tensor([start] * n_samples, device=device)
    rows = []
    for temperature, top_p in settings:
        out = generate(model, idx, length, temperature=temperature, top_p=top_p, seed=seed).cpu()
        new = [row[len(start):].tolist() for row in out]
        texts = tuple(tokenizer.decode(ids) for ids in new)
        nats = count = n_bytes = 0
        for row in out:  # scored: every token after the first, the prompt's rest included
            scored = evaluate_tokens(model, row, n_bytes=max(1, len(tokenizer.decode(row[1:].tolist()).encode())))
            nats += float(scored.losses.double().sum())
            count += scored.n_tokens
            n_bytes += scored.n_bytes
        bpb = bits_per_byte(nats / count, count, n_bytes)
        # distinct-n and repetition count the text's characters for a character model and its tokens otherwise
        rows.append(QualityRow(temperature, top_p, distinct_n(new, n), repetition_rate(new, n), bpb, texts))
    reference = evaluate_text(model, tokenizer, reference_text).bits_per_byte
    return QualitySweep(rows, reference, n)
