"""Is the model any good? Measures of a language model beyond the training loss.

- Bits per byte compares models across tokenizers. A loss per token cannot compare a character
  model with a BPE model: a BPE token covers several characters, so each of its predictions is
  harder and its loss per token is higher even when the model is better. Counting the cost per
  byte of the text removes the tokenizer from the measure:

      bits per byte = loss * n_tokens / (ln 2 * n_bytes)

  where `loss` is the mean cross-entropy in nats per token over `n_tokens` tokens that encode
  `n_bytes` bytes of UTF-8 text: `loss * n_tokens` is the text's total cost in nats, and dividing
  by ln 2 turns nats into bits.
- `evaluate_text` streams a long text through the model in overlapping windows: each token is
  scored once, with as much context as the window allows (the way `transformers`' perplexity guide
  does it), and the per-token results are kept, so every other measure can be computed from them.
- Calibration: when the model's top guess has probability 0.6, is it right 60% of the time?
  `calibration_bins` holds the reliability diagram, `expected_calibration_error` its summary.
- Multiple choice, scored the way HellaSwag is: the option whose continuation the model finds
  likeliest (per byte, so long options are not penalised for their length) is its answer.
- `bootstrap_interval`: how far an estimate would move on another sample of the same kind of text,
  so two models can be compared honestly.

- The text itself: `distinct_n` (unique n-grams / all n-grams) and `repetition_rate`, for samples;
  `mini_gpt.generation_quality` measures them across temperatures and top-p values.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .validation import check_choice, check_int, check_number, is_int

__all__ = ["bits_per_byte", "TextEvaluation", "evaluate_text", "evaluate_tokens", "Calibration", "calibration_bins",
           "expected_calibration_error", "ChoiceItem", "ChoiceResult", "option_log_likelihoods",
           "multiple_choice", "next_line_task", "Interval", "bootstrap_interval", "distinct_n", "repetition_rate"]


def bits_per_byte(loss: Any, n_tokens: int, n_bytes: int) -> float:
    """The bits per byte of a text: `loss * n_tokens / (ln 2 * n_bytes)`.

    loss:     mean cross-entropy in nats per token (a number >= 0, or a one-element tensor)
    n_tokens: how many tokens the loss is averaged over (an int >= 1)
    n_bytes:  how many bytes of UTF-8 text those tokens encode (an int >= 1)

    A character model of Tiny Shakespeare (one byte per character there) at loss 1.5 nats per
    token scores 1.5 / ln 2 = 2.16 bits per byte.
    """
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = loss.item()
    loss = check_number("loss", loss, min=0)
    n_tokens = check_int("n_tokens", n_tokens, min=1)
    n_bytes = check_int("n_bytes", n_bytes, min=1)
    return loss * n_tokens / (math.log(2) * n_bytes)


# ---------------------------------------------------------------------------- a long text, window by window


@dataclass(frozen=True)
class TextEvaluation:
    """What the model made of each scored token of a text, in text order (N scored tokens).

    losses:     (N,) -log p(token) in nats
    correct:    (N,) bool, the model's most likely token was this one
    confidence: (N,) the probability of the model's most likely token (right or wrong)
    positions:  (N,) how many tokens of context the prediction saw, minus one (its window position)
    n_bytes:    the UTF-8 bytes the scored tokens encode
    """

    losses: torch.Tensor
    correct: torch.Tensor
    confidence: torch.Tensor
    positions: torch.Tensor
    n_bytes: int

    @property
    def n_tokens(self) -> int:
        return self.losses.numel()

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per token (summed in float64: a long text adds many terms)."""
        return float(self.losses.double().mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.loss, self.n_tokens, self.n_bytes)

    @property
    def accuracy(self) -> float:
        """Next-token accuracy: how often the most likely token was the right one."""
        return float(self.correct.double().mean())

    def summary(self) -> dict[str, float | int]:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "accuracy": self.accuracy, "tokens": self.n_tokens, "bytes": self.n_bytes}


