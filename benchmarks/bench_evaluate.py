"""Evaluation speed: `mini_gpt.evaluate.evaluate_text` beside a plain loop of `model(...)` calls.

    python benchmarks/bench_evaluate.py [--chars 100000] [--stride 64] [--threads 2] [--json out.json]
    python benchmarks/bench_evaluate.py --quick      # a few seconds: the smoke test

One run, side by side, on the course's shared Shakespeare model (`course.shakespeare_model()`,
trained once per machine) and the held-out tail of Tiny Shakespeare, both on the same windows
(the model's context, starting every `--stride` tokens):

- "plain loop": one window per call, `model(x)` under no_grad, `F.cross_entropy` on the targets
  the window scores: what one would write without the library;
- `evaluate_text` with `--batch-sizes` windows per forward pass (default 1 and 8).

Both score the same tokens; the table checks that their losses agree. tokens/s counts scored
tokens. After an untimed warm-up the implementations take turns `--repeats` times (default 3)
and each row shows its median run. Timings on a shared CPU swing with what else is running:
the table prints the thread count and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import mini_gpt
from mini_gpt import course
from mini_gpt.evaluate import evaluate_text


def plain_loop(model, ids: torch.Tensor, window: int, stride: int) -> float:
    """The mean loss over the same windows and targets as `evaluate_text`, one window per call."""
    nll, count, done = 0.0, 0, 1
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, stride):
            end = min(begin + window, len(ids))
            first = max(begin + 1, done)
            x = ids[begin:end][None]
            logits = model(x)[0, first - 1 - begin:end - 1 - begin]
            nll += F.cross_entropy(logits, ids[first:end], reduction="sum").item()
            count += end - first
            done = end
            if end == len(ids):
                break
    return nll / count


def run(chars: int, stride: int, batch_sizes: list[int], repeats: int) -> list[dict]:
    model, tok = course.shakespeare_model(progress=False), course.char_tokenizer()
    text = course.shakespeare_text()
    held_out = text[int(len(text) * 0.9):][:chars]
    ids = torch.tensor(tok.encode(held_out))
    window = model.config.block_size
    impls = [("plain loop of model(...)", lambda: plain_loop(model, ids, window, stride))]
    impls += [(f"evaluate_text, batch {b}", lambda b=b: evaluate_text(model, tok, held_out, stride=stride,
                                                                       batch_size=b).loss) for b in batch_sizes]
    for _, fn in impls:  # warm-up: thread pool, allocator
        fn()
    n_tokens = evaluate_text(model, tok, held_out, stride=stride).n_tokens  # what both score
    times: dict[str, list[float]] = {name: [] for name, _ in impls}
    losses = {}
    for _ in range(repeats):
        for name, fn in impls:
            start = time.perf_counter()
            losses[name] = fn()
            times[name].append(time.perf_counter() - start)
    base = n_tokens / statistics.median(times[impls[0][0]])
    rows = []
    for name, _ in impls:
        speed = n_tokens / statistics.median(times[name])
        rows.append({"impl": name, "tokens": n_tokens, "seconds": statistics.median(times[name]),
                     "tokens_per_s": speed, "speedup_vs_plain": speed / base, "loss": losses[name],
                     "same_loss": abs(losses[name] - losses[impls[0][0]]) < 1e-4,
                     "tokens_per_s_runs": [n_tokens / t for t in times[name]]})
        print(f"  {name}: {speed:,.0f} tok/s", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| implementation | tokens | tokens/s | vs plain loop | loss | same loss |", "|---|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['speedup_vs_plain']:.2f}x | "
                     f"{r['loss']:.4f} | {'yes' if r['same_loss'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chars", type=int, default=100_000, help="held-out characters to evaluate (default 100000)")
    p.add_argument("--stride", type=int, default=64, help="tokens between window starts (default 64)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="windows per forward pass (default 1 8)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, interleaved; the median is shown")
    p.add_argument("--quick", action="store_true", help="a smoke run: 5000 characters, 1 repeat")
    p.add_argument("--json", help="also write the rows and the setup to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.chars, args.repeats = 5000, 1

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    rows = run(args.chars, args.stride, args.batch_sizes, args.repeats)
    load_after = os.getloadavg()[0]
    setup = {"model": "course.shakespeare_model() (char, 4 layers, context 128)", "chars": args.chars,
             "stride": args.stride, "threads": torch.get_num_threads(), "repeats": args.repeats,
             "torch": torch.__version__, "mini_gpt": mini_gpt.__version__,
             "cpu": platform.processor() or platform.machine(), "load_average_before": load_before,
             "load_average_after": load_after, "total_seconds": time.perf_counter() - start}
    print(f"shared Shakespeare model, {args.chars:,} held-out characters, windows of 128 every {args.stride}; "
          f"torch {torch.__version__} with {setup['threads']} threads; load average {load_before:.2f} before, "
          f"{load_after:.2f} after ({os.cpu_count()} CPUs)\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
