"""Fine-tuning a GPT to classify text: a small new head on top of the last token's hidden state.

    idx (B, T) --GPT blocks, ln_f--> hidden (B, T, C) --take the last real token--> (B, C)
        --head (a new nn.Linear)--> class logits (B, num_classes)

A GPT reads left to right, so only the last token's hidden state has seen the whole text: it is
the summary the head reads (GPT-2's own sequence classifier does the same). Batches are padded on
the RIGHT: with a causal mask no real token can see the padding after it, so padding changes
nothing and needs no attention mask, and positions still start at 0.

Three ways to fine-tune, compared in benchmarks/bench_finetune.py:
  "head"  the GPT frozen, only the head trains (the frozen features are what they are)
  "lora"  the GPT frozen plus LoRA adapters (mini_gpt.lora) and the head
  "full"  everything trains (the most parameters, and AdamW keeps 2 numbers per parameter)

The worked task, `scramble_task()`: is a passage of Tiny Shakespeare real, or were its words
shuffled, its letters shuffled, or its words spelled backwards? The library makes it from the
text itself, with a deterministic split. Head-only fine-tuning gets part of the way; LoRA, which
can change what attention gathers, gets much further (benchmarks/bench_finetune.py).
`speaker_task()` (which of 4 characters speaks a passage?) is a harder exercise.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import load_text
from .lora import DEFAULT_TARGETS, add_lora
from .model import GPT
from .tokenizer import CharTokenizer
from .train import (
    TrainConfig,
    TrainResult,
    attention_for_training,
    autocast_context,
    configure_optimizer,
    resolve_device,
    resolve_dtype,
    train_step,
)

# ---------------------------------------------------------------------------------------------
# the model


class GPTClassifier(nn.Module):
    """A GPT with a classification head on the hidden state of each sequence's last real token.

    gpt:          the (pre-trained) GPT; add LoRA to it before or after, or freeze it, as you like
    num_classes:  how many labels
    pad_token_id: the id that right-pads shorter sequences in a batch
    `model(idx, lengths=None)` -> logits (B, num_classes). idx (B, T) is right-padded; `lengths`
    (B,) counts each row's real tokens. Without it, the last token that is not pad_token_id is
    taken: pass lengths when a real text may end with that id.
    """

    def __init__(self, gpt: GPT, num_classes: int, pad_token_id: int) -> None:
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"gpt must be a mini_gpt GPT, got {type(gpt).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        vocab = gpt.config.vocab_size
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab:
            raise ValueError(f"pad_token_id must be a token id in [0, {vocab - 1}], got {pad_token_id!r}")
        self.gpt = gpt
        self.num_classes, self.pad_token_id = num_classes, pad_token_id
        w = gpt.lm_head.weight
        self.head = nn.Linear(gpt.config.n_embd, num_classes, device=w.device, dtype=w.dtype)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)  # GPT-2's init, as for every Linear
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        B, T = idx.shape if isinstance(idx, torch.Tensor) and idx.dim() == 2 else (None, None)
        if B is None:
            raise ValueError(f"idx must be a (B, T) tensor of token ids, got {getattr(idx, 'shape', type(idx))}")
        if lengths is None:
            # position (1-based) of each row's last token that is not padding
            real = idx != self.pad_token_id  # (B, T)
            lengths = (real * torch.arange(1, T + 1, device=idx.device)).amax(dim=1)  # (B,)
        elif not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != (B,):
            got = getattr(lengths, "shape", lengths)
            raise ValueError(f"lengths must be a tensor of shape (B,) = ({B},), got {got}")
        lengths = lengths.to(idx.device)
        if not torch.compiler.is_compiling():
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 1 or hi > T:
                raise ValueError(
                    f"every row needs 1 to T={T} real tokens; got lengths from {lo} to {hi} "
                    f"(a row of nothing but pad_token_id={self.pad_token_id}?)"
                )
        h = self.gpt.hidden_states(idx)  # (B, T, C)
        last = h[torch.arange(B, device=idx.device), lengths - 1]  # (B, C)
        return self.head(last)  # (B, num_classes)


def build_classifier(
    gpt: GPT,
    num_classes: int,
    pad_token_id: int,
    method: str = "lora",
    *,
    rank: int = 8,
    alpha: float = 16,
    targets: str | Sequence[str] = DEFAULT_TARGETS,
    lora_dropout: float = 0.0,
) -> GPTClassifier:
    """A GPTClassifier prepared for one of the fine-tuning methods (the GPT is changed in place):

    "head": freeze the GPT; only the new head trains
    "lora": freeze the GPT, add LoRA adapters (rank, alpha, targets, lora_dropout) and the head
    "full": everything trains
    """
    if method == "head":
        gpt.requires_grad_(False)
    elif method == "lora":
        add_lora(gpt, rank, alpha, targets, lora_dropout)
    elif method == "full":
        gpt.requires_grad_(True)
    else:
        raise ValueError(f"method must be 'head', 'lora' or 'full', got {method!r}")
    return GPTClassifier(gpt, num_classes, pad_token_id)  # the new head always trains


# ---------------------------------------------------------------------------------------------
# the data: labelled texts, padded on the right


@dataclass
class LabeledTexts:
    """One split: idx (N, T) right-padded token ids, lengths (N,) real tokens, labels (N,)."""

    idx: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: torch.Tensor) -> LabeledTexts:
        texts = [self.texts[i] for i in rows.tolist()]
        return LabeledTexts(self.idx[rows], self.lengths[rows], self.labels[rows], texts)


@dataclass
class ClassificationTask:
    """A text classification task with its tokenizer, class names and train/val/test splits."""

    tokenizer: CharTokenizer
    classes: list[str]
    pad_token_id: int
    train: LabeledTexts
    val: LabeledTexts
    test: LabeledTexts
    description: str = ""

    def split(self, name: str) -> LabeledTexts:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)

    def encode(self, texts: Sequence[str], labels: Sequence[int] | None = None) -> LabeledTexts:
        """Tokenize and right-pad texts (e.g. new ones to classify) the way the splits are."""
        return _encode(self.tokenizer, list(texts), list(labels) if labels is not None else [0] * len(texts),
                       self.pad_token_id)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}={len(self.split(n))}" for n in ("train", "val", "test"))
        return f"ClassificationTask(classes={self.classes}, {sizes})"


def _encode(tokenizer: CharTokenizer, texts: list[str], labels: list[int], pad_token_id: int) -> LabeledTexts:
    if not texts:
        raise ValueError("texts must not be empty")
    ids = [tokenizer.encode(t) for t in texts]
    if any(len(i) == 0 for i in ids):
        raise ValueError("every text needs at least one token")
    T = max(len(i) for i in ids)
    idx = torch.full((len(ids), T), pad_token_id, dtype=torch.long)  # (N, T)
    for row, i in enumerate(ids):
        idx[row, : len(i)] = torch.tensor(i, dtype=torch.long)  # real tokens first, padding after
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
    return LabeledTexts(idx, lengths, torch.tensor(labels, dtype=torch.long), texts)


# four characters with many lines, each from a different play (lines in Tiny Shakespeare):
# Gloucester (Richard III, 902), Duke Vincentio (Measure for Measure, 822), Romeo (Romeo and
# Juliet, 604), Petruchio (The Taming of the Shrew, 568)
DEFAULT_SPEAKERS = ("GLOUCESTER", "DUKE VINCENTIO", "ROMEO", "PETRUCHIO")


def speeches(text: str) -> dict[str, list[list[str]]]:
    """Speaker -> their speeches, each a list of lines. In Tiny Shakespeare a speech is a
    paragraph whose first line is the speaker's name and a colon ("ROMEO:")."""
    out: dict[str, list[list[str]]] = defaultdict(list)
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip("\n").split("\n")
        if len(lines) > 1 and re.fullmatch(r"[A-Za-z][A-Za-z' .-]*:", lines[0]):
            out[lines[0][:-1]].append([line for line in lines[1:] if line.strip()])
    return dict(out)