def _windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first scored target, end) of each window over n tokens.

    Window k holds tokens [k * stride, k * stride + window). It scores the targets the windows before
    it have not, from its second token on (its first token has no prediction inside the window):
    with stride < window every target from token 1 on is scored once; with stride = window the text
    is cut into blocks scored separately, as a plain evaluation does.
    """
    spans, done = [], 1  # `done`: the first target no window has scored yet
    for begin in range(0, n - 1, stride):
        end = min(begin + window, n)
        first = max(begin + 1, done)
        if first < end:
            spans.append((begin, first, end))
        done = end
        if end == n:
            break
    return spans


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, tokens: Sequence[int] | torch.Tensor, *, n_bytes: int,
                    window: int | None = None, stride: int | None = None, batch_size: int = 8) -> TextEvaluation:
    """Score a text given as token ids (see `evaluate_text`); `n_bytes` is the UTF-8 size of the
    scored tokens (all but the first)."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be a 1-D tensor or list of token ids, got a {tokens.dtype} tensor "
                            f"of shape {tuple(tokens.shape)}")
        ids = tokens.long().cpu()
    else:
        if not all(is_int(t) for t in tokens):
            raise TypeError("tokens must be a 1-D tensor or list of token ids (ints)")
        ids = torch.tensor(list(tokens), dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError(f"tokens must hold at least 2 tokens (the first is only context), got {ids.numel()}")
    block = model.config.block_size
    window = check_int("window", block if window is None else window, min=2, max=block,
                       what=f"an int in [2, {block}] (the model's block_size)")
    stride = window // 2 if stride is None else stride
    stride = check_int("stride", stride, min=1, max=window, what=f"an int in (0, {window}] (the window)")
    batch_size = check_int("batch_size", batch_size, min=1)
    n_bytes = check_int("n_bytes", n_bytes, min=1)
    device = next(model.parameters()).device
    spans = _windows(ids.numel(), window, stride)
    was_training = model.training
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        # full windows in batches; the last, shorter one (if any) on its own
        full = [s for s in spans if s[2] - s[0] == window]
        groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
        groups += [[s] for s in spans if s[2] - s[0] != window]
        for group in groups:
            x = torch.stack([ids[b:e] for b, _, e in group]).to(device)  # (B, T)
            logits = model(x).float()  # (B, T, V)
            for row, (b, first, e) in enumerate(group):
                pred = logits[row, first - 1 - b:e - 1 - b]  # the guesses for targets first..e-1
                target = x[row, first - b:e - b]
                lse = pred.logsumexp(-1)
                top, guess = pred.max(-1)
                parts.append((lse - pred.gather(-1, target[:, None])[:, 0], guess == target, (top - lse).exp(),
                              torch.arange(first - 1 - b, e - 1 - b, device=device)))
    finally:
        model.train(was_training)
    losses, correct, confidence, positions = (torch.cat(p).cpu() for p in zip(*parts, strict=True))
    return TextEvaluation(losses, correct, confidence, positions, n_bytes)


def evaluate_text(model: torch.nn.Module, tokenizer: Any, text: str, *, window: int | None = None,
                  stride: int | None = None, batch_size: int = 8) -> TextEvaluation:
    """Loss, perplexity, bits per byte and next-token accuracy of `model` on a long `text`.

    The text is encoded once and read in windows of `window` tokens (default: the model's
    block_size) that start `stride` tokens apart (default: half a window), `batch_size` windows per
    forward pass. Each token from the second on is scored once, by the window that gives it the
    most context: a smaller stride gives each token more context (a lower loss) for more compute;
    stride = window cuts the text into independent blocks, as training's evaluation does.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("text must not be empty")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"text must encode to at least 2 tokens (the first is only context), got {len(ids)}")
    # the scored text is all but the first token; a first token that ends mid-character counts whole
    n_bytes = max(1, len(text.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8")))
    return evaluate_tokens(model, ids, n_bytes=n_bytes, window=window, stride=stride, batch_size=batch_size)


# ---------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """A reliability diagram's data: the confidences cut into `n_bins` equal bins of [0, 1].

    edges (n_bins + 1,); per bin: count, confidence (mean), accuracy (mean of correct), NaN where empty;
    ece: the expected calibration error, sum over bins of count / N * |accuracy - confidence|.
    """

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    ece: float


def _confidences(confidence: Any, correct: Any) -> tuple[torch.Tensor, torch.Tensor]:
    conf = torch.as_tensor(confidence).double().flatten()
    ok = torch.as_tensor(correct).double().flatten()
    if conf.numel() == 0:
        raise ValueError("confidence must not be empty")
    if conf.shape != ok.shape:
        raise ValueError(f"confidence and correct must have the same length, got {conf.numel()} and {ok.numel()}")
    if not bool(((conf >= 0) & (conf <= 1)).all()):
        raise ValueError("confidence must hold probabilities in [0, 1]")
    if not bool(((ok == 0) | (ok == 1)).all()):
        raise ValueError("correct must hold booleans (or 0 and 1)")
    return conf, ok


def calibration_bins(confidence: Any, correct: Any, n_bins: int = 10) -> Calibration:
    """Cut the top-1 confidences into `n_bins` equal bins; in each, the mean confidence and how often
    the top-1 token was right. A calibrated model's points lie on the diagonal."""
    n_bins = check_int("n_bins", n_bins, min=1)
    conf, ok = _confidences(confidence, correct)
    which = (conf * n_bins).long().clamp(max=n_bins - 1)  # a confidence of exactly 1 goes in the last bin
    count = torch.bincount(which, minlength=n_bins).double()
    mean_conf = torch.bincount(which, conf, minlength=n_bins) / count  # 0 / 0 = NaN for an empty bin
    mean_acc = torch.bincount(which, ok, minlength=n_bins) / count
    gaps = (mean_acc - mean_conf).abs().nan_to_num(0.0)
    ece = float((count / conf.numel() * gaps).sum())
    return Calibration(torch.linspace(0, 1, n_bins + 1, dtype=torch.float64), count.long(), mean_conf, mean_acc, ece)


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 10) -> float:
    """The gap between confidence and accuracy, averaged over `n_bins` bins weighted by their size:
    0 for a calibrated model, at most 1."""
    return calibration_bins(confidence, correct, n_bins).ece


