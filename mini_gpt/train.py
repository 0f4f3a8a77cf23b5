"""The training loop: AdamW, warmup + cosine, clipping, accumulation, mixed precision, compile,
DDP through torchrun, evaluation, progress, metrics and crash-safe checkpoints.

One optimizer step reads `grad_accum * world_size` micro-batches of `batch_size` windows; with
DDP each rank reads its own share of the same global stream (see `data.BatchStream`), so one
process with `grad_accum=W` and W processes with `grad_accum=1` take the same steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .attention import CausalSelfAttention
from .checkpoint import (
    BEST_DIR,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    restore_model,
    restore_training_state,
    save_checkpoint,
)
from .data import TextDataset
from .validation import Rule, check_settings, setting

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# Rules shared by several fields (a field's rule is also its `mini-gpt train` flag's: see cli.py)
_COUNT = Rule("int", min=1)
_OPTIONAL_COUNT = Rule("int", min=1, optional=True)
_NON_NEGATIVE = Rule("number", min=0.0)
_BETA = Rule("number", min=0.0, max=1.0, max_open=True)
_FLAG = Rule("bool")


@dataclass
class TrainConfig:
    """How to train. `max_iters` is where this run stops; `lr_decay_iters` is the schedule's
    length (default: max_iters), so stopping early and resuming never changes the schedule.
    Without an `out_dir`, nothing is written.

    Each field carries its rule and a one-line help (`validation.setting`): the rules are checked
    when a TrainConfig is made, and `mini-gpt train` makes a flag of every field from the two.
    """

    out_dir: str | None = setting(None, Rule("str", optional=True),
                                  "folder for metrics.jsonl and the checkpoints")
    batch_size: int = setting(32, _COUNT, "windows per micro-batch (per rank under DDP)")
    block_size: int | None = setting(None, _OPTIONAL_COUNT, "window length; default: the model's block_size")
    max_iters: int = setting(2000, _COUNT, "the step where this run stops")
    lr_decay_iters: int | None = setting(None, _OPTIONAL_COUNT,
                                         "length of the learning-rate schedule; default: max_iters")
    learning_rate: float = setting(1e-3, Rule("number", min=0.0, min_open=True),
                                   "peak learning rate, reached at the end of the warmup")
    min_lr: float | None = setting(None, Rule("number", min=0.0, optional=True),
                                   "floor of the cosine, at most learning_rate; default: learning_rate / 10")
    warmup_iters: int = setting(100, Rule("int", min=0), "steps of linear warmup from 0")
    weight_decay: float = setting(0.1, _NON_NEGATIVE, "AdamW's weight decay (on matrices only)")
    beta1: float = setting(0.9, _BETA, "AdamW's beta1, the decay of the gradients' running mean")
    beta2: float = setting(0.99, _BETA, "AdamW's beta2, the decay of the squared gradients' running mean")
    grad_clip: float = setting(1.0, _NON_NEGATIVE, "largest global gradient norm; 0 turns clipping off")
    grad_accum: int = setting(1, _COUNT, "micro-batches per optimizer step")
    eval_interval: int = setting(250, _COUNT, "evaluate every this many steps")
    eval_iters: int = setting(20, _COUNT, "batches per evaluation")
    log_interval: int = setting(10, _COUNT, "write a metrics record every this many steps")
    checkpoint_interval: int | None = setting(None, _OPTIONAL_COUNT,
                                              "save a checkpoint every this many steps; default: eval_interval")
    keep_checkpoints: int = setting(2, _COUNT, "how many of the newest checkpoints to keep")
    device: str = setting("auto", Rule("str", what="a device name such as 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'"),
                          "where to train; 'auto' is CUDA when there is a GPU, else the CPU")
    dtype: str = setting("auto", Rule("choice", choices=("auto", *DTYPES)),
                         "precision; 'auto' is bf16 autocast where the device has bf16 units, else float32")
    compile: bool = setting(False, _FLAG, "torch.compile the model")
    seed: int = setting(1337, Rule("int", min=0), "seed of the training batches (and of the evaluation windows)")
    resume: bool = setting(False, _FLAG, "continue exactly from the newest checkpoint in the output folder")
    progress: bool = setting(True, _FLAG, "progress bar")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.min_lr is not None and self.min_lr > self.learning_rate:
            raise ValueError(f"TrainConfig.min_lr must be in [0, learning_rate={self.learning_rate}], got {self.min_lr}")

    @property
    def schedule_length(self) -> int:
        return self.lr_decay_iters or self.max_iters

    @property
    def floor_lr(self) -> float:
        return self.learning_rate / 10 if self.min_lr is None else self.min_lr


@dataclass
class TrainResult:
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records of this run

    @property
    def val_losses(self) -> list[tuple[int, float]]:
        return [(r["step"], r["val_loss"]) for r in self.history if "val_loss" in r]


# ---------------------------------------------------------------------------------------------
# pieces


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from 0 to learning_rate, then cosine decay to the floor at the schedule's end."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    if step >= cfg.schedule_length:
        return cfg.floor_lr
    progress = (step - cfg.warmup_iters) / max(1, cfg.schedule_length - cfg.warmup_iters)
    return cfg.floor_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.floor_lr)


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings and Linear weights); biases and
    LayerNorm gains are not pulled towards zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    betas = (cfg.beta1, cfg.beta2)
    # the fused kernel does the whole update in one pass over memory (CUDA, and CPU in torch >= 2.4)
    try:
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, foreach=True)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use device='cpu'")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 autocast on GPUs that have it and on CPUs with bf16 units, AVX512-BF16 or AMX (there a
    training step runs ~2x faster than in float32: see `mini-gpt bench`), else float32."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and _cpu_has_bf16_units():
            return torch.bfloat16
        return torch.float32
    return DTYPES[dtype]


def _cpu_has_bf16_units() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def attention_for_training(model: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """Within the block, `model`'s attention layers run the way that trains fastest on `device`
    in `dtype`; after it, each is as it was.

    On CPU, PyTorch's fused attention is slow in bf16: the written-out path makes the whole
    training step ~1.5x faster there (`mini-gpt bench`), with the same numbers.
    """
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    before = [m.impl for m in layers]
    if device.type == "cpu" and dtype == torch.bfloat16:
        for m in layers:
            m.impl = "explicit"
    try:
        yield
    finally:
        for m, impl in zip(layers, before, strict=True):
            m.impl = impl


def autocast_context(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, T, V) logits against (B, T) targets. The batch is already
    shifted (targets = inputs moved by one), so unlike `loss.autoregressive_loss` there is no
    second shift here and every one of the T positions is scored."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: TextDataset,
    *,
    batch_size: int,
    block_size: int,
    iters: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    split: str = "val",
    seed: int = 0,
) -> dict[str, float]:
    """Loss, perplexity and next-token accuracy on `iters` batches of a split.

    The batches come from their own generator with a fixed seed: every evaluation scores the
    same windows (so curves compare like with like) and training's RNG is not touched.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    stream = data.batches(split, batch_size, block_size, seed=seed, device=device)
    total_loss, correct, count = 0.0, 0, 0
    with autocast_context(device, dtype):
        for _ in range(iters):
            x, y = next(stream)
            logits = model(x)
            total_loss += batch_loss(logits, y).item()
            correct += (logits.argmax(-1) == y).sum().item()
            count += y.numel()
    model.train(was_training)
    loss = total_loss / iters
    return {f"{split}_loss": loss, f"{split}_ppl": math.exp(loss), f"{split}_acc": correct / count}


