"""GPT-2-style against Llama-style blocks at the same parameter count: training tokens/s, decoding
tokens/s and KV-cache bytes per token, side by side in one run.

    python benchmarks/bench_modern.py [--size small|medium] [--threads 2] [--json out.json] [--quick]

The two models (see `SIZES`) have the same width, depth and heads, and parameter counts within 1%:
one with GPT-2's blocks (LayerNorm, GELU MLP, learned positions, biases, tied head), one with
Llama's (RMSNorm, SwiGLU with its width chosen to match the count, RoPE, grouped-query attention
with n_head / 4 key/value heads, no biases, an untied head in the small size). Both:

- train: forward + backward + AdamW steps on random windows of `block_size` tokens, float32;
  tokens/s counts every token of the batch;
- decode: greedy `generate` with the KV cache from a 4-token prompt, batch 1, `--new-tokens`
  tokens (no eos); tokens/s counts new tokens;
- cache: `KVCache.bytes_per_token` in float32 and bf16, and the bytes the cache really allocated
  per position after decoding (the same number: the cache holds only the key/value heads).

After an untimed warm-up, the two models take turns `--repeats` times (default 3) and each row
shows the median. Timings on a shared CPU swing with what else runs: the table prints the thread
count and the load average before and after. `--quick` makes every measurement tiny (a smoke
test of the script, not a benchmark).
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
from mini_gpt.attention import KVCache

# (shared shape, SwiGLU width that brings the Llama-style model to the GPT-2-style one's count,
# whether the Llama-style head is tied). The medium size ties it, as the small Llamas (Llama 3.2
# 1B) do: with GPT-2's 50k vocabulary an untied head alone is 39M of the 124M parameters
SIZES = {
    "small": (dict(vocab_size=65, block_size=256, n_layer=4, n_head=8, n_embd=256), 830, False),
    "medium": (dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), 2464, True),
}


def configs(size: str) -> dict[str, GPTConfig]:
    shape, hidden, tied = SIZES[size]
    return {
        "GPT-2-style": GPTConfig(**shape),
        "Llama-style": GPTConfig(**shape, bias=False, pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
                                 mlp_hidden=hidden, n_kv_head=shape["n_head"] // 4, tie_embeddings=tied),
    }


def train_seconds(model: GPT, steps: int, batch: int, block: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (batch, block + 1), generator=g)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def decode_seconds(model: GPT, new_tokens: int) -> float:
    idx = torch.randint(0, model.config.vocab_size, (1, 4), generator=torch.Generator().manual_seed(1))
    model.eval()
    start = time.perf_counter()
    out = generate(model, idx, new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    assert out.shape[1] == 4 + new_tokens
    return seconds


def cache_bytes_allocated(model: GPT, positions: int) -> int:
    """Bytes the KV cache allocates per position for one sequence, read off a real cache."""
    cache = KVCache(model.config.n_layer, positions)
    with torch.inference_mode():
        model.eval()(torch.zeros(1, positions, dtype=torch.long), kv_cache=cache)
    return (cache.k.numel() + cache.v.numel()) * cache.k.element_size() // positions


def run(size: str, train_steps: int, batch: int, block: int, new_tokens: int, repeats: int) -> list[dict]:
    models = {}
    for name, config in configs(size).items():
        torch.manual_seed(0)
        models[name] = GPT(config)
    for model in models.values():  # warm-up: thread pool, allocator, kernel choice
        train_seconds(model, 1, batch, block)
        decode_seconds(model, 4)
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "decode": []} for n in models}
    for _ in range(repeats):  # the models take turns, so a slow spell of the machine hits both
        for name, model in models.items():
            times[name]["train"].append(train_seconds(model, train_steps, batch, block))
            times[name]["decode"].append(decode_seconds(model, new_tokens))
    rows = []
    for name, model in models.items():
        c = model.config
        train_s, decode_s = statistics.median(times[name]["train"]), statistics.median(times[name]["decode"])
        rows.append({
            "model": name, "parameters": model.num_parameters(), "n_head": c.n_head, "n_kv_head": c.kv_heads,
            "train_tokens_per_s": train_steps * batch * block / train_s,
            "train_tokens_per_s_runs": [train_steps * batch * block / t for t in times[name]["train"]],
            "decode_tokens_per_s": new_tokens / decode_s,
            "decode_tokens_per_s_runs": [new_tokens / t for t in times[name]["decode"]],
            "kv_bytes_per_token_fp32": KVCache.bytes_per_token(c, torch.float32),
            "kv_bytes_per_token_bf16": KVCache.bytes_per_token(c, torch.bfloat16),
            "kv_bytes_per_token_allocated": cache_bytes_allocated(model, min(16, c.block_size)),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | parameters | heads (q / kv) | train tokens/s | decode tokens/s | KV bytes/token fp32 "
             "| KV bytes/token bf16 | KV bytes/token allocated |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['n_head']} / {r['n_kv_head']} "
                     f"| {r['train_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.1f} "
                     f"| {r['kv_bytes_per_token_fp32']:,} | {r['kv_bytes_per_token_bf16']:,} "
                     f"| {r['kv_bytes_per_token_allocated']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny measurements: a smoke test of the script")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    block = SIZES[args.size][0]["block_size"]
    steps, new_tokens, repeats = args.train_steps, args.new_tokens, args.repeats
    if args.quick:
        steps, new_tokens, repeats, block = 1, 8, 1, 32
    load_before = os.getloadavg()
    rows = run(args.size, steps, args.batch_size, block, new_tokens, repeats)
    load_after = os.getloadavg()
    print(f"GPT-2-style vs Llama-style blocks ({args.size}), {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after{' (--quick: not a measurement)' if args.quick else ''}")
    print(f"train: {steps} steps of {args.batch_size} x {block} tokens; decode: {new_tokens} new tokens, batch 1, "
          f"KV cache; median of {repeats}\n")
    print(table(rows))
    if args.json:
        meta = {"size": args.size, "threads": args.threads, "torch": torch.__version__, "mini_gpt": mini_gpt.__version__,
                "train_steps": steps, "batch_size": args.batch_size, "block_size": block, "new_tokens": new_tokens,
                "repeats": repeats, "quick": args.quick, "load_average": [load_before[0], load_after[0]]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