def _passages(lines: list[str], max_len: int) -> list[str]:
    """A speech cut at line ends into passages of at most max_len characters (longer lines cut)."""
    out, cur = [], ""
    for line in lines:
        line = line[:max_len]
        if cur and len(cur) + 1 + len(line) > max_len:
            out.append(cur)
            cur = line
        else:
            cur = f"{cur}\n{line}" if cur else line
    if cur:
        out.append(cur)
    return out


def speaker_task(
    speakers: Sequence[str] = DEFAULT_SPEAKERS,
    *,
    max_len: int = 64,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    text: str | None = None,
) -> ClassificationTask:
    """Who speaks this passage? A classification task made from Tiny Shakespeare.

    Each speech of the chosen speakers is cut at line ends into passages of at most `max_len`
    characters (without the "NAME:" line, of course); the label is the speaker. The split is by
    speech, so no speech has passages in two splits: for each speaker its speeches are shuffled
    with `seed` and divided by `fractions` (train, val, test). Same arguments, same task.
    Tokens are characters, with the same tokenizer as `load_dataset("shakespeare", "char")`,
    so a GPT pre-trained on Tiny Shakespeare reads them as is.

    A hard task for a small character-level model: a word-counting naive Bayes classifier gets
    about 57% of the test passages right (64 characters), a 2-layer GPT fine-tuned in full barely
    beats always answering the most common speaker. `scramble_task` is the course's worked task;
    this one is an exercise (try longer passages, a bigger pre-trained model, or two speakers).
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 8:
        raise ValueError(f"max_len must be an int >= 8, got {max_len!r}")
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three numbers > 0 summing to 1 (train, val, test), got {fractions!r}")
    text = load_text("shakespeare") if text is None else text
    by_speaker = speeches(text)
    speakers = list(speakers)
    unknown = [s for s in speakers if s not in by_speaker]
    if len(speakers) < 2 or unknown or len(set(speakers)) != len(speakers):
        most = sorted(by_speaker, key=lambda s: -sum(map(len, by_speaker[s])))[:8]
        raise ValueError(
            f"speakers must be 2 or more distinct speakers of the text; unknown: {unknown}. "
            f"Those with the most lines: {most}"
        )
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label, speaker in enumerate(speakers):
        todo = by_speaker[speaker]
        order = torch.randperm(len(todo), generator=g).tolist()
        n_train = round(fractions[0] * len(todo))
        n_val = round(fractions[1] * len(todo))
        for rank, i in enumerate(order):
            name = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            for passage in _passages(todo[i], max_len):
                parts[name][0].append(passage)
                parts[name][1].append(label)
    tokenizer = CharTokenizer.from_text(text)
    pad = tokenizer.encode("\n")[0]  # passages never end with a newline; lengths say where they end anyway
    splits = {name: _encode(tokenizer, texts, labels, pad) for name, (texts, labels) in parts.items()}
    return ClassificationTask(
        tokenizer, speakers, pad, splits["train"], splits["val"], splits["test"],
        description=f"who speaks a passage of <= {max_len} characters of Tiny Shakespeare: {', '.join(speakers)}",
    )



# the four classes of `scramble_task`: real text, and three ways of breaking it that keep every
# character (so length and letter counts give nothing away)
SCRAMBLES = ("original", "words shuffled", "letters shuffled", "words reversed")


def _shuffle_words(text: str, rng: random.Random) -> str:
    """The passage's words in a random order; each line keeps its number of words."""
    lines = [line.split(" ") for line in text.split("\n")]
    words = [w for line in lines for w in line]
    rng.shuffle(words)
    it = iter(words)
    return "\n".join(" ".join(next(it) for _ in line) for line in lines)


