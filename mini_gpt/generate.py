"""From logits to text: how a GPT writes, one token at a time.

    prompt (B, T) --model--> next-token logits (B, V) --choose--> next token (B,) --append--> repeat

`generate` returns the prompt followed by the new tokens, (B, T + new), as nanoGPT and
`transformers` do; `stream` yields the new tokens (B,) one step at a time, as they are made.
Both take the decoding options below as keywords, or all at once as a `GenerationConfig`
(`generate(model, idx, 50, config=GenerationConfig(top_k=40))`; keywords override it).

Choosing the next token ("decoding") is where the strategies differ:

- greedy (do_sample=False): always the most likely token. Deterministic, and prone to loops.
- sampling (do_sample=True): draw from softmax(logits / temperature). Below 1 the temperature
  sharpens the distribution, above 1 it flattens it. Filters cut the unreliable tail first:
  `top_k` keeps the k most likely tokens, `top_p` (nucleus) the smallest set whose probability
  reaches p, `min_p` those at least min_p times as likely as the most likely one. They apply in
  that order, after the temperature, and only when sampling.
- `repetition_penalty` (CTRL, Keskar et al. 2019), for every strategy: every token already in the
  sequence (prompt included) gets its logit divided by the penalty if positive, multiplied if
  negative, so > 1 makes repeats less likely.
- beam search (num_beams > 1): follows the num_beams most likely *sequences* instead of one
  greedy token, and returns the best finished one. Its scoring and stopping rules are
  `transformers`' (see `_beam_search`), so the two agree token for token on the same weights.

Speed: a KV cache (`attention.KVCache`, preallocated for the whole generation) keeps every
layer's keys and values, so after the prompt each step feeds the model one token per sequence
instead of the whole text. Beam search reorders the cache when beams swap places. Each step
then multiplies one vector per sequence by every weight matrix, so on a CPU the speed is how
fast the weights stream from memory: `mini_gpt.linear.Linear` runs those products through
oneDNN, which streams them about twice as fast as `F.linear` in float32.

Batches of prompts of different lengths are left-padded (`pad_prompts`): padding goes in front,
so every sequence's newest token sits in the last column. The attention mask hides the padding
and the position ids start each sequence at 0, so each sequence is continued as if it were alone.

Learned positions stop at `block_size`. When a prompt, or prompt + new tokens, needs more, the
context slides: the model sees only the last `block_size` tokens (positions 0..block_size-1
again) and recomputes them every step without the cache, since cached keys were made at
positions that have shifted. Pass `strict=True` to get a ValueError instead. Sinusoidal and
RoPE positions have no such limit.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .attention import KVCache
from .logits_filters import apply_repetition_penalty, min_p_filter, top_k_filter, top_p_filter
from .validation import check_bool, check_int, check_number

# ---------------------------------------------------------------------------------------------
# The options, checked once when they are made


@dataclass(frozen=True)
class GenerationConfig:
    """How `generate` and `stream` choose each next token: every decoding option, checked here,
    once, when the config is made (a bad one raises naming it). Frozen: `replace(...)` derives one.
    `generate` checks what depends on the model: token ids within its vocabulary, strict's context.

    do_sample: False = greedy (or beam search with num_beams > 1); the next four shape sampling only.
    temperature (> 0), top_k (>= 1), top_p (in (0, 1]), min_p (in [0, 1)): see the module notes;
        None turns a filter off.
    repetition_penalty: > 0; 1.0 = off, > 1 discourages repeating tokens.
    num_beams, length_penalty, early_stopping (True, False or "never"): beam search, as in `transformers`.
    use_cache: feed only the new token each step (False recomputes the whole context: slower, same tokens).
    eos_token_id: a sequence that produces it is finished and pads from then on (with pad_token_id,
        default eos_token_id, else 0); generation stops once all are finished.
    seed: sample from a generator of our own seeded with it (same seed -> same text); the global RNG
        is left untouched. None: use the global RNG.
    strict: with learned positions, raise ValueError instead of sliding the window when the prompt +
        new tokens outgrow block_size.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    do_sample: bool = True
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    use_cache: bool = True
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    seed: int | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        def keep(name: str, value: Any) -> None:  # frozen: store the checked value (a plain int/float/bool)
            object.__setattr__(self, name, value)

        for name in ("do_sample", "use_cache", "strict"):
            keep(name, check_bool(name, getattr(self, name)))
        if self.do_sample:
            when = "a finite number > 0 when sampling (do_sample=True; for greedy decoding pass do_sample=False)"
            keep("temperature", check_number("temperature", self.temperature, min=0, min_open=True, what=when))
        else:
            keep("temperature", check_number("temperature", self.temperature, finite=False))
        if self.top_k is not None:
            keep("top_k", check_int("top_k", self.top_k, min=1, what="an int >= 1 or None"))
        if self.top_p is not None:
            keep("top_p", check_number("top_p", self.top_p, min=0, min_open=True, max=1, what="in (0, 1] or None"))
        if self.min_p is not None:
            keep("min_p", check_number("min_p", self.min_p, min=0, max=1, max_open=True, what="in [0, 1) or None"))
        keep("repetition_penalty", check_number("repetition_penalty", self.repetition_penalty, min=0, min_open=True,
                                                what="a finite number > 0 (1.0 = no penalty)"))
        keep("num_beams", check_int("num_beams", self.num_beams, min=1))
        if self.num_beams > 1 and self.do_sample:
            raise ValueError(f"num_beams={self.num_beams} with do_sample=True (beam sampling) is not supported; "
                             f"pass do_sample=False for beam search")
        keep("length_penalty", check_number("length_penalty", self.length_penalty, what="a finite number"))
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        for name in ("eos_token_id", "pad_token_id", "seed"):  # the range of a token id is the model's
            value = getattr(self, name)
            what = "an int or None" if name == "seed" else "None or an int (a token id)"
            keep(name, None if value is None else check_int(name, value, what=what))

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with some options changed (checked again)."""
        return dataclasses.replace(self, **changes)

    @property
    def fill_token_id(self) -> int:
        """The id that pads prompts and finished sequences: pad_token_id, else eos_token_id, else 0."""
        return next((t for t in (self.pad_token_id, self.eos_token_id) if t is not None), 0)


OPTIONS = tuple(f.name for f in dataclasses.fields(GenerationConfig))  # the keywords generate/stream take

# ---------------------------------------------------------------------------------------------
# Prompts: one tensor, or a list of token-id lists of different lengths (left-padded).


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_token_id: int = 0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists into idx (B, T) and attention_mask (B, T) (bool, True = real token).

    Padding goes on the left so that every sequence's last token is in the last column: that is
    where the next token is read off, and where each new token is appended.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists; encode text with a tokenizer first")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, torch.Tensor):
            p = p.tolist()
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
            raise ValueError(f"prompts[{i}] must be a list of token ids, got {type(p).__name__}")
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token to continue")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise ValueError(f"prompts[{i}] must hold int token ids, got {p[:8]!r}")
        rows.append(list(p))
    T = max(len(r) for r in rows)
    idx = torch.tensor([[pad_token_id] * (T - len(r)) + r for r in rows], dtype=torch.long, device=device)
    mask = torch.tensor([[False] * (T - len(r)) + [True] * len(r) for r in rows], device=device)
    return idx, mask  # (B, T) each


def _prepare(model, idx, attention_mask, pad_token_id) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(idx (B, T) on the model's device, left-padding mask (B, T) or None when nothing is padded)."""
    device = model.lm_head.weight.device
    if not isinstance(idx, torch.Tensor):
        if isinstance(idx, Sequence) and len(idx) > 0 and all(isinstance(t, int) for t in idx):
            idx = [idx]  # one prompt as a flat list of ids
        if attention_mask is not None:
            raise ValueError("attention_mask is made for you when idx is a list of prompts; pass it only with a tensor")
        idx, attention_mask = pad_prompts(idx, pad_token_id, device=device)
    if idx.dim() != 2 or idx.size(0) == 0 or idx.size(1) == 0:
        hint = "; for one sequence use idx[None]" if idx.dim() == 1 and idx.numel() else ""
        raise ValueError(
            f"idx must be a non-empty (B, T) tensor of token ids (an empty prompt has nothing to continue), "
            f"got shape {tuple(idx.shape)}{hint}"
        )
    if idx.dtype.is_floating_point or idx.dtype == torch.bool:
        raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
    idx = idx.to(device=device, dtype=torch.long)
    if attention_mask is None:
        return idx, None
    mask = torch.as_tensor(attention_mask, device=device)
    if tuple(mask.shape) != tuple(idx.shape):
        raise ValueError(f"attention_mask must have the shape of idx {tuple(idx.shape)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError(
            "attention_mask must be left-padded (False...False True...True in every row, the last column "
            "real): generation appends on the right; pad_prompts(...) builds such a batch"
        )
    return idx, (None if bool(mask.all()) else mask)