# ---------------------------------------------------------------------------------------------
# one optimisation step (train and finetune.finetune take the same one)


def train_step(
    step: int,
    micro_batch_loss: Callable[[], torch.Tensor],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    ddp: torch.nn.Module | None = None,
) -> tuple[float, float]:
    """Take optimizer step number `step` (0-based) and return (its loss, its learning rate).

    1. the learning rate of the schedule at this step (`lr_at`) goes into every param group;
    2. `cfg.grad_accum` times: `micro_batch_loss()` reads the next micro-batch and returns its
       mean loss (run here under autocast to `dtype`); divided by grad_accum and backpropagated
       (through the gradient scaler, which is on for float16 only), the gradients add up to
       those of one batch grad_accum times as large;
    3. a loss that is not finite stops here, before the update spoils the weights;
    4. the gradient norm of `model`'s trainable parameters is clipped to `cfg.grad_clip` (0: off);
    5. the optimizer steps, and the gradients are set to None for the next step.

    ddp: the DistributedDataParallel wrapper when several processes train: gradients are averaged
    across them only on the last micro-batch (the others run under no_sync), and the loss
    returned is the mean over all processes, the same number on each.
    """
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = 0.0
    for micro in range(cfg.grad_accum):
        sync = ddp is None or micro == cfg.grad_accum - 1
        with (contextlib.nullcontext() if sync else ddp.no_sync()), autocast_context(device, dtype):
            loss = micro_batch_loss() / cfg.grad_accum
        scaler.scale(loss).backward()
        loss_sum += loss.item()
    if ddp is not None:
        loss_sum = _all_reduce_mean(loss_sum, device)
    if not math.isfinite(loss_sum):
        raise FloatingPointError(
            f"training loss is {loss_sum} at step {step + 1}; stopping before the update. "
            f"Try a lower learning rate, more warmup, or float32."
        )
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, lr