def _shuffle_letters(text: str, rng: random.Random) -> str:
    """Each word's inner letters shuffled, first and last kept: "Cmabrigde" for "Cambridge"."""

    def shuffle(m: re.Match) -> str:
        w = m.group(0)
        inner = list(w[1:-1])
        rng.shuffle(inner)
        return w[0] + "".join(inner) + w[-1]

    return re.sub(r"[A-Za-z]{4,}", shuffle, text)


def _reverse_words(text: str, rng: random.Random) -> str:
    """Each word spelled backwards, punctuation and spaces left in place: "eht gnik,"."""
    return re.sub(r"[A-Za-z]+", lambda m: m.group(0)[::-1], text)


_SCRAMBLERS = (None, _shuffle_words, _shuffle_letters, _reverse_words)


def scramble_task(
    *,
    max_len: int = 64,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_examples: int | None = 8000,
    text: str | None = None,
) -> ClassificationTask:
    """Real Shakespeare, or which scramble? A 4-class task made from Tiny Shakespeare.

    Passages (speeches cut at line ends into at most `max_len` characters, speaker names left
    out) are each given one of four labels, in equal numbers, and changed to match it:

        0 "original"          as written
        1 "words shuffled"    the same words in a random order (each line keeps its word count)
        2 "letters shuffled"  each word's inner letters shuffled, first and last kept
        3 "words reversed"    each word spelled backwards

    Every scramble keeps every character, so the length and the letter counts of a passage say
    nothing about its label: the model must read it and notice what is wrong, which is what a
    language model pre-trained on Shakespeare is good at. Chance is 25%. Passages that a scramble
    would leave unchanged (e.g. a lone short word) are dropped. The split is by speech (shuffled
    with `seed`, then divided by `fractions`); `max_examples` caps the total, kept in the same
    proportions. Same arguments, same task.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 8:
        raise ValueError(f"max_len must be an int >= 8, got {max_len!r}")
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three numbers > 0 summing to 1 (train, val, test), got {fractions!r}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 12):
        raise ValueError(f"max_examples must be None or an int >= 12, got {max_examples!r}")
    text = load_text("shakespeare") if text is None else text
    all_speeches = [lines for spoken in speeches(text).values() for lines in spoken]
    if not all_speeches:
        raise ValueError("text holds no speeches (paragraphs that start with a 'NAME:' line)")
    rng = random.Random(seed)
    rng.shuffle(all_speeches)
    n_train = round(fractions[0] * len(all_speeches))
    n_val = round(fractions[1] * len(all_speeches))
    groups = {
        "train": all_speeches[:n_train],
        "val": all_speeches[n_train : n_train + n_val],
        "test": all_speeches[n_train + n_val :],
    }
    tokenizer = CharTokenizer.from_text(text)
    pad = tokenizer.encode("\n")[0]
    splits = {}
    for name, group in groups.items():
        passages = [p for lines in group for p in _passages(lines, max_len)]
        if max_examples is not None:
            share = {"train": fractions[0], "val": fractions[1], "test": fractions[2]}[name]
            passages = passages[: max(4, round(share * max_examples))]
        texts, labels = [], []
        for i, passage in enumerate(passages):
            label = i % len(SCRAMBLES)  # equal numbers of each class (the order was shuffled)
            changed = passage if label == 0 else _SCRAMBLERS[label](passage, rng)
            if label != 0 and changed == passage:
                continue
            texts.append(changed)
            labels.append(label)
        splits[name] = _encode(tokenizer, texts, labels, pad)
    return ClassificationTask(
        tokenizer, list(SCRAMBLES), pad, splits["train"], splits["val"], splits["test"],
        description=f"is a passage of <= {max_len} characters of Tiny Shakespeare real, or how was it scrambled?",
    )


# ---------------------------------------------------------------------------------------------
# training and evaluation


@torch.no_grad()
def evaluate_classifier(
    model: GPTClassifier,
    data: LabeledTexts,
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Loss, accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted)
    of `model` on every example of `data`, on the model's device.

    Macro-F1 is the mean of the per-class F1 = 2 TP / (2 TP + FP + FN) over the classes that
    occur (as true or predicted labels): unlike accuracy it counts a rare class as much as a
    common one.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    K = model.num_classes
    confusion = torch.zeros(K, K, dtype=torch.long)
    loss_sum = 0.0
    with autocast_context(device, dtype):
        for start in range(0, len(data), batch_size):
            x, lengths, y = _batch(data, torch.arange(start, min(start + batch_size, len(data))), device)
            logits = model(x, lengths).float()  # (b, K)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            pred = logits.argmax(-1)  # (b,)
            confusion += torch.bincount((y * K + pred).cpu(), minlength=K * K).view(K, K)
    model.train(was_training)
    return {"loss": loss_sum / len(data), **classification_metrics(confusion), "confusion": confusion.tolist()}


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from a (K, K) confusion matrix (rows true, columns predicted)."""
    tp = confusion.diag().double()  # (K,)
    fp = confusion.sum(0).double() - tp  # predicted as k, but not k
    fn = confusion.sum(1).double() - tp  # k, but predicted as something else
    present = (2 * tp + fp + fn) > 0
    f1 = 2 * tp[present] / (2 * tp + fp + fn)[present]
    return {
        "accuracy": (tp.sum() / confusion.sum().clamp(min=1)).item(),
        "macro_f1": f1.mean().item() if present.any() else 0.0,
    }