# ---------------------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class ChoiceItem:
    """A question: a context, the options that may follow it, and the index of the right one."""

    context: str
    options: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not isinstance(self.context, str) or not self.context:
            raise ValueError("context must be a non-empty str")
        if len(self.options) < 2 or not all(isinstance(o, str) and o for o in self.options):
            raise ValueError(f"options must be at least 2 non-empty strs, got {list(self.options)!r}")
        object.__setattr__(self, "options", tuple(self.options))
        check_int("answer", self.answer, min=0, max=len(self.options) - 1)


@torch.no_grad()
def option_log_likelihoods(model: torch.nn.Module, tokenizer: Any, context: str,
                           options: Sequence[str]) -> list[tuple[float, int, int]]:
    """(sum of log p over the option's tokens, its tokens, its bytes) for each option after `context`.

    All options are scored in one batch, padded on the right (a causal model never looks right, so
    the padding changes nothing it scores). The context is cut from the left to fit the model.
    """
    if not isinstance(context, str) or not context:
        raise ValueError("context must be a non-empty str")
    if isinstance(options, str) or len(options) < 2:
        raise ValueError(f"options must be a list of at least 2 strs, got {options!r}")
    block = model.config.block_size
    ctx = tokenizer.encode(context)
    rows, spans = [], []
    for option in options:
        opt = tokenizer.encode(option)
        if not opt or len(opt) >= block:
            raise ValueError(f"options must each encode to 1..{block - 1} tokens, got {len(opt)} for {option!r}")
        keep = ctx[-(block - len(opt)):]
        rows.append(keep + opt)
        spans.append((len(keep), len(keep) + len(opt)))
    width = max(map(len, rows))
    device = next(model.parameters()).device
    x = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    was_training = model.training
    model.eval()
    try:
        logp = model(x).float().log_softmax(-1)  # (n_options, width, V)
    finally:
        model.train(was_training)
    out = []
    for row, (option, (a, b)) in enumerate(zip(options, spans, strict=True)):
        picked = logp[row, a - 1:b - 1].gather(-1, x[row, a:b, None])  # log p of each option token
        out.append((float(picked.double().sum()), b - a, len(option.encode("utf-8"))))
    return out


