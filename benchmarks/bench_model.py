"""Training-step speed of mini_gpt's GPT: fp32 vs bf16 autocast, explicit vs fused attention.

    python benchmarks/bench_model.py [--steps 10] [--batch-size N] [--json out.json]
    python benchmarks/bench_model.py --device cuda --compile --peak-tflops 989   # H100 bf16 dense

A step is forward + loss + backward + AdamW step (pass --no-optimizer to leave the step out).
Achieved GFLOP/s use the PaLM / nanoGPT estimate 6N + 12 * n_layer * n_embd * T FLOPs per
token (see mini_gpt/bench.py). The measuring lives in `mini_gpt.bench` so that
`mini-gpt bench` runs the same code; this script is a thin wrapper.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mini_gpt.bench import BENCH_MODELS, format_table, run_model_benchmark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    print(f"threads: {torch.get_num_threads()}")
    print(format_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
