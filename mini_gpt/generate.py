"""From logits to text: greedy decoding, temperature, top-k and top-p sampling, with a KV cache.

`generate` returns the prompt followed by the new tokens, (B, T + max_new_tokens), as nanoGPT
and `transformers` do; `stream` yields the new tokens one step at a time.

With learned positions a model cannot see more than `block_size` tokens. When prompt + new tokens
would go past that, the context slides: each step sees only the last `block_size` tokens
(recomputed without the cache from then on, since the cached positions have shifted).
"""

from __future__ import annotations

from typing import Iterator

import torch

from .attention import KVCache


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf."""
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
    probs = sorted_logits.softmax(-1)
    # a token is dropped when the tokens before it already reach p (the first one always stays)
    drop_sorted = probs.cumsum(-1) - probs >= p  # (B, V)
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _check_args(idx, max_new_tokens, temperature, top_k, top_p, do_sample) -> None:
    if not torch.is_tensor(idx) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if torch.is_tensor(idx) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (B, T) tensor of token ids, got {shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


@torch.no_grad()
def stream(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool = True,
    use_cache: bool = True,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), as it is produced."""
    _check_args(idx, max_new_tokens, temperature, top_k, top_p, do_sample)
    config = model.config
    was_training = model.training
    model.eval()
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    limit = config.block_size if config.pos_encoding == "learned" else None
    cache = KVCache.for_model(model, max_len=idx.size(1) + max_new_tokens) if use_cache else None
    seq = idx
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            if limit is not None and seq.size(1) > limit:
                cache = None  # the window slides: cached positions no longer line up
            if cache is not None:
                new = seq if cache.length == 0 else seq[:, cache.length :]
                logits = model(new, kv_cache=cache)[:, -1, :]  # (B, V)
            else:
                context = seq if limit is None else seq[:, -limit:]
                logits = model(context)[:, -1, :]  # (B, V)
            logits = logits.float()
            if do_sample:
                logits = logits / temperature
                if top_k is not None:
                    logits = top_k_filter(logits, top_k)
                if top_p is not None:
                    logits = top_p_filter(logits, top_p)
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)  # (B,)
            else:
                nxt = logits.argmax(-1)  # (B,)
            if eos_token_id is not None:
                nxt = nxt.masked_fill(finished, eos_token_id)  # finished sequences keep emitting eos
                finished |= nxt == eos_token_id
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            yield nxt
            if eos_token_id is not None and bool(finished.all()):
                return
    finally:
        model.train(was_training)


def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The prompt followed by up to `max_new_tokens` new tokens, (B, T + new).

    Keyword arguments as `stream`: temperature, top_k, top_p, do_sample (False: greedy),
    use_cache, eos_token_id (stop once every sequence has produced it), seed.
    """
    new = list(stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1)