@dataclass(frozen=True)
class ChoiceResult:
    """Per item: the option chosen and whether it was right; accuracy and the chance level."""

    chosen: list[int]
    correct: torch.Tensor
    chance: float

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())


def multiple_choice(model: torch.nn.Module, tokenizer: Any, items: Sequence[ChoiceItem],
                    normalize: str = "byte") -> ChoiceResult:
    """Answer each item with the option of highest log-likelihood: per byte (`normalize="byte"`,
    HellaSwag's acc_norm), per token ("token"), or summed ("sum", which favours short options)."""
    normalize = check_choice("normalize", normalize, ("byte", "token", "sum"))
    if not items:
        raise ValueError("items must not be empty")
    chosen = []
    for item in items:
        scored = option_log_likelihoods(model, tokenizer, item.context, item.options)
        div = {"byte": lambda s: s[2], "token": lambda s: s[1], "sum": lambda s: 1}[normalize]
        scores = [s[0] / div(s) for s in scored]
        chosen.append(max(range(len(scores)), key=scores.__getitem__))
    correct = torch.tensor([c == item.answer for c, item in zip(chosen, items, strict=True)])
    chance = sum(1 / len(item.options) for item in items) / len(items)
    return ChoiceResult(chosen, correct, chance)


def next_line_task(text: str, n_items: int, *, n_options: int = 4, context_lines: int = 4, max_chars: int | None = None,
                   seed: int = 0) -> list[ChoiceItem]:
    """A multiple-choice task from a text, shaped like HellaSwag: the context is `context_lines`
    lines and the start of the next one, cut between two words; the options are the real rest of
    that line and `n_options - 1` rests of lines drawn from elsewhere (cut the same way), each at
    most `max_chars` characters with its newline (for a model with a short context). Use held-out
    text. The right option's place is drawn at random, so chance is 1 / n_options."""
    n_items = check_int("n_items", n_items, min=1)
    n_options = check_int("n_options", n_options, min=2)
    context_lines = check_int("context_lines", context_lines, min=1)
    if max_chars is not None:
        max_chars = check_int("max_chars", max_chars, min=3)
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty str")
    lines = text.split("\n")

    def cuts(line: str) -> list[int]:
        """Where a line may be cut: at a space with a word on both sides, leaving a short enough rest."""
        shortest = 0 if max_chars is None else len(line) + 1 - max_chars
        return [i for i, ch in enumerate(line) if ch == " " and max(0, shortest) <= i < len(line.rstrip()) - 1 and i]

    cuttable = [i for i in range(len(lines)) if cuts(lines[i])]
    questions = [i for i in cuttable if i >= context_lines]
    if len(questions) < n_items or len(cuttable) < n_options:
        raise ValueError(f"text has {len(questions)} lines that can be cut after {context_lines} lines of context: "
                         f"too few for n_items={n_items} with n_options={n_options}")
    rng = random.Random(seed)

    def rest(i: int) -> str:
        return lines[i][rng.choice(cuts(lines[i])):] + "\n"

    items = []
    for q in rng.sample(questions, n_items):
        cut = rng.choice(cuts(lines[q]))
        true = lines[q][cut:] + "\n"
        options: list[str] = []
        for _ in range(100 * n_options):  # a text of few distinct lines may not have enough others
            other = rest(rng.choice(cuttable))
            if other != true and other not in options:
                options.append(other)
            if len(options) == n_options - 1:
                break
        else:
            raise ValueError(f"text has too few distinct lines for n_options={n_options}")
        answer = rng.randrange(n_options)
        options.insert(answer, true)
        context = "\n".join(lines[q - context_lines:q]) + "\n" + lines[q][:cut]
        items.append(ChoiceItem(context, tuple(options), answer))
    return items


# ---------------------------------------------------------------------------- error bars


