"""Training-step speed of a GPT: tokens per second and achieved FLOP/s, side by side.

`run_model_benchmark` times forward + backward (+ AdamW step) for several model sizes, dtypes
and attention paths in one run, so the rows compare fairly. `benchmarks/bench_model.py` and
`mini-gpt bench` print its rows as a table and JSON.

FLOPs per token, the PaLM paper's estimate (appendix B) as nanoGPT's `estimate_mfu` uses it:

    6 * N  +  12 * n_layer * n_embd * T

6N: every parameter does a multiply-add (2 FLOPs) per token in the forward pass and twice that
in the backward pass. N is the parameter count without the position table (a lookup, no
matmul) but with wte, because the tied lm_head is a real (n_embd x vocab) matmul. The second
term is attention's own matmuls (q k^T and weights @ v), which have no parameters: per layer
2 * 2 * T * n_embd forward, times 3 with the backward. Dropout, LayerNorm, softmax and the
optimizer are not counted, so this slightly understates the work done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .attention import ATTENTION_IMPLS
from .config import GPTConfig
from .loss import autoregressive_loss
from .model import GPT
from .validation import check_choice, check_int

# The models compared by default: the course's Shakespeare model and nanoGPT's
# "baby GPT" for Shakespeare (6 layers, 384 wide, 6 heads, 256 context), both with the
# 65-character vocabulary and no dropout (dropout is not what is being measured).
BENCH_MODELS: dict[str, GPTConfig] = {
    "shakespeare-char": GPTConfig.preset("shakespeare-char"),
    "6L-384": GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384),
}

# batch sizes that keep a step around half a second on a 2-core CPU (and fill a GPU better)
DEFAULT_BATCH_SIZE = {"cpu": {"shakespeare-char": 32, "6L-384": 8}, "cuda": {"shakespeare-char": 128, "6L-384": 64}}

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def flops_per_token(model: GPT, seq_len: int) -> int:
    """Training FLOPs per token, 6N + 12 * n_layer * n_embd * T (see the module docstring)."""
    cfg = model.config
    n = model.num_parameters(include_position_embeddings=False)
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * seq_len


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training_steps(
    config: GPTConfig,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    attention: str = "sdpa",
    optimizer_step: bool = True,
    compile: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Time `steps` training steps (after `warmup` untimed ones) of a fresh GPT; one result row."""
    check_choice("dtype", dtype, DTYPES)
    check_choice("attention", attention, ATTENTION_IMPLS)
    batch_size = check_int("batch_size", batch_size, min=1)
    steps = check_int("steps", steps, min=1)
    warmup = check_int("warmup", warmup, min=0)
    device = torch.device(device)
    torch.manual_seed(seed)
    model = GPT(config).to(device).train()
    model.set_attention_impl(attention)
    # fused AdamW: one kernel for all parameters (supported on CPU and CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if optimizer_step else None
    step_model: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if compile else model
    T = config.block_size
    # random tokens: speed does not depend on the values
    idx = torch.randint(0, config.vocab_size, (batch_size, T), device=device)
    amp = torch.autocast(device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] is not None else contextlib.nullcontext()

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with amp:
            logits = step_model(idx)  # (B, T, V)
            loss = autoregressive_loss(logits, idx)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        return loss.item()  # .item() waits for the device, as a real loop does when it logs

    for _ in range(warmup):  # allocations, AdamW's state, autotuning, compilation
        step()
    _sync(device)
    times = []
    cpu_start = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)

    total = sum(times)
    # CPU seconds this process used per wall second: about the thread count when the cores were
    # ours alone, much less when another process took one (then the timings are not comparable)
    cpu_per_wall = (time.process_time() - cpu_start) / total
    tokens = batch_size * T * steps
    fpt = flops_per_token(model, T)
    return {
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "seq_len": T,
        "batch_size": batch_size,
        "params": model.num_parameters(),
        "dtype": dtype,
        "attention": attention,
        "optimizer_step": optimizer_step,
        "compile": compile,
        "steps": steps,
        "step_ms": 1000 * total / steps,
        "step_ms_min": 1000 * min(times),
        "tokens_per_s": tokens / total,
        "flops_per_token": fpt,
        "gflops": fpt * tokens / total / 1e9,
        "cpu_per_wall": cpu_per_wall,
    }