# ---------------------------------------------------------------------------------------------
# Feeding the model


class _Feeder:
    """Runs the model on what it has not seen yet and returns the next-token logits (rows, V).

    `tokens` (rows, total) is the output buffer: the prompt, then each new token as it is chosen.
    With a cache the first call feeds the whole prompt and later calls only the tokens added
    since. Without one (use_cache=False, or once a learned-position model's context outgrows
    block_size) every call feeds the whole context again, at most its last `window` tokens.
    """

    def __init__(self, model, tokens, mask, prompt_len, *, use_cache: bool, window: int | None) -> None:
        self.model, self.tokens, self.window = model, tokens, window
        total = tokens.size(1)
        # the last token is never fed back, so the cache needs total - 1 positions at most
        need = total - 1 if window is None else min(total - 1, window)
        fits = window is None or prompt_len <= window
        self.cache = KVCache.for_model(model, max_len=max(need, prompt_len)) if use_cache and fits else None
        self.mask = None
        if mask is not None:
            # preallocated (rows, total): the prompt's padding, then True for every new token, so
            # each step passes a view instead of building a new mask
            self.mask = torch.ones_like(tokens, dtype=torch.bool)
            self.mask[:, :prompt_len] = mask
            self.n_pad = (~mask).sum(1)  # (rows,): where each sequence really starts
            self.cols = torch.arange(total, device=tokens.device)  # (total,)

    def logits(self, cur: int) -> torch.Tensor:
        """Logits (rows, V) for the token after tokens[:, :cur]."""
        if self.cache is not None and self.window is not None and cur > self.window:
            self.cache = None  # the window starts to slide: cached keys sit at stale positions
        if self.cache is not None:
            start, first = self.cache.length, 0  # feed what the cache has not seen
        else:
            start = 0 if self.window is None else max(0, cur - self.window)
            first = start
        position_ids = attention_mask = None
        if self.mask is not None:
            attention_mask = self.mask[:, first:cur]  # (rows, S): the keys the model attends to
            # position = distance from the first real token in view (padding sits at 0, unseen)
            first_real = self.n_pad.clamp(min=first)[:, None]  # (rows, 1)
            position_ids = (self.cols[start:cur] - first_real).clamp(min=0)  # (rows, cur - start)
        logits = self.model(
            self.tokens[:, start:cur], kv_cache=self.cache, position_ids=position_ids, attention_mask=attention_mask
        )  # (rows, cur - start, V)
        return logits[:, -1].float()  # (rows, V): only the last position predicts a new token

    def reorder(self, index: torch.Tensor) -> None:
        """Row i becomes old row index[i] (beam search). Beams stay inside their prompt's group,
        so the padding (mask, n_pad) is the same for every row of a group and needs no change."""
        self.tokens.copy_(self.tokens.index_select(0, index))
        if self.cache is not None:
            self.cache.reorder(index)


