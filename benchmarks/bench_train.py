"""Time-to-loss on Tiny Shakespeare, side by side in one run (not a test).

Rows:
  nanogpt-cpu   nanoGPT's documented CPU run of shakespeare_char (4 layers, 128 wide, context 64,
                batch 12, 2000 iterations, lr 1e-3 -> 1e-4, dropout 0), trained by `mini_gpt.train`
                in float32 (as nanoGPT runs on a CPU). The issue's reference: ~60 s, val loss ~1.89.
  plain-loop    the same model and recipe in float32 through a bare PyTorch loop (random windows,
                cross-entropy, backward, clipping, fused AdamW, the same schedule, one evaluation
                at the end): what the kernels alone cost on this machine, so the row above shows
                what `train()` adds on top of them.
  nanogpt-auto  the same config with `dtype="auto"` (bf16 autocast on a CPU with bf16 units).
  preset        the `shakespeare-char` preset with `mini-gpt train`'s recipe, stopped at a wall-time
                budget (default 300 s) with the schedule sized to fit the budget.

Each row reports wall time, tokens/s, final val loss (200 batches, fixed windows) and MFU
against the matmul peak measured at the start of the run (fp32 and bf16 GEMM on the same
threads). Prints a markdown table; `--json FILE` writes the rows.

    python benchmarks/bench_train.py [--threads 2] [--budget 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from mini_gpt import GPT, GPTConfig
from mini_gpt.bench import flops_per_token, measure_matmul_peak
from mini_gpt.data import load_dataset
from mini_gpt.recipes import recipe as train_recipe
from mini_gpt.train import TrainConfig, evaluate, resolve_dtype, train


def run(name: str, config: GPTConfig, cfg: TrainConfig, data, peak_gflops: float) -> dict:
    torch.manual_seed(cfg.seed)
    model = GPT(config)
    start = time.perf_counter()
    train(model, data, cfg)
    wall = time.perf_counter() - start
    block = cfg.block_size or config.block_size
    dtype = resolve_dtype(cfg.dtype, torch.device("cpu"))
    val = evaluate(model, data, batch_size=64, block_size=block, iters=200, dtype=dtype, seed=12345)
    tokens = cfg.batch_size * block * cfg.grad_accum * cfg.max_iters
    return {
        "run": name, "params": model.num_parameters(), "layers x width": f"{config.n_layer}x{config.n_embd}",
        "context": block, "batch": cfg.batch_size, "iters": cfg.max_iters, "dtype": str(dtype).split(".")[-1],
        "wall_s": wall, "tokens_per_s": tokens / wall, "val_loss": val["val_loss"],
        "mfu": flops_per_token(model, block) * tokens / wall / 1e9 / peak_gflops,
    }


def plain_loop(config: GPTConfig, cfg: TrainConfig, data, peak_gflops: float) -> dict:
    """The reference: the nanoGPT-style loop written out with nothing but PyTorch (float32)."""
    torch.manual_seed(cfg.seed)
    model = GPT(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate,
                            betas=(cfg.beta1, cfg.beta2), fused=True)
    train_tokens, T, B = data.train, config.block_size, cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for it in range(cfg.max_iters):
        if it < cfg.warmup_iters:
            lr = cfg.learning_rate * (it + 1) / cfg.warmup_iters
        else:
            ratio = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
            lr = cfg.floor_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.floor_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(len(train_tokens) - T - 1, (B,), generator=gen)
        x = torch.stack([train_tokens[i : i + T] for i in ix])  # (B, T)
        y = torch.stack([train_tokens[i + 1 : i + 1 + T] for i in ix])  # (B, T)
        loss = F.cross_entropy(model(x).view(-1, config.vocab_size), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    evaluate(model, data, batch_size=B, block_size=T, iters=cfg.eval_iters, seed=cfg.seed + 1)
    wall = time.perf_counter() - start
    val = evaluate(model, data, batch_size=64, block_size=T, iters=200, seed=12345)
    tokens = B * T * cfg.max_iters
    return {
        "run": "plain-loop", "params": model.num_parameters(), "layers x width": f"{config.n_layer}x{config.n_embd}",
        "context": T, "batch": B, "iters": cfg.max_iters, "dtype": "float32",
        "wall_s": wall, "tokens_per_s": tokens / wall, "val_loss": val["val_loss"],
        "mfu": flops_per_token(model, T) * tokens / wall / 1e9 / peak_gflops,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=300.0, help="wall seconds for the preset row")
    ap.add_argument("--iters-per-s", type=float, default=None,
                    help="preset steps per second, to size the schedule to the budget (default: measured)")
    ap.add_argument("--only", choices=["nanogpt-cpu", "preset"])
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = measure_matmul_peak()
    print(f"threads {torch.get_num_threads()}; matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s")
    data = load_dataset("shakespeare", "char")
    rows = []
    if args.only in (None, "nanogpt-cpu"):
        config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
        cfg = TrainConfig(batch_size=12, max_iters=2000, lr_decay_iters=2000, learning_rate=1e-3, min_lr=1e-4,
                          warmup_iters=100, beta2=0.99, eval_interval=2000, eval_iters=20, log_interval=100,
                          device="cpu", dtype="float32", progress=False)
        rows.append(run("nanogpt-cpu", config, cfg, data, peak["fp32"]))
        print(rows[-1])
        rows.append(plain_loop(config, cfg, data, peak["fp32"]))
        print(rows[-1])
        auto = TrainConfig(**{**asdict(cfg), "dtype": "auto"})
        bf16 = resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
        rows.append(run("nanogpt-auto", config, auto, data, peak["bf16" if bf16 else "fp32"]))
        print(rows[-1])
    if args.only in (None, "preset"):
        recipe = train_recipe("shakespeare-char").train_dict()
        config = GPTConfig.preset("shakespeare-char")
        probe = TrainConfig(**{**recipe, "max_iters": 40, "log_interval": 10, "eval_interval": 1000,
                               "eval_iters": 1, "progress": False, "device": "cpu"})
        rate = args.iters_per_s
        if rate is None:  # measure the step rate (after warm-up) to fit the schedule into the budget
            history = train(GPT(config), data, probe).history
            rate = history[-2]["tokens_per_s"] / (probe.batch_size * (probe.block_size or config.block_size))
        iters = int(rate * args.budget * 0.97)  # leave room for the evaluations
        cfg = TrainConfig(**{**recipe, "max_iters": iters, "lr_decay_iters": iters, "eval_interval": iters,
                             "progress": False, "device": "cpu"})
        dtype_peak = peak["bf16"] if resolve_dtype(cfg.dtype, torch.device("cpu")) == torch.bfloat16 else peak["fp32"]
        rows.append(run("preset", config, cfg, data, dtype_peak))
        print(rows[-1])
    head = list(rows[0])
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                                for v in r.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "peak_gflops": peak, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