@dataclass(frozen=True)
class Interval:
    """An estimate and its bootstrap confidence interval [low, high]."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_interval(values: Any, statistic: Callable[[torch.Tensor], Any] | None = None, *,
                       n_resamples: int = 1000, confidence: float = 0.95, block: int = 1,
                       seed: int = 0) -> Interval:
    """How much `statistic(values)` (default: the mean) would vary on another sample like this one.

    Resamples the rows of `values` with replacement `n_resamples` times and returns the estimate
    with the percentile interval holding `confidence` of the resampled statistics. Neighbouring
    tokens of a text are not independent: `block` > 1 resamples runs of `block` neighbours together,
    which widens the interval to what the correlation warrants. For a paired comparison of two
    models on the same text, pass the differences of their per-token losses.
    """
    x = torch.as_tensor(values)
    if x.dim() == 0 or x.shape[0] < 2:
        raise ValueError("values must hold at least 2 rows")
    n_resamples = check_int("n_resamples", n_resamples, min=1)
    confidence = check_number("confidence", confidence, min=0, max=1, min_open=True, max_open=True)
    block = check_int("block", block, min=1, max=x.shape[0], what=f"an int in [1, {x.shape[0]}] (the rows)")
    g = torch.Generator().manual_seed(check_int("seed", seed, min=0))
    chunks = list(torch.split(x, block))
    pick = torch.randint(len(chunks), (n_resamples, len(chunks)), generator=g)
    if statistic is None:
        if x.dim() != 1:
            raise ValueError(f"values must be 1-D for the mean, got shape {tuple(x.shape)}; pass a statistic")
        # the mean of a resample from each chunk's sum and size: no resample is built
        sums = torch.stack([c.double().sum() for c in chunks])
        counts = torch.tensor([float(len(c)) for c in chunks], dtype=torch.float64)
        estimate = x.double().mean()
        stats = sums[pick].sum(1) / counts[pick].sum(1)
    else:
        estimate = torch.as_tensor(statistic(x), dtype=torch.float64)
        stats = torch.stack([torch.as_tensor(statistic(torch.cat([chunks[i] for i in row])), dtype=torch.float64)
                             for row in pick.tolist()])
    if estimate.numel() != 1:
        raise ValueError(f"statistic must give one number, got shape {tuple(estimate.shape)}")
    lo, hi = torch.quantile(stats.flatten(), torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2],
                                                          dtype=torch.float64)).tolist()
    return Interval(float(estimate), lo, hi)


# ---------------------------------------------------------------------------- the text itself


def _ngrams(seq: Any, n: int) -> list[tuple]:
    items = tuple(seq.tolist() if isinstance(seq, torch.Tensor) else seq)
    return [items[i:i + n] for i in range(len(items) - n + 1)]


def _sequences(sequences: Any) -> list:
    if isinstance(sequences, (str, torch.Tensor)) or not isinstance(sequences, Sequence) or not sequences:
        raise TypeError("sequences must be a non-empty list of token lists or strings (one per sample)")
    return list(sequences)


def distinct_n(sequences: Sequence[Sequence[int] | str], n: int) -> float:
    """Unique n-grams / all n-grams over `sequences` (token lists or strings, one per sample): 1 when
    nothing repeats, near 0 when the samples go round in loops or all say the same thing."""
    n = check_int("n", n, min=1)
    grams = [g for seq in _sequences(sequences) for g in _ngrams(seq, n)]
    if not grams:
        raise ValueError(f"sequences must hold at least one {n}-gram (every sequence is shorter than n={n})")
    return len(set(grams)) / len(grams)


def repetition_rate(sequences: Sequence[Sequence[int] | str], n: int = 4) -> float:
    """The fraction of n-grams that already occurred earlier in the same sequence: how much each
    sample repeats itself (a loop of greedy decoding scores near 1)."""
    n = check_int("n", n, min=1)
    repeated = total = 0
    for seq in _sequences(sequences):
        grams = _ngrams(seq, n)
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    if not total:
        raise ValueError(f"sequences must hold at least one {n}-gram (every sequence is shorter than n={n})")
    return repeated / total