def _seen_tokens(tokens: torch.Tensor, mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """bool (rows, V): which tokens occur in each prompt (padding left out)."""
    ids = tokens if mask is None else tokens.masked_fill(~mask, vocab_size)  # padding -> a spare column
    seen = torch.zeros(tokens.size(0), vocab_size + 1, dtype=torch.bool, device=tokens.device)
    return seen.scatter_(1, ids, True)[:, :vocab_size]


# ---------------------------------------------------------------------------------------------
# Greedy and sampling


def _next_token(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Logits (B, V) -> the chosen token ids (B,)."""
    if not config.do_sample:
        return logits.argmax(-1)  # (B,)
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    if config.min_p is not None:
        logits = min_p_filter(logits, config.min_p)
    probs = logits.softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)


@torch.inference_mode()  # torch enters/leaves the mode around each step of a generator
def _decode(model, tokens: torch.Tensor, mask: torch.Tensor | None, prompt_len: int, config: GenerationConfig,
            window: int | None) -> Iterator[torch.Tensor]:
    """Greedy or sampled decoding into `tokens` (B, T + max_new_tokens); yields each new column (B,)."""
    T, total = prompt_len, tokens.size(1)
    feeder = _Feeder(model, tokens, mask, T, use_cache=config.use_cache, window=window)
    generator = None
    if config.seed is not None:
        # a generator of our own: reproducible, and the global RNG is left alone
        generator = torch.Generator(device=tokens.device).manual_seed(config.seed)
    penalty = config.repetition_penalty
    seen = _seen_tokens(tokens[:, :T], mask, model.config.vocab_size) if penalty != 1.0 else None
    eos, pad = config.eos_token_id, config.fill_token_id
    finished = torch.zeros(tokens.size(0), dtype=torch.bool, device=tokens.device) if eos is not None else None

    logits = feeder.logits(T)  # (B, V): the whole prompt in one pass
    for cur in range(T, total):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, penalty)
        nxt = _next_token(logits, config, generator)  # (B,)
        if finished is not None:
            nxt = nxt.masked_fill(finished, pad)  # a finished sequence only pads
            finished |= nxt == eos
        tokens[:, cur] = nxt
        yield nxt
        if cur + 1 == total or (finished is not None and bool(finished.all())):
            return
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        logits = feeder.logits(cur + 1)  # (B, V): only the new token goes in with a cache


# ---------------------------------------------------------------------------------------------
# Beam search


@torch.inference_mode()
def _beam_search(model, idx: torch.Tensor, mask: torch.Tensor | None, max_new_tokens: int, config: GenerationConfig,
                 window: int | None) -> torch.Tensor:
    """The most likely continuation of each prompt by beam search: (B, T + n), n <= max_new_tokens.

    Keep num_beams running sequences ("beams") per prompt, scored by their summed log-probability.
    Each step, every beam proposes every token; of the num_beams * V candidates the 2 * num_beams
    best are kept (twice as many, so that enough remain when some end with eos). Among them:
    - those ranked in the first num_beams that end (eos, or the length limit) become finished
      hypotheses, scored by log-probability / (new tokens ** length_penalty); the num_beams best
      are kept. length_penalty > 0 favours longer sequences, < 0 shorter ones.
    - the num_beams best that do not end run on as the next beams; the cache follows them.
    A prompt is done when num_beams hypotheses have finished and no running beam can beat the
    worst of them any more (estimated from the best beam at the current length, or, with
    early_stopping="never" and length_penalty > 0, at the longest allowed length). With
    early_stopping=True it is done as soon as num_beams hypotheses have finished.
    These are `transformers`' rules, so both pick the same tokens on the same weights.
    """
    B, T = idx.shape
    nb, V = config.num_beams, model.config.vocab_size
    eos, pad, lp, early = config.eos_token_id, config.fill_token_id, config.length_penalty, config.early_stopping
    total, rows = T + max_new_tokens, B * nb
    device = idx.device

    # every prompt starts as num_beams copies; rows b*nb .. b*nb+nb-1 belong to prompt b
    tokens = torch.full((rows, total), pad, dtype=torch.long, device=device)
    tokens[:, :T] = idx.repeat_interleave(nb, dim=0)
    beam_mask = None if mask is None else mask.repeat_interleave(nb, dim=0)
    feeder = _Feeder(model, tokens, beam_mask, T, use_cache=config.use_cache, window=window)
    penalty = config.repetition_penalty
    seen = _seen_tokens(tokens[:, :T], beam_mask, V) if penalty != 1.0 else None

    # the copies are identical, so at first only copy 0 may propose (else the beams would all
    # pick the same tokens); -1e9 rather than -inf keeps sums finite
    scores = torch.zeros(B, nb, device=device)  # (B, nb): summed log-probs of the running beams
    scores[:, 1:] = -1e9
    fin_scores = torch.full((B, nb), float("-inf"), device=device)  # finished hypotheses; -inf = empty slot
    fin_tokens = torch.full((B, nb, total), pad, dtype=torch.long, device=device)
    fin_len = torch.zeros(B, nb, dtype=torch.long, device=device)  # new tokens of each hypothesis
    done = torch.zeros(B, dtype=torch.bool, device=device)
    rank = torch.arange(2 * nb, device=device)  # (2nb,): candidates come sorted, best first
    group = torch.arange(B, device=device)[:, None] * nb  # (B, 1): first row of each prompt

    for step in range(max_new_tokens):
        cur = T + step
        logp = F.log_softmax(feeder.logits(cur), dim=-1)  # (rows, V)
        if seen is not None:
            logp = apply_repetition_penalty(logp, seen, penalty)
        cand = (scores.view(rows, 1) + logp).view(B, nb * V)  # (B, nb*V): every beam x every token
        cand_scores, cand_idx = torch.topk(cand, 2 * nb, dim=-1)  # (B, 2nb), best first
        beam, tok = cand_idx // V, cand_idx % V  # (B, 2nb): which beam it extends, with which token
        last = step == max_new_tokens - 1
        ends = torch.ones_like(tok, dtype=torch.bool) if last else (
            tok == eos if eos is not None else torch.zeros_like(tok, dtype=torch.bool)
        )  # (B, 2nb)

        # 1. finished hypotheses: the ending candidates among the first num_beams, unless the
        #    prompt is done (or, with early_stopping=True, already has num_beams of them)
        full = (fin_scores > float("-inf")).all(-1, keepdim=True)  # (B, 1)
        add = ends & (rank < nb) & ~done[:, None] & ~(full & (early is True))  # (B, 2nb)
        if bool(add.any()):
            normed = cand_scores / (step + 1) ** lp  # length-normalised
            new_tokens = tokens.view(B, nb, total).gather(1, beam[..., None].expand(-1, -1, total))  # (B, 2nb, total)
            new_tokens[:, :, cur] = tok
            merged = torch.cat([fin_scores, normed.masked_fill(~add, float("-inf"))], dim=1)  # (B, 3nb)
            keep = torch.topk(merged, nb, dim=-1).indices  # (B, nb)
            fin_scores = merged.gather(1, keep)
            fin_tokens = torch.cat([fin_tokens, new_tokens], dim=1).gather(1, keep[..., None].expand(-1, -1, total))
            fin_len = torch.cat([fin_len, torch.full_like(tok, step + 1)], dim=1).gather(1, keep)
        if last:
            break

        # 2. the next beams: the num_beams best candidates that did not end
        best = torch.topk(cand_scores.masked_fill(ends, float("-inf")), nb, dim=-1).indices  # (B, nb)
        scores = cand_scores.gather(1, best)  # (B, nb), best first
        source = (group + beam.gather(1, best)).view(rows)  # (rows,): the row each new beam extends
        feeder.reorder(source)  # tokens and KV cache follow their beams
        tokens[:, cur] = tok.gather(1, best).view(rows)
        if seen is not None:
            seen = seen.index_select(0, source).scatter_(1, tokens[:, cur : cur + 1], True)

        # 3. is a prompt done? only when it has num_beams hypotheses that no running beam can beat
        full = (fin_scores > float("-inf")).all(-1)  # (B,)
        length = max_new_tokens if (early == "never" and lp > 0) else step + 1
        best_possible = scores[:, 0] / length**lp  # (B,): the best beam, at its most favourable length
        done |= full & (best_possible <= fin_scores.min(-1).values)
        if bool(done.all()) or (early is True and bool(full.all())):
            break

    # the best finished hypothesis of each prompt, padded to the longest
    n = int(fin_len[:, 0].max())
    return fin_tokens[:, 0, : T + n]  # (B, T + n)


# ---------------------------------------------------------------------------------------------
# The public functions


def _with_options(fn: Callable) -> Callable:
    """List GenerationConfig's fields in fn's signature (help(), autocompletion) as keyword-only
    parameters with their defaults: fn takes them through **options, so they are written once."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
               for f in dataclasses.fields(GenerationConfig)]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


def _setup(model, idx, max_new_tokens, attention_mask, config, options, caller: str):
    """The checked call: (config, idx (B, T), left-padding mask (B, T) or None, window or None).

    The options make a GenerationConfig (checked there) or change the one given; what depends on
    the model is checked here. window: the context of learned positions (the others have none).
    """
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model_config, "vocab_size"):
        raise TypeError(f"model must be a mini_gpt GPT (with a .config), got {type(model).__name__}")
    for name in options:
        if name not in OPTIONS:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}; "
                            f"the decoding options are: {', '.join(OPTIONS)}")
    if config is None:
        config = GenerationConfig(**options)
    elif not isinstance(config, GenerationConfig):
        raise TypeError(f"config must be a GenerationConfig or None, got {type(config).__name__}")
    elif options:
        config = config.replace(**options)
    check_int("max_new_tokens", max_new_tokens, min=1)
    V = model_config.vocab_size
    for name in ("eos_token_id", "pad_token_id"):
        tok = getattr(config, name)
        if tok is not None and not 0 <= tok < V:
            raise ValueError(f"{name} must be None or an int in [0, {V - 1}] (the model's vocabulary), got {tok!r}")
    idx, mask = _prepare(model, idx, attention_mask, config.fill_token_id)

    window = model_config.block_size if model_config.pos_encoding == "learned" else None
    if config.strict and window is not None:
        longest = idx.size(1) if mask is None else int(mask.sum(1).max())
        need = longest + max_new_tokens - 1  # the last new token is never fed back
        if need > window:
            raise ValueError(
                f"a {longest}-token prompt + max_new_tokens={max_new_tokens} needs a context of {need} tokens, "
                f"more than block_size={window} (learned positions stop there); shorten the prompt, "
                f"lower max_new_tokens to at most {max(window + 1 - longest, 0)}, or pass strict=False "
                f"to slide a window over the last {window} tokens"
            )
    return config, idx, mask, window


