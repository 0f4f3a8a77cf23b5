"""On a CUDA GPU, side by side in one run: decoding speed against `transformers`, and the
Shakespeare preset trained to its end (wall time and validation loss).

    python benchmarks/bench_gpu.py [--new-tokens 200] [--train-iters 2000] [--json out.json]

Decoding: random GPT-2 124M weights (the same in both libraries, `GPT.from_gpt2`), greedy, a
4-token prompt, no eos, in fp32 and bf16 weights, batch 1 and 8, both eager (decoding at batch 1
is bound by kernel launches, which neither library removes without CUDA graphs). After a warm-up the two implementations take turns
`--repeats` times; each row is the median.

Training: `mini_gpt.train` on the shakespeare-char preset's recipe (that of `mini-gpt train`),
`dtype="auto"` (bf16 autocast on CUDA), fused attention,
with and without `torch.compile`; tokens/s, wall seconds and the final validation loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

from mini_gpt import GPT, GPTConfig, generate


def gpt2_pair(dtype: torch.dtype):
    import transformers

    transformers.logging.set_verbosity_error()
    c = GPTConfig.preset("gpt2")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
    )).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ours = GPT.from_gpt2(hf.state_dict()).eval()
    return hf.to("cuda", dtype), ours.to("cuda", dtype)


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def decode_rows(new_tokens: int, repeats: int) -> list[dict]:
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hf, ours = gpt2_pair(dtype)
        for batch in (1, 8):
            idx = torch.randint(0, 50257, (batch, 4), generator=torch.Generator().manual_seed(1)).cuda()
            impls = {
                "transformers generate": lambda n, hf=hf, idx=idx: hf.generate(
                    idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False),
                "mini_gpt generate (KV cache)": lambda n, ours=ours, idx=idx: generate(ours, idx, n, do_sample=False),
            }
            with torch.inference_mode():
                for fn in impls.values():
                    fn(8)
                runs = {name: [] for name in impls}
                outs = {}
                for _ in range(repeats):
                    for name, fn in impls.items():
                        seconds, outs[name] = timed(lambda fn=fn: fn(new_tokens))
                        runs[name].append(seconds)
            hf_speed = batch * new_tokens / statistics.median(runs["transformers generate"])
            for name in impls:
                speed = batch * new_tokens / statistics.median(runs[name])
                rows.append(dict(dtype=dtype_name, batch=batch, impl=name, tokens_per_s=speed,
                                 ms_per_step=1000 * statistics.median(runs[name]) / new_tokens,
                                 vs_transformers=speed / hf_speed,
                                 same_tokens=bool(torch.equal(outs[name], outs["transformers generate"]))))
                print(f"  decode {dtype_name} B={batch} {name}: {speed:.0f} tok/s", file=sys.stderr, flush=True)
        del hf, ours
        torch.cuda.empty_cache()
    return rows


def shakespeare_recipe(max_iters: int):
    """The data and configs of `mini-gpt train --preset shakespeare-char`, run for `max_iters` steps."""
    from mini_gpt.data import load_dataset
    from mini_gpt.recipes import recipe

    r = recipe("shakespeare-char")
    data = load_dataset(r.data, tokenizer=r.tokenizer)
    fields = {**r.train_dict(), "max_iters": max_iters, "lr_decay_iters": max_iters}
    return data, r.model_config(vocab_size=data.vocab_size), fields


def train_rows(max_iters: int) -> list[dict]:
    from mini_gpt.train import TrainConfig, train

    data, config, fields = shakespeare_recipe(max_iters)
    rows = []
    for compile_ in (False, True):
        with tempfile.TemporaryDirectory() as out:
            torch.manual_seed(1337)
            model = GPT(config)
            cfg = TrainConfig(**{**fields, "out_dir": out, "device": "cuda", "dtype": "auto", "compile": compile_,
                                 "progress": False})
            start = time.perf_counter()
            result = train(model, data, cfg)
            wall = time.perf_counter() - start
        speeds = [r["tokens_per_s"] for r in result.history if "tokens_per_s" in r]
        rows.append(dict(compile=compile_, iters=max_iters, wall_s=wall, val_loss=result.val_losses[-1][1],
                         tokens_per_s=statistics.median(speeds[len(speeds) // 2:]) if speeds else None))
        print(f"  train compile={compile_}: {wall:.1f} s, val {rows[-1]['val_loss']:.4f}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-iters", type=int, default=2000)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here", file=sys.stderr)
        return 1
    setup = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    decode = decode_rows(args.new_tokens, args.repeats)
    training = train_rows(args.train_iters)
    print(f"\n{setup['device']}, torch {setup['torch']}; GPT-2 124M random weights, greedy, {args.new_tokens} new tokens\n")
    print("| dtype | batch | implementation | tokens/s | ms/step | vs transformers | same tokens |")
    print("|---|---:|---|---:|---:|---:|:---:|")
    for r in decode:
        print(f"| {r['dtype']} | {r['batch']} | {r['impl']} | {r['tokens_per_s']:.0f} | {r['ms_per_step']:.2f} | "
              f"{r['vs_transformers']:.2f}x | {'yes' if r['same_tokens'] else 'no'} |")
    print(f"\nshakespeare-char recipe, {args.train_iters} iterations, bf16 autocast, fused attention\n")
    print("| torch.compile | wall s | tokens/s | val loss |")
    print("|---|---:|---:|---:|")
    for r in training:
        print(f"| {'yes' if r['compile'] else 'no'} | {r['wall_s']:.1f} | {r['tokens_per_s'] or 0:,.0f} | {r['val_loss']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(setup=setup, decode=decode, train=training), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
