"""Training-step speed of mini_gpt's GPT: fp32 vs bf16 autocast, explicit vs fused attention.

    python benchmarks/bench_model.py [--steps 10] [--batch-size N] [--json out.json]
    python benchmarks/bench_model.py --device cuda --compile --peak-tflops 989   # H100 bf16 dense

A step is forward + loss + backward + AdamW step (pass --no-optimizer to leave the step out).
Achieved GFLOP/s use the PaLM / nanoGPT estimate 6N + 12 * n_layer * n_embd * T FLOPs per
token (see mini_gpt/bench.py). The measuring lives in `mini_gpt.bench` so that
`mini-gpt bench` runs the same code; this script is a thin wrapper.
"""

from mini_gpt.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