@_with_options
def stream(
    model: torch.nn.Module,
    idx: torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    config: GenerationConfig | None = None,
    attention_mask: torch.Tensor | None = None,
    **options: Any,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), as soon as it is chosen.

    Arguments as `generate`; bad ones raise here, at the call, not at the first token. Stops
    early once every sequence has produced eos. With num_beams > 1 the tokens come all at once
    at the end, since which beam wins is only known then.
    """
    config, idx, mask, window = _setup(model, idx, max_new_tokens, attention_mask, config, options, "stream")
    return _stream(model, idx, mask, max_new_tokens, config, window)


def _stream(model, idx, mask, max_new_tokens, config: GenerationConfig, window: int | None) -> Iterator[torch.Tensor]:
    """Greedy/sampling or beam search, in eval mode (dropout off); yields ordinary (B,) tensors."""
    was_training = model.training
    model.eval()
    try:
        if config.num_beams > 1:
            out = _beam_search(model, idx, mask, max_new_tokens, config, window)
            for t in range(idx.size(1), out.size(1)):
                yield out[:, t].clone()  # clone outside inference mode: an ordinary tensor
            return
        # the output buffer, preallocated: the prompt, then one column per new token
        tokens = torch.empty(idx.size(0), idx.size(1) + max_new_tokens, dtype=torch.long, device=idx.device)
        tokens[:, : idx.size(1)] = idx
        for nxt in _decode(model, tokens, mask, idx.size(1), config, window):
            yield nxt.clone()  # outside inference mode: free to modify, usable with autograd
    finally:
        model.train(was_training)


@_with_options
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor | Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    config: GenerationConfig | None = None,
    attention_mask: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """The prompt followed by up to `max_new_tokens` new tokens, (B, T + new).

    idx: (B, T) token ids, or a list of token-id lists of any lengths (left-padded for you with
        pad_token_id; the padding stays in the returned tensor, in front).
    attention_mask: with a (B, T) tensor, bool or 0/1, True/1 = real token, left-padded.
    config: a GenerationConfig holding the decoding options (default: GenerationConfig()).
    options: any of its fields as keywords (temperature=0.8, top_k=40, do_sample=False, seed=0,
        ...; see GenerationConfig), instead of a config or overriding the one given.
    """
    config, idx, mask, window = _setup(model, idx, max_new_tokens, attention_mask, config, options, "generate")
    new = list(_stream(model, idx, mask, max_new_tokens, config, window))  # n x (B,), n <= max_new_tokens
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1)  # (B, T + n)


@torch.no_grad()
def next_token_logits(
    model: torch.nn.Module,
    idx: torch.Tensor | Sequence[Sequence[int]],
    *,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int = 0,
) -> torch.Tensor:
    """Logits (B, V) (float32) of the token after each prompt: what `generate` chooses from first.

    Takes the same prompts as `generate` (a list of different lengths is left-padded); with
    learned positions only the last block_size tokens are seen.
    """
    idx, mask = _prepare(model, idx, attention_mask, pad_token_id)
    config = model.config
    window = config.block_size if config.pos_encoding == "learned" else None
    was_training = model.training
    model.eval()
    try:
        return _Feeder(model, idx, mask, idx.size(1), use_cache=False, window=window).logits(idx.size(1))
    finally:
        model.train(was_training)
