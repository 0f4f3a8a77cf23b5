"""Decoding speed: mini_gpt's `generate` (with and without the KV cache) beside `transformers`' `generate`.

    python benchmarks/bench_generate.py [--new-tokens 200] [--threads 2] [--json out.json]

One run, side by side, on the same random GPT-2 124M weights (`GPTConfig.preset("gpt2")`: a
`transformers.GPT2LMHeadModel` of that size, loaded into mini_gpt with `GPT.from_gpt2`), greedy
decoding from a 4-token prompt, no eos (every row makes all its tokens):

- fp32, batch 1 and batch 8: transformers, mini_gpt with the cache, mini_gpt without it
- bf16 weights (`model.to(torch.bfloat16)`), batch 1: the same three
- fp32 also mini_gpt with the cache and `F.linear` (MKL) for its matrix products instead of the
  default oneDNN kernel of `mini_gpt.linear.Linear` (what the kernel choice is worth)

Without the cache every step re-runs the whole sequence, so its cost grows with the length; those
rows make fewer tokens (--no-cache-tokens) to keep the run short, and the table says how many.
tokens/s counts every sequence of the batch; ms/step is the time of one decoding step (one new
token for every sequence). After an untimed warm-up, the implementations of a setting take turns
`--repeats` times (default 3) and each row shows its median run.

Timings on a shared CPU swing with what else is running: the table prints the thread count and
the load average before and after.
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

import mini_gpt
from mini_gpt import GPT, GPTConfig, generate
from mini_gpt.linear import cpu_inference_kernel, cpu_inference_kernel_as


def gpt2_pair(dtype: torch.dtype):
    """A random GPT-2 124M in transformers and the same weights in mini_gpt, both eval, in `dtype`."""
    import transformers

    transformers.logging.set_verbosity_error()
    c = GPTConfig.preset("gpt2")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                        n_layer=c.n_layer, n_head=c.n_head)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.generation_config.eos_token_id = None  # never stop early: every row makes all its tokens
    hf.generation_config.pad_token_id = 0
    ours = GPT.from_gpt2(hf.state_dict())
    return hf.to(dtype), ours.to(dtype)


def time_once(fn, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(new_tokens)
    seconds = time.perf_counter() - start
    made = out.shape[1] - 4
    assert made == new_tokens, f"made {made} tokens, expected {new_tokens}"
    return seconds, out


def run(new_tokens: int, no_cache_tokens: int, batch_sizes: list[int], bf16: bool, repeats: int) -> list[dict]:
    rows = []
    settings = [("fp32", torch.float32, b) for b in batch_sizes] + ([("bf16", torch.bfloat16, 1)] if bf16 else [])
    models = {}
    for dtype_name, dtype, batch in settings:
        if dtype_name not in models:
            models[dtype_name] = gpt2_pair(dtype)
        hf, ours = models[dtype_name]
        idx = torch.randint(0, ours.config.vocab_size, (batch, 4), generator=torch.Generator().manual_seed(1))
        ones = torch.ones_like(idx)

        def hf_gen(n, hf=hf, idx=idx, ones=ones):
            return hf.generate(idx, attention_mask=ones, max_new_tokens=n, do_sample=False)

        def ours_cached(n, ours=ours, idx=idx):
            return generate(ours, idx, n, do_sample=False)

        def ours_uncached(n, ours=ours, idx=idx):
            return generate(ours, idx, n, do_sample=False, use_cache=False)

        impls = [("transformers generate", hf_gen, new_tokens), ("mini_gpt, KV cache", ours_cached, new_tokens)]
        if dtype == torch.float32:
            impls.append(("mini_gpt, KV cache, F.linear (MKL) kernel", ours_cached, new_tokens))
        impls.append(("mini_gpt, no cache", ours_uncached, no_cache_tokens))

        def kernel(name):
            return cpu_inference_kernel_as("torch" if "F.linear" in name else cpu_inference_kernel())

        with torch.inference_mode():
            for name, fn, n in impls:  # warm-up: thread pool, allocator, kernel choice
                with kernel(name):
                    fn(min(n, 8))
        # the implementations take turns, so a slow spell of the machine hits them all alike
        times: dict[str, list[float]] = {name: [] for name, _, _ in impls}
        outs = {}
        for _ in range(repeats):
            for name, fn, n in impls:
                with kernel(name):
                    seconds, outs[name] = time_once(fn, n)
                times[name].append(seconds)
        ref = outs["transformers generate"]
        hf_speed = batch * new_tokens / statistics.median(times["transformers generate"])
        for name, _, n in impls:
            seconds = statistics.median(times[name])
            speed = batch * n / seconds
            rows.append({
                "impl": name, "dtype": dtype_name, "batch": batch, "new_tokens": n, "seconds": seconds,
                "tokens_per_s": speed, "ms_per_step": 1000 * seconds / n,
                "tokens_per_s_runs": [batch * n / t for t in times[name]],
                "same_tokens_as_transformers": bool(torch.equal(outs[name], ref[:, : outs[name].shape[1]])),
                "speedup_vs_transformers": speed / hf_speed,
            })
            print(f"  {dtype_name} B={batch} {name}: {speed:.1f} tok/s", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| dtype | batch | implementation | new tokens | tokens/s | ms/step | vs transformers | same tokens |",
        "|---|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['batch']} | {r['impl']} | {r['new_tokens']} | {r['tokens_per_s']:.1f} | "
            f"{r['ms_per_step']:.1f} | {r['speedup_vs_transformers']:.2f}x | "
            f"{'yes' if r['same_tokens_as_transformers'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=200, help="tokens per sequence (default 200)")
    p.add_argument("--no-cache-tokens", type=int, default=50, help="tokens per sequence without the cache (default 50)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="fp32 batch sizes (default 1 8)")
    p.add_argument("--no-bf16", action="store_true", help="leave out the bf16 rows")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, interleaved; the median is shown")
    p.add_argument("--json", help="also write the rows and the setup to this file")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    import transformers

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    rows = run(args.new_tokens, args.no_cache_tokens, args.batch_sizes, not args.no_bf16, args.repeats)
    load_after = os.getloadavg()[0]
    setup = {
        "model": "GPT-2 124M (random weights)", "prompt_tokens": 4, "decoding": "greedy",
        "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__, "transformers": transformers.__version__,
        "mini_gpt": mini_gpt.__version__, "cpu": platform.processor() or platform.machine(),
        "load_average_before": load_before, "load_average_after": load_after,
        "total_seconds": time.perf_counter() - start,
    }
    print(f"GPT-2 124M (random weights), greedy, 4-token prompt; torch {torch.__version__} with "
          f"{setup['threads']} threads, transformers {transformers.__version__}; load average "
          f"{load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