# ---------------------------------------------------------------------------------------------
# distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Under torchrun (RANK and WORLD_SIZE set), join the process group: NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    model: torch.nn.Module, data: TextDataset, cfg: TrainConfig, meta: dict[str, Any] | None = None
) -> TrainResult:
    """Train `model` (a `GPT`) on `data` and return the metrics of this run.

    With `cfg.out_dir`, writes `metrics.jsonl` and checkpoints there, and after each evaluation
    that beats every earlier one the checkpoint of that step into `out_dir/best` (see `checkpoint`);
    with `cfg.resume`, continues from the newest loadable checkpoint exactly where it stopped.
    `meta` (JSON-able, e.g. where the data came from) is stored in every checkpoint.
    """
    device = resolve_device(cfg.device)
    dist = setup_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    block_size = cfg.block_size or model.config.block_size
    if block_size > model.config.block_size and model.config.pos_encoding == "learned":
        raise ValueError(
            f"TrainConfig.block_size ({block_size}) exceeds the model's block_size ({model.config.block_size})"
        )
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    ckpt_interval = cfg.checkpoint_interval or cfg.eval_interval

    model.to(device)
    model.train()
    optimizer = configure_optimizer(model, cfg, device.type)
    # a gradient scaler is needed for float16 only (bf16 has float32's range)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    stream = data.batches(
        "train", cfg.batch_size, block_size, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, device=device
    )

    step = 0
    history: list[dict[str, Any]] = []
    if cfg.resume and out_dir is not None and list_checkpoints(out_dir):
        ckpt = latest_checkpoint(out_dir)
        restore_model(ckpt, model)
        restore_training_state(ckpt, optimizer, scaler)
        stream.load_state_dict(ckpt.state["data_stream"])
        step = ckpt.step
        if dist.is_main:
            _truncate_metrics(out_dir / "metrics.jsonl", step)
    elif cfg.resume and out_dir is not None and dist.is_main:
        print(f"--resume: no checkpoint in {out_dir} yet, starting from step 0")
    if step == 0 and out_dir is not None and dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").write_text("")
        shutil.rmtree(out_dir / BEST_DIR, ignore_errors=True)  # a fresh run: an older run's best is not its own
    best_loss = _best_val_loss(out_dir / BEST_DIR) if step > 0 and out_dir is not None else math.inf

    run_model = torch.compile(model) if cfg.compile else model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        run_model = DDP(run_model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(at_step: int, folder: Path | None = None, keep: int = cfg.keep_checkpoints, **extra: Any) -> None:
        save_checkpoint(
            folder or out_dir, step=at_step, model=model, model_config=model.config, optimizer=optimizer,
            scaler=scaler, tokenizer=data.tokenizer, keep=keep,
            extra={"data_stream": stream.state_dict(), "train_config": asdict(cfg), "meta": meta or {}, **extra},
        )

    def micro_batch_loss() -> torch.Tensor:
        x, y = next(stream)
        return batch_loss(run_model(x), y)

    tokens_per_step = cfg.batch_size * block_size * cfg.grad_accum * dist.world_size
    bar = tqdm(total=cfg.max_iters, initial=step, desc="train", unit="step", disable=not (cfg.progress and dist.is_main))
    t_last, tokens_since = time.perf_counter(), 0
    with attention_for_training(model, device, dtype), contextlib.closing(bar):
        while step < cfg.max_iters:
            try:
                loss_sum, lr = train_step(step, micro_batch_loss, model=model, optimizer=optimizer, scaler=scaler,
                                          cfg=cfg, device=device, dtype=dtype, ddp=run_model if dist.enabled else None)
            except FloatingPointError as exc:  # say where training can go on from
                last = list_checkpoints(out_dir)[-1] if out_dir is not None and list_checkpoints(out_dir) else None
                note = f"The last good checkpoint is {last}." if last else "No checkpoint was written yet."
                raise FloatingPointError(f"{exc} {note}") from None
            step += 1
            tokens_since += tokens_per_step
            bar.update(1)

            record: dict[str, Any] | None = None
            if step % cfg.log_interval == 0 or step == cfg.max_iters:
                now = time.perf_counter()
                record = {"step": step, "train_loss": loss_sum, "lr": lr, "tokens_per_s": tokens_since / (now - t_last)}
                bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}")
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                record = record or {"step": step, "train_loss": loss_sum, "lr": lr}
                record.update(
                    evaluate(model, data, batch_size=cfg.batch_size, block_size=block_size, iters=cfg.eval_iters,
                             device=device, dtype=dtype, seed=cfg.seed + 1)
                )
                if dist.is_main and cfg.progress:  # tqdm.write prints even when the bar is disabled
                    bar.write(f"step {step}: train loss {loss_sum:.4f}, val loss {record['val_loss']:.4f}")
            if record is not None:
                history.append(record)
                if out_dir is not None and dist.is_main:
                    with open(out_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
            # the best first: killed between the two, a resume replays this step and finds it kept
            improved = record is not None and record.get("val_loss", math.inf) < best_loss  # a tie keeps the earlier
            if out_dir is not None and dist.is_main and improved:
                best_loss = record["val_loss"]
                save(step, out_dir / BEST_DIR, keep=1, val_loss=best_loss)
            if out_dir is not None and dist.is_main and (step % ckpt_interval == 0 or step == cfg.max_iters):
                save(step)
            if record is not None:  # time spent evaluating and saving does not count as training
                t_last, tokens_since = time.perf_counter(), 0
    return TrainResult(step=step, history=history)


def _all_reduce_mean(value: float, device: torch.device) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def _best_val_loss(best_dir: Path) -> float:
    """The validation loss of the best checkpoint kept so far (inf when there is none that loads)."""
    if not list_checkpoints(best_dir):
        return math.inf
    try:
        return float(latest_checkpoint(best_dir).state.get("val_loss", math.inf))
    except CheckpointError:
        return math.inf


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
