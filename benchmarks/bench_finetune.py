"""Fine-tuning side by side (not a test): LoRA vs full fine-tuning vs head-only, activation
checkpointing vs not, RoPE vs learned positions. One run, one machine, printed as markdown tables.

1. methods   A GPT (4 layers, 128 wide, context 64) is pre-trained on Tiny Shakespeare, then
             fine-tuned on the worked task `finetune.scramble_task()` (real passage, or which of
             3 scrambles?) in several ways. Per method: trainable parameters, optimizer-state bytes
             (AdamW's exp_avg + exp_avg_sq tensors), the time of one step (forward, backward,
             AdamW; median of --time-steps steps on a full batch of 64-token rows), and val / test
             accuracy and macro-F1 after --ft-iters steps. Chance is 25%.
2. activation checkpointing   peak memory and step time of a training step with and without
             `GPTConfig(activation_checkpointing=True)`, on a model and batch big enough that
             activations dominate. Each setting runs in a fresh subprocess, and memory is how far
             the process's peak resident size rises above its size before the training steps,
             once the weights and AdamW's state exist: what the activations add. On Linux the
             peak is VmHWM of /proc/self/status, reset first through /proc/self/clear_refs;
             getrusage's ru_maxrss is not used there because a child started by fork + exec
             inherits its parent's high-water mark (here, the parent's whole benchmark). The
             memory runs set MALLOC_MMAP_THRESHOLD_ so that glibc hands freed blocks back to the
             system at once: otherwise its cache of freed blocks, not the live tensors, sets the
             peak (it hides most of checkpointing's saving). Step time comes from a second process
             per setting with the default allocator.
3. positions  the same model pre-trained with learned positions and with RoPE, same data and steps:
             validation loss (fixed batches) at the end of the run.

    python benchmarks/bench_finetune.py [--threads 2] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from mini_gpt import GPT, GPTConfig
from mini_gpt.data import load_dataset
from mini_gpt.finetune import build_classifier, evaluate_classifier, finetune, optimizer_state_bytes, scramble_task
from mini_gpt.lora import trainable_parameters
from mini_gpt.train import TrainConfig, configure_optimizer, evaluate, train

# method -> (build_classifier arguments, learning rate). Each learning rate is the best of a few
# tried on this task (head-only 3e-3 to 3e-2, LoRA 1e-3 to 2e-2, full 3e-4 and 1e-3): a lone head
# and the small LoRA matrices take a higher one than the whole network does.
METHODS = {
    "head-only": ({"method": "head"}, 1e-2),
    "lora r=8 attn": ({"method": "lora", "rank": 8, "alpha": 16, "targets": "attn"}, 3e-3),
    "lora r=8 all": ({"method": "lora", "rank": 8, "alpha": 16, "targets": "all"}, 3e-3),
    "full": ({"method": "full"}, 3e-4),
}


def base_config(pos_encoding: str = "learned") -> GPTConfig:
    return GPTConfig.preset("shakespeare-char", block_size=64, pos_encoding=pos_encoding)


def pretrain(config: GPTConfig, data, iters: int, seed: int = 0) -> tuple[GPT, float, float]:
    """(model, val loss on fixed batches, wall seconds)."""
    torch.manual_seed(seed)
    model = GPT(config)
    cfg = TrainConfig(batch_size=32, max_iters=iters, learning_rate=2e-3, warmup_iters=min(100, iters // 10),
                      eval_interval=10**9, log_interval=10**9, device="cpu", dtype="float32", progress=False,
                      seed=seed)
    t0 = time.perf_counter()
    train(model, data, cfg)
    wall = time.perf_counter() - t0
    val = evaluate(model, data, batch_size=64, block_size=config.block_size, iters=50, seed=12345)["val_loss"]
    return model.eval(), val, wall


def time_steps(clf, task, batch_size: int, n: int, warmup: int = 3) -> tuple[float, int]:
    """Median ms of a training step on a fixed full-width batch, and the optimizer-state bytes."""
    clf = copy.deepcopy(clf).train()
    opt = configure_optimizer(clf, TrainConfig(learning_rate=1e-5, weight_decay=0.0), "cpu")
    x, lengths, y = task.train.idx[:batch_size], task.train.lengths[:batch_size], task.train.labels[:batch_size]
    lengths = torch.full_like(lengths, x.shape[1])  # every row full length: the same work each step
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        loss = F.cross_entropy(clf(x, lengths), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times), optimizer_state_bytes(opt)


def bench_methods(base: GPT, task, args) -> list[dict]:
    rows = []
    for name in args.methods:
        kwargs, lr = METHODS[name]
        torch.manual_seed(1)
        clf = build_classifier(copy.deepcopy(base), len(task.classes), task.pad_token_id, **kwargs)
        trainable, total = trainable_parameters(clf)
        step_ms, opt_bytes = time_steps(clf, task, args.batch_size, args.time_steps)
        cfg = TrainConfig(batch_size=args.batch_size, max_iters=args.ft_iters, learning_rate=lr, warmup_iters=20,
                          weight_decay=0.0, eval_interval=10**9, log_interval=10**9, device="cpu", dtype="float32",
                          progress=False, seed=0)
        t0 = time.perf_counter()
        finetune(clf, task, cfg)
        wall = time.perf_counter() - t0
        val, test = evaluate_classifier(clf, task.val), evaluate_classifier(clf, task.test)
        rows.append({
            "method": name, "lr": lr, "trainable": trainable, "trainable_%": 100 * trainable / total,
            "optimizer_state_bytes": opt_bytes, "step_ms": step_ms, "finetune_s": wall,
            "val_acc": val["accuracy"], "test_acc": test["accuracy"], "test_macro_f1": test["macro_f1"],
        })
        print(f"  {name}: {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# activation checkpointing: one fresh process per setting


CKPT_MODEL = {"vocab_size": 65, "block_size": 256, "n_layer": 8, "n_head": 8, "n_embd": 256}


def ckpt_child(checkpointing: bool, batch_size: int, steps: int, threads: int) -> dict:
    """Runs in the subprocess: peak-memory rise and step time of `steps` training steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = GPTConfig(**CKPT_MODEL, activation_checkpointing=checkpointing)
    model = GPT(config).train()
    opt = configure_optimizer(model, TrainConfig(learning_rate=1e-4), "cpu")

    def step(x):
        logits = model(x)
        F.cross_entropy(logits[:, :-1].reshape(-1, 65), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(torch.randint(0, 65, (1, 8)))  # AdamW's state and the kernels exist now, with tiny activations
    before = _memory_mib("VmRSS")
    _reset_peak()
    x = torch.randint(0, 65, (batch_size, config.block_size), generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    peak = _memory_mib("VmHWM")
    return {
        "activation_checkpointing": checkpointing, "batch": batch_size, "context": config.block_size,
        "params": model.num_parameters(), "peak_rise_mib": peak - before, "peak_mib": peak,
        "step_ms": 1000 * statistics.median(times[1:] or times),
    }


def _memory_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) in MiB; ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def _reset_peak() -> None:
    """Set the peak (VmHWM) back to the current size, so it measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak also covers the set-up before: still an upper bound


def bench_checkpointing(args) -> list[dict]:
    def child(flag: bool, steps: int, env: dict) -> dict:
        cmd = [sys.executable, __file__, "--ckpt-child", str(int(flag)), "--ckpt-batch", str(args.ckpt_batch),
               "--ckpt-steps", str(steps), "--threads", str(args.threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **env}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = []
    for flag in (False, True):
        memory = child(flag, 2, {"MALLOC_MMAP_THRESHOLD_": "65536"})  # freed blocks go back at once
        timing = child(flag, args.ckpt_steps, {})
        rows.append({**memory, "step_ms": timing["step_ms"]})
        print(f"  {rows[-1]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------


def table(rows: list[dict], cols: dict[str, str]) -> str:
    """A markdown table of `rows`, columns {key: header}."""

    def fmt(v):
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            if 0 < abs(v) < 0.01:
                return f"{v:.2g}"  # learning rates
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    lines = ["| " + " | ".join(cols.values()) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pretrain-iters", type=int, default=600)
    ap.add_argument("--ft-iters", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--time-steps", type=int, default=15)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--ckpt-batch", type=int, default=8)
    ap.add_argument("--ckpt-steps", type=int, default=4, help="timed steps (the first is not counted)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["methods", "checkpointing", "positions"])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps everywhere")
    ap.add_argument("--json")
    ap.add_argument("--ckpt-child", type=int, choices=[0, 1], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ckpt_child is not None:
        print(json.dumps(ckpt_child(bool(args.ckpt_child), args.ckpt_batch, args.ckpt_steps, args.threads)))
        return
    if args.quick:
        args.pretrain_iters, args.ft_iters, args.time_steps, args.ckpt_batch = 20, 10, 2, 2

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.2f} (1 min) at the start")
    t_start = time.perf_counter()
    result: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_start": load_before}
    data = load_dataset("shakespeare", "char")

    need_base = "methods" not in args.skip or "positions" not in args.skip
    if need_base:
        print(f"pre-training the base (learned positions), {args.pretrain_iters} steps ...", flush=True)
        base, val_learned, wall_learned = pretrain(base_config("learned"), data, args.pretrain_iters)
    if "methods" not in args.skip:
        task = scramble_task(max_len=64)
        print(f"task: {task}; fine-tuning {args.ft_iters} steps of {args.batch_size}", flush=True)
        rows = bench_methods(base, task, args)
        result["methods"] = {"task": task.description, "pretrain_iters": args.pretrain_iters,
                             "pretrain_val_loss": val_learned, "ft_iters": args.ft_iters, "rows": rows}
    if "checkpointing" not in args.skip:
        print(f"activation checkpointing: {CKPT_MODEL}, batch {args.ckpt_batch}", flush=True)
        result["checkpointing"] = bench_checkpointing(args)
    if "positions" not in args.skip:
        print(f"pre-training with RoPE, {args.pretrain_iters} steps ...", flush=True)
        _, val_rope, wall_rope = pretrain(base_config("rope"), data, args.pretrain_iters)
        result["positions"] = [
            {"pos_encoding": "learned", "iters": args.pretrain_iters, "val_loss": val_learned, "wall_s": wall_learned},
            {"pos_encoding": "rope", "iters": args.pretrain_iters, "val_loss": val_rope, "wall_s": wall_rope},
        ]
    result["wall_s"] = time.perf_counter() - t_start
    result["load_avg_end"] = os.getloadavg()

    print(f"\n{torch.get_num_threads()} threads; load average {load_before[0]:.2f} at the start, "
          f"{result['load_avg_end'][0]:.2f} at the end ({os.cpu_count()} CPUs); {result['wall_s']:.0f} s in all")
    if "methods" in result:
        m = result["methods"]
        print(f"\n### Fine-tuning methods: {m['task']}\n"
              f"base: 4 layers x 128, context 64, pre-trained {m['pretrain_iters']} steps (val loss "
              f"{m['pretrain_val_loss']:.3f}); {m['ft_iters']} fine-tuning steps of {args.batch_size}; float32; "
              f"chance 0.25\n")
        print(table(m["rows"], {"method": "method", "lr": "lr", "trainable": "trainable params",
                                "trainable_%": "% of all", "optimizer_state_bytes": "optimizer state (bytes)",
                                "step_ms": "step (ms)", "val_acc": "val acc", "test_acc": "test acc",
                                "test_macro_f1": "test macro-F1"}))
    if "checkpointing" in result:
        print(f"\n### Activation checkpointing: {CKPT_MODEL}, float32, one fresh process per row\n")
        print(table(result["checkpointing"], {"activation_checkpointing": "checkpointing", "batch": "batch",
                                              "context": "context", "params": "params",
                                              "peak_rise_mib": "peak memory rise (MiB)", "step_ms": "step (ms)"}))
    if "positions" in result:
        print("\n### Positions: learned vs RoPE on Tiny Shakespeare (4 x 128, context 64, batch 32, float32)\n")
        print(table(result["positions"], {"pos_encoding": "positions", "iters": "steps", "val_loss": "val loss",
                                          "wall_s": "wall (s)"}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