def run_model_benchmark(
    models: Iterable[str] = tuple(BENCH_MODELS),
    *,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    attentions: Sequence[str] = ("explicit", "sdpa"),
    steps: int = 10,
    warmup: int = 2,
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = 2,
    optimizer_step: bool = True,
    compile: bool = False,
    peak_tflops: float | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every (model, dtype, attention) combination; one dict per combination.

    models: names in BENCH_MODELS or GPTConfig presets. threads: torch's CPU thread count (set
    here and reported; None leaves it). peak_tflops: the device's peak, to report MFU (model
    FLOPs utilisation = achieved / peak). progress: called with each row as it is measured.
    """
    check_int("steps", steps, min=1)
    check_int("warmup", warmup, min=0)
    if batch_size is not None:
        check_int("batch_size", batch_size, min=1)
    if threads is not None:
        check_int("threads", threads, min=1)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    for name in models:
        config = BENCH_MODELS[name] if name in BENCH_MODELS else GPTConfig.preset(name)
        bs = batch_size or DEFAULT_BATCH_SIZE.get(dev.type, DEFAULT_BATCH_SIZE["cpu"]).get(name, 8)
        for dtype in dtypes:
            for attention in attentions:
                row = {"model": name}
                row.update(
                    time_training_steps(
                        config,
                        batch_size=bs,
                        steps=steps,
                        warmup=warmup,
                        device=dev,
                        dtype=dtype,
                        attention=attention,
                        optimizer_step=optimizer_step,
                        compile=compile,
                    )
                )
                row.update(device=str(dev), threads=torch.get_num_threads(), torch=torch.__version__)
                if dev.type == "cuda":
                    row["device_name"] = torch.cuda.get_device_name(dev)
                else:
                    row["device_name"] = platform.processor() or platform.machine()
                if peak_tflops:
                    row["mfu"] = row["gflops"] / (1000 * peak_tflops)
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    has_mfu = any("mfu" in r for r in rows)
    head = ["model", "params", "batch x T", "dtype", "attention", "ms/step", "tokens/s", "GFLOP/s"]
    if has_mfu:
        head.append("MFU")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [
            r["model"],
            f"{r['params'] / 1e6:.2f}M",
            f"{r['batch_size']} x {r['seq_len']}",
            r["dtype"],
            r["attention"],
            f"{r['step_ms']:.0f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['gflops']:.1f}",
        ]
        if has_mfu:
            cells.append(f"{100 * r['mfu']:.1f}%" if "mfu" in r else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_matmul_peak(n: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> dict[str, float]:
    """The best GFLOP/s of an (n x n) @ (n x n) matmul in fp32 and bf16 on the current threads:
    the ceiling a training step could reach here, the denominator of MFU on a CPU."""
    device = torch.device(device)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up: thread pool, kernel selection
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * n**3 / best / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mini-gpt bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--batch-size", type=int, default=None, help="override the per-model default")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--models", default=",".join(BENCH_MODELS), help="comma-separated (default: %(default)s)")
    p.add_argument("--dtypes", default=None, help="comma-separated fp32,bf16 (default: both on cpu, bf16 on cuda)")
    p.add_argument("--attention", default="explicit,sdpa", help="comma-separated (default: %(default)s)")
    p.add_argument("--no-optimizer", action="store_true", help="time forward + backward only")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow start)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s, to report MFU")
    p.add_argument("--json", type=Path, default=None, help="write the rows here as JSON")
    args = p.parse_args(argv)

    dtypes = (
        args.dtypes.split(",") if args.dtypes else (["bf16"] if args.device.startswith("cuda") else ["fp32", "bf16"])
    )
    print(
        f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, "
        f"step = forward + backward{'' if args.no_optimizer else ' + AdamW'}",
        flush=True,
    )

    def progress(row: dict) -> None:
        print(
            f"  {row['model']:>16} {row['dtype']} {row['attention']:>8}: {row['step_ms']:.0f} ms/step, "
            f"{row['gflops']:.1f} GFLOP/s",
            file=sys.stderr,
            flush=True,
        )

    rows = run_model_benchmark(
        args.models.split(","),
        dtypes=dtypes,
        attentions=args.attention.split(","),
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads if not args.device.startswith("cuda") else None,
        optimizer_step=not args.no_optimizer,
        compile=args.compile,
        peak_tflops=args.peak_tflops,
        progress=progress,
    )
    if args.peak_tflops is None:
        # no published peak for a CPU: measure what a large GEMM reaches on these threads
        peaks = measure_matmul_peak(device=args.device)
        print("measured matmul peak: " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items()))
        for row in rows:
            row["mfu"] = row["gflops"] / peaks[row["dtype"]]
    print(f"threads: {torch.get_num_threads()}")
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