def _batch(data: LabeledTexts, rows: torch.Tensor, device: torch.device):
    lengths = data.lengths[rows]  # (b,)
    T = int(lengths.max())  # trim the padding no row of this batch needs
    return data.idx[rows, :T].to(device), lengths.to(device), data.labels[rows].to(device)


def finetune(model: GPTClassifier, task: ClassificationTask, cfg: TrainConfig) -> TrainResult:
    """Train the classifier's trainable parameters on task.train; evaluate on task.val.

    Each step is `train.train_step`, the step of `train.train`: AdamW on the parameters with
    requires_grad only (`configure_optimizer`), warmup + cosine learning rate, gradient
    accumulation, clipping, bf16 or float32; around it a tqdm bar, and `cfg.seed` for the order of
    the examples (an epoch is a shuffle of the train split). Uses batch_size, max_iters,
    lr_decay_iters, learning_rate, min_lr, warmup_iters, weight_decay, beta1, beta2, grad_clip,
    grad_accum, eval_interval, log_interval, device, dtype, compile, seed and progress; there are
    no checkpoints (out_dir, resume): keep the result with `save_lora(model, path, include=("head",))`.
    Returns the metrics: {"step", "train_loss", "lr"} every log_interval steps, plus
    "val_loss", "val_accuracy", "val_macro_f1" every eval_interval steps and at the end.
    """
    if not isinstance(model, GPTClassifier):
        raise TypeError(f"model must be a GPTClassifier, got {type(model).__name__}")
    if cfg.out_dir is not None or cfg.resume:
        raise ValueError("finetune writes no checkpoints: leave out_dir=None and resume=False, and save the "
                         "result with save_lora (or save_checkpoint)")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameters")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model.to(device)
    model.train()
    optimizer = configure_optimizer(model, cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))  # float16 only, as in train.py
    run_model = torch.compile(model) if cfg.compile else model
    torch.manual_seed(cfg.seed)  # dropout masks
    order = _shuffled_batches(len(task.train), cfg.batch_size, cfg.seed)

    def micro_batch_loss() -> torch.Tensor:
        x, lengths, y = _batch(task.train, next(order), device)
        return F.cross_entropy(run_model(x, lengths).float(), y)  # logits (B, K)

    history: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.max_iters, desc="finetune", unit="step", disable=not cfg.progress)
    with attention_for_training(model, device, dtype), contextlib.closing(bar):
        for step in range(1, cfg.max_iters + 1):
            loss_sum, lr = train_step(step - 1, micro_batch_loss, model=model, optimizer=optimizer, scaler=scaler,
                                      cfg=cfg, device=device, dtype=dtype)
            bar.update(1)

            record: dict[str, Any] | None = None
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                record = {"step": step, "train_loss": loss_sum, "lr": lr}
                bar.set_postfix(loss=f"{loss_sum:.4f}")
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                record = record or {"step": step, "train_loss": loss_sum, "lr": lr}
                val = evaluate_classifier(model, task.val, dtype=dtype)
                record.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
                if cfg.progress:
                    bar.write(f"step {step}: train loss {loss_sum:.4f}, val loss {val['loss']:.4f}, "
                              f"val accuracy {val['accuracy']:.3f}")
            if record is not None:
                history.append(record)
    return TrainResult(step=cfg.max_iters, history=history)


def _shuffled_batches(n: int, batch_size: int, seed: int):
    """Endless batches of row indices: each epoch is a new shuffle of 0..n-1 (the last, short
    batch of an epoch is dropped, so every step sees batch_size examples)."""
    if n < batch_size:
        raise ValueError(f"batch_size ({batch_size}) must be at most the number of training examples ({n})")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (AdamW: exp_avg and exp_avg_sq per parameter)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))

