"""The `mini-gpt` command: train, eval, sample, bench, files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import files

# What `mini-gpt train --preset NAME` trains on and how. The architecture is GPTConfig.preset(NAME).
# shakespeare-char is sized for a 2-core CPU: see the time-to-loss table of `mini-gpt bench`.
TRAIN_PRESETS: dict[str, dict] = {
    "shakespeare-char": dict(
        data="shakespeare", tokenizer="char", batch_size=32, max_iters=2000, learning_rate=2e-3,
        warmup_iters=100, eval_interval=250, eval_iters=20, weight_decay=0.1, beta2=0.99,
    ),
    "gpt2": dict(
        data="shakespeare", tokenizer="gpt2", batch_size=8, block_size=1024, grad_accum=8, max_iters=5000,
        learning_rate=6e-4, warmup_iters=200, eval_interval=250, eval_iters=20, beta2=0.95,
    ),
}
TRAIN_PRESETS["gpt2-medium"] = {**TRAIN_PRESETS["gpt2"], "learning_rate": 3e-4, "batch_size": 4, "grad_accum": 16}


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line naming the flag and what is allowed, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(lo: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        ok_lo = value > lo if lo_open else value >= lo
        ok_hi = value < hi if hi_open else value <= hi
        if not (ok_lo and ok_hi):
            rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {rng}, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------------------------------------
# train


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import latest_checkpoint, list_checkpoints
    from .config import GPTConfig
    from .data import load_dataset
    from .model import GPT
    from .train import TrainConfig, resolve_device, seed_everything, setup_distributed, train

    recipe = dict(TRAIN_PRESETS.get(args.preset, TRAIN_PRESETS["gpt2"]))
    data_source = args.data or recipe["data"]
    tokenizer = args.tokenizer or recipe["tokenizer"]
    del recipe["data"], recipe["tokenizer"]
    # the schedule's length is the preset's run length, so --max-iters only says where to stop
    recipe["lr_decay_iters"] = recipe["max_iters"]
    out = Path(args.out)
    overrides = {
        "batch_size": args.batch_size, "block_size": args.block_size, "max_iters": args.max_iters,
        "lr_decay_iters": args.lr_decay_iters, "warmup_iters": args.warmup_iters, "learning_rate": args.lr,
        "min_lr": args.min_lr, "eval_interval": args.eval_interval, "eval_iters": args.eval_iters,
        "grad_accum": args.grad_accum, "device": args.device, "dtype": args.dtype, "seed": args.seed,
        "log_interval": args.log_interval,
    }
    tc = {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
    tc.update(out_dir=str(out), compile=args.compile, resume=args.resume, progress=not args.no_progress)

    try:
        seed_everything(tc.get("seed", 1337))
        data = load_dataset(data_source, tokenizer)
        if args.resume and list_checkpoints(out):
            model_config = latest_checkpoint(out).model_config
        else:
            arch = {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd, "dropout": args.dropout}
            model_config = GPTConfig.preset(
                args.preset, vocab_size=data.vocab_size,
                block_size=tc.get("block_size") or GPTConfig.preset(args.preset).block_size,
                **{k: v for k, v in arch.items() if v is not None},
            )
        cfg = TrainConfig(**tc)
    except (ValueError, TypeError) as exc:
        print(f"mini-gpt train: error: {exc}", file=sys.stderr)
        return 2
    with torch.device("cpu"):
        model = GPT(model_config)
    dist = setup_distributed(resolve_device(cfg.device))
    if dist.is_main:
        print(f"model: {model.num_parameters():,} parameters ({model_config.n_layer} layers, "
              f"{model_config.n_head} heads, {model_config.n_embd} wide, context {model_config.block_size}); "
              f"data: {data}")
    result = train(model, data, cfg, meta={"data": str(data_source), "preset": args.preset})
    if dist.is_main:
        final = result.val_losses[-1] if result.val_losses else None
        if final:
            print(f"done: step {final[0]}, val loss {final[1]:.4f}; checkpoints and metrics.jsonl in {out}")
        _plot_losses(out)
    if dist.enabled:
        import torch.distributed

        torch.distributed.destroy_process_group()
    return 0


def _plot_losses(out: Path) -> None:
    """DIR/loss_curve.png from DIR/metrics.jsonl (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from .viz import loss_curve
    except ImportError:
        return
    fig_ax = loss_curve(out / "metrics.jsonl")
    fig_ax.figure.savefig(out / "loss_curve.png", dpi=120, bbox_inches="tight")
    print(f"loss curve: {out / 'loss_curve.png'}")


# ---------------------------------------------------------------------------------------------
# eval and sample


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_checkpoint, load_model
    from .data import TextDataset, load_text
    from .train import evaluate, resolve_device

    try:
        ckpt = load_checkpoint(args.ckpt)
        device = resolve_device(args.device)
        model, tokenizer = load_model(ckpt.path, device)
    except (CheckpointError, ValueError) as exc:
        print(f"mini-gpt eval: error: {exc}", file=sys.stderr)
        return 2
    meta = ckpt.state.get("meta", {})
    text = load_text(args.data or meta.get("data", "shakespeare"))
    data = TextDataset.from_text(text, tokenizer)
    tc = ckpt.state.get("train_config", {})
    block = args.block_size or tc.get("block_size") or model.config.block_size
    result = evaluate(model, data, batch_size=args.batch_size, block_size=block, iters=args.iters, device=device,
                      split=args.split, seed=args.seed)
    s = args.split
    print(f"{ckpt.path} (step {ckpt.step}), {s} split, {args.iters} batches of {args.batch_size}x{block} tokens:")
    print(f"  loss {result[f'{s}_loss']:.4f}   perplexity {result[f'{s}_ppl']:.3f}   "
          f"next-token accuracy {result[f'{s}_acc']:.4f}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_model
    from .train import resolve_device

    try:
        device = resolve_device(args.device)
        model, tokenizer = load_model(args.ckpt, device)
    except (CheckpointError, ValueError) as exc:
        print(f"mini-gpt sample: error: {exc}", file=sys.stderr)
        return 2
    options = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, num_beams=args.num_beams, seed=args.seed,
        # beam search is deterministic: --num-beams implies --greedy
        do_sample=not args.greedy and args.num_beams == 1,
    )
    if args.interactive:
        return _sample_interactive(model, tokenizer, options, args)
    try:
        ids = tokenizer.encode(args.prompt)
        if not ids:
            raise ValueError("--prompt must not be empty")
        _sample_one(model, tokenizer, args.prompt, ids, options, args)
    except ValueError as exc:
        print(f"mini-gpt sample: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: stop quietly, with the conventional exit code
        print()
        return 130
    print()
    return 0


def _sample_one(model, tokenizer, text: str, ids: list[int], options: dict, args: argparse.Namespace) -> None:
    """Print the top --show-probs next tokens (if asked), then the prompt and its continuation as it comes."""
    from .generate import next_token_logits, stream

    tokens = stream(model, [ids], args.max_new_tokens, **options)  # bad options raise here, before printing
    if args.show_probs:
        probs = next_token_logits(model, [ids])[0].softmax(-1)  # (V,): the model's own, temperature 1
        top = probs.topk(min(args.show_probs, probs.numel()))
        print(f"next-token probabilities after {text[-40:]!r}:")
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            print(f"  {p:7.4f}  {tokenizer.decode([i])!r}")
    print(text, end="", flush=True)
    for piece in _text_pieces((int(tok[0]) for tok in tokens), tokenizer):
        print(piece, end="", flush=True)


def _text_pieces(ids, tokenizer):
    """Decode token ids incrementally: yield each new piece of text as soon as it is whole.

    A character can span several byte-level tokens (UTF-8 uses up to 4 bytes); an incomplete one
    decodes to U+FFFD at the end, so it is held back until the rest arrives (or cannot: 4 tokens).
    """
    pending: list[int] = []
    for i in ids:
        pending.append(i)
        piece = tokenizer.decode(pending)
        if piece.endswith("\ufffd") and len(pending) < 4:
            continue
        yield piece
        pending = []
    if pending:
        yield tokenizer.decode(pending)


def _sample_interactive(model, tokenizer, options: dict, args: argparse.Namespace) -> int:
    """A prompt loop: each line typed is continued (a fresh prompt each time); :q, EOF or Ctrl-D quit."""
    prompt = "> " if sys.stdin.isatty() else ""
    print("type a prompt and press Enter; Ctrl-C stops a continuation; :q or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            print(prompt, end="", flush=True)
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print()
            return 0
        if not line or line.strip() == ":q":  # "" is end of input (Ctrl-D)
            if not line:
                print()
            return 0
        text = line.rstrip("\r\n")
        if not text:
            continue
        try:
            _sample_one(model, tokenizer, text, tokenizer.encode(text), options, args)
        except ValueError as exc:  # e.g. a character the tokenizer does not know
            print(f"error: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this continuation, not the session
            print("\n[stopped]", end="", file=sys.stderr, flush=True)
        print(flush=True)


def _cmd_files(args: argparse.Namespace) -> int:
    """Find (or download) and verify every course file; print where each one is."""
    failed = 0
    for name in files.FILES:
        try:
            print(f"ok       {name}  {files.course_file(name)}")
        except (files.CourseFileNotFoundError, files.ChecksumError) as exc:
            failed += 1
            print(f"missing  {name}  {exc}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    parser = _Parser(prog="mini-gpt", description="Train, evaluate, sample and measure mini_gpt models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (Tiny Shakespeare by default); --resume continues a run")
    t.add_argument("--preset", default="shakespeare-char", choices=list(PRESETS), help="model size and recipe")
    t.add_argument("--out", required=True, help="folder for checkpoints, metrics.jsonl and loss_curve.png")
    t.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in --out")
    t.add_argument("--data", help="'shakespeare' (default) or the path of a UTF-8 text file")
    t.add_argument("--tokenizer", choices=["char", "gpt2"], help="default: the preset's")
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument("--block-size", type=_positive_int)
    t.add_argument("--n-layer", type=_positive_int)
    t.add_argument("--n-head", type=_positive_int)
    t.add_argument("--n-embd", type=_positive_int)
    t.add_argument("--dropout", type=_float_in(0.0, 1.0))
    t.add_argument("--lr", type=_float_in(0.0, 1.0, lo_open=True), help="peak learning rate")
    t.add_argument("--min-lr", type=_float_in(0.0, 1.0), help="floor of the cosine (default lr/10)")
    t.add_argument("--max-iters", type=_positive_int, help="where this run stops")
    t.add_argument("--lr-decay-iters", type=_positive_int, help="length of the schedule (default: the preset's)")
    t.add_argument("--warmup-iters", type=_non_negative_int)
    t.add_argument("--eval-interval", type=_positive_int)
    t.add_argument("--eval-iters", type=_positive_int)
    t.add_argument("--log-interval", type=_positive_int)
    t.add_argument("--grad-accum", type=_positive_int)
    t.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    t.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--seed", type=_non_negative_int)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="loss, perplexity and next-token accuracy of a checkpoint")
    e.add_argument("--ckpt", required=True, help="a checkpoint folder or a training --out folder")
    e.add_argument("--data", help="default: what the model was trained on")
    e.add_argument("--split", choices=["train", "val"], default="val")
    e.add_argument("--batch-size", type=_positive_int, default=32)
    e.add_argument("--block-size", type=_positive_int)
    e.add_argument("--iters", type=_positive_int, default=50)
    e.add_argument("--seed", type=_non_negative_int, default=0)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("sample", help="continue a prompt with a trained model, printing text as it comes")
    s.add_argument("--ckpt", required=True, help="a checkpoint folder or a training --out folder")
    s.add_argument("--prompt", default="\n")
    s.add_argument("--max-new-tokens", type=_positive_int, default=500)
    s.add_argument("--temperature", type=_float_in(0.0, float("inf"), lo_open=True), default=0.8,
                   help="< 1 sharper, > 1 flatter (sampling only)")
    s.add_argument("--top-k", type=_positive_int, help="sample from the K most likely tokens")
    s.add_argument("--top-p", type=_float_in(0.0, 1.0, lo_open=True, hi_open=False),
                   help="sample from the smallest set of tokens whose probability reaches P")
    s.add_argument("--min-p", type=_float_in(0.0, 1.0),
                   help="sample from tokens at least P times as likely as the most likely one")
    s.add_argument("--repetition-penalty", type=_float_in(0.0, float("inf"), lo_open=True), default=1.0,
                   help="> 1 makes tokens already in the text less likely (1 = off)")
    s.add_argument("--num-beams", type=_positive_int, default=1,
                   help="beam search with N beams (deterministic; the text comes at the end)")
    s.add_argument("--greedy", action="store_true", help="always take the most likely token")
    s.add_argument("--seed", type=_non_negative_int, help="same seed, same text")
    s.add_argument("--interactive", action="store_true",
                   help="read prompts from stdin, one per line, and continue each (:q or Ctrl-D quits)")
    s.add_argument("--show-probs", type=_positive_int, metavar="K",
                   help="first print the K most likely next tokens after the prompt, with their probabilities")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_sample)

    # listed here for --help; `main` hands its arguments to mini_gpt.bench (see `mini-gpt bench --help`)
    sub.add_parser("bench", help="side-by-side training-step speed (fp32/bf16, explicit/fused attention) as a table")

    f = sub.add_parser("files", help="find or download the course's data files and check their sha256")
    f.set_defaults(func=_cmd_files)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
