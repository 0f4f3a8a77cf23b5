"""The `mini-gpt` command: train, eval, sample, export, bench, files."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from . import files
from .validation import Rule


class _Parser(argparse.ArgumentParser):
    """Bad flags: one line naming the flag and what is allowed, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _flag_type(rule: Rule):
    """argparse's `type=` for a flag whose values follow `rule`: the text is read as the rule's
    kind and then checked by the rule itself, so a flag accepts exactly what the config field it
    sets accepts, and says so in the same words ("argument --lr: must be a number > 0, got '-1'")."""
    read = {"int": int, "number": float}.get(rule.kind, str)

    def parse(text: str):
        try:
            return rule.check("value", read(text))
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, got {text!r}") from None

    return parse


_positive_int = _flag_type(Rule("int", min=1))
_non_negative_int = _flag_type(Rule("int", min=0))


def _temperatures(text: str) -> tuple[float, ...]:
    """'0.7,1.0' -> (0.7, 1.0): temperatures > 0."""
    positive = _flag_type(Rule("number", min=0.0, min_open=True))
    values = tuple(positive(part) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers > 0, got {text!r}")
    return values


# ---------------------------------------------------------------------------------------------
# train


# TrainConfig fields whose flag is not spelled like the field. Every other field `some_name` is
# `--some-name`, and a bool field that is on by default is turned off by `--no-some-name`.
_TRAIN_FLAG_NAMES = {"learning_rate": "lr", "out_dir": "out"}
# the GPTConfig fields `mini-gpt train` can change (--block-size is TrainConfig's; it sets both)
_MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "dropout")


def _add_train_flags(t: argparse.ArgumentParser) -> None:
    """The recipe's flags, the model's, then one flag per TrainConfig field, made from the field's
    rule and help: unset, each one takes the recipe's value, else TrainConfig's default."""
    from .config import FIELD_RULES
    from .recipes import RECIPES
    from .tokenizer import TOKENIZER_NAMES, check_tokenizer_name
    from .train import TrainConfig

    t.add_argument("--preset", default="shakespeare-char", choices=list(RECIPES),
                   help="the recipe: model, data and training (listed below; default: shakespeare-char)")
    t.add_argument("--data", help="'shakespeare' or the path of a UTF-8 text file (default: the preset's)")
    def tokenizer_name(text: str) -> str:
        try:
            return check_tokenizer_name(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("tokenizer ")) from None

    t.add_argument("--tokenizer", type=tokenizer_name, metavar="{" + ",".join(TOKENIZER_NAMES) + ",bpe:N}",
                   help="bpe:N learns a byte-level BPE of N ids from the training split and saves it with "
                        "the checkpoints (default: the preset's)")
    for name in _MODEL_FLAGS:
        rule = FIELD_RULES[name]
        t.add_argument("--" + name.replace("_", "-"), dest=name, metavar=name.upper(), type=_flag_type(rule),
                       help=f"the model's {name}, {rule.describe()} (default: the preset's)")
    for f in dataclasses.fields(TrainConfig):
        rule, text = f.metadata["rule"], f.metadata["help"]
        flag = _TRAIN_FLAG_NAMES.get(f.name, f.name.replace("_", "-"))
        if rule.kind == "bool":
            on = f.default is not True
            t.add_argument(f"--{flag}" if on else f"--no-{flag}", dest=f.name, default=None,
                           action="store_true" if on else "store_false", help=text if on else f"no {text}")
        elif rule.kind == "choice":
            t.add_argument(f"--{flag}", dest=f.name, choices=rule.choices, help=text)
        else:
            allowed = "" if rule.kind == "str" and rule.what is None else f" ({rule.describe()})"
            t.add_argument(f"--{flag}", dest=f.name, metavar=flag.upper().replace("-", "_"), type=_flag_type(rule),
                           required=f.name == "out_dir", help=text + allowed)


def _recipes_epilog() -> str:
    from .recipes import RECIPES

    width = max(map(len, RECIPES))
    return "presets:\n" + "\n".join(f"  {name:<{width}}  {r.description}" for name, r in RECIPES.items())


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import latest_checkpoint, list_checkpoints
    from .data import load_dataset
    from .model import GPT
    from .recipes import recipe
    from .train import TrainConfig, resolve_device, seed_everything, setup_distributed, train

    chosen = recipe(args.preset)
    settings = chosen.train_dict()
    # the schedule's length is the recipe's run length, so --max-iters only says where to stop
    settings.setdefault("lr_decay_iters", settings.get("max_iters", TrainConfig().max_iters))
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name) is not None:
            settings[f.name] = getattr(args, f.name)
    out = Path(args.out_dir)
    data_source = args.data or chosen.data
    try:
        cfg = TrainConfig(**settings)  # before the data is read: a bad combination fails at once
        seed_everything(cfg.seed)
        data = load_dataset(data_source, args.tokenizer or chosen.tokenizer)
        if cfg.resume and list_checkpoints(out):
            model_config = latest_checkpoint(out).model_config
        else:
            arch = {name: getattr(args, name) for name in _MODEL_FLAGS if getattr(args, name) is not None}
            model_config = chosen.model_config(
                vocab_size=data.vocab_size, block_size=cfg.block_size or chosen.model_dict()["block_size"], **arch
            )
    except (ValueError, TypeError, FileNotFoundError) as exc:
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
    import json

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
    try:
        report = _eval_report(model, tokenizer, data.split(args.split), args)
    except ValueError as exc:  # e.g. a split too short for the multiple-choice task
        print(f"mini-gpt eval: error: {exc}", file=sys.stderr)
        return 2
    # the estimate training logs as val_loss (random windows, a fixed seed): comparable with metrics.jsonl
    result = evaluate(model, data, batch_size=args.batch_size, block_size=block, iters=args.iters, device=device,
                      split=args.split, seed=args.seed)
    s = args.split
    report["batches"] = {"loss": result[f"{s}_loss"], "perplexity": result[f"{s}_ppl"], "accuracy": result[f"{s}_acc"],
                         "iters": args.iters, "batch_size": args.batch_size, "block_size": block}
    report = {"checkpoint": str(ckpt.path), "step": ckpt.step, "split": s, **report}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    _print_eval_report(report)
    print(f"{ckpt.path} (step {ckpt.step}), {s} split, {args.iters} batches of {args.batch_size}x{block} tokens:")
    print(f"  loss {result[f'{s}_loss']:.4f}   perplexity {result[f'{s}_ppl']:.3f}   "
          f"next-token accuracy {result[f'{s}_acc']:.4f}")
    return 0


def _eval_report(model, tokenizer, ids, args: argparse.Namespace) -> dict:
    """Every measure of `mini_gpt.evaluate` on the split's tokens `ids`, as plain numbers."""
    import math

    from .evaluate import bootstrap_interval, calibration_bins, evaluate_tokens, multiple_choice, next_line_task
    from .generation_quality import sample_quality

    ids = ids[:args.max_tokens] if args.max_tokens else ids
    text = tokenizer.decode(ids.tolist())
    n_bytes = len(tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
    stream = evaluate_tokens(model, ids, n_bytes=n_bytes, stride=args.stride, batch_size=args.batch_size)
    block = model.config.block_size
    # neighbouring tokens are correlated: resample windows' worth of them together
    loss = bootstrap_interval(stream.losses, block=min(block, stream.n_tokens), seed=args.seed)
    cal = calibration_bins(stream.confidence, stream.correct)
    # options of at most half the context (in characters, so in tokens too), after as much context as fits
    items = next_line_task(text, args.choice_items, max_chars=max(3, block // 2), seed=args.seed)
    choice = multiple_choice(model, tokenizer, items)
    choice_iv = bootstrap_interval(choice.correct.double(), seed=args.seed)
    length = max(1, min(100, block - 2))  # within the context: generation keeps its cache
    quality = sample_quality(model, tokenizer, text, args.temperatures, n_samples=args.samples, length=length,
                             seed=args.seed)
    summary = stream.summary()
    return {
        "text": {**summary, "loss_interval": [loss.low, loss.high],
                 # bits per byte is the loss times a constant of the text: its interval scales with it
                 "bits_per_byte_interval": [v * stream.n_tokens / (math.log(2) * n_bytes) for v in (loss.low, loss.high)],
                 "window": block, "stride": args.stride or block // 2},
        "calibration": {"ece": cal.ece, "bins": [
            {"low": lo, "count": n, "confidence": c, "accuracy": a}
            for lo, n, c, a in zip(cal.edges[:-1].tolist(), cal.count.tolist(), cal.confidence.nan_to_num(0).tolist(),
                                   cal.accuracy.nan_to_num(0).tolist(), strict=True)]},
        "multiple_choice": {"accuracy": choice.accuracy, "interval": [choice_iv.low, choice_iv.high],
                            "chance": choice.chance, "items": len(choice.chosen)},
        "samples": {"reference_bits_per_byte": quality.reference_bits_per_byte, "settings": quality.table()},
    }


def _print_eval_report(r: dict) -> None:
    t, c, m = r["text"], r["calibration"], r["multiple_choice"]
    print(f"{r['split']} text, {t['tokens']:,} tokens ({t['bytes']:,} bytes), windows of {t['window']} "
          f"every {t['stride']} tokens:")
    print(f"  loss {t['loss']:.4f} (95% interval {t['loss_interval'][0]:.4f}..{t['loss_interval'][1]:.4f})   "
          f"perplexity {t['perplexity']:.3f}   bits per byte {t['bits_per_byte']:.4f}   "
          f"next-token accuracy {t['accuracy']:.4f}")
    print(f"calibration: expected calibration error {c['ece']:.4f}")
    for b in c["bins"]:
        if b["count"]:
            print(f"  confidence {b['low']:.1f}-{b['low'] + 0.1:.1f}: {b['count']:>7,} tokens, mean confidence "
                  f"{b['confidence']:.3f}, accuracy {b['accuracy']:.3f}")
    print(f"multiple choice (the rest of a line among {round(1 / m['chance'])}), {m['items']} items: accuracy "
          f"{m['accuracy']:.3f} (95% interval {m['interval'][0]:.3f}..{m['interval'][1]:.3f}), chance {m['chance']:.3f}")
    s = r["samples"]
    print(f"samples (bits per byte of real text: {s['reference_bits_per_byte']:.4f}):")
    for row in s["settings"]:
        n = next(k for k in row if k.startswith("distinct_"))[len("distinct_"):]
        top_p = "" if row["top_p"] is None else f" top_p {row['top_p']:g}"
        print(f"  temperature {row['temperature']:g}{top_p}: distinct-{n} {row[f'distinct_{n}']:.3f}   "
              f"repetition {row[f'repetition_{n}']:.3f}   bits per byte {row['bits_per_byte']:.4f} "
              f"({row['gap']:+.4f} from real text)")


def _cmd_sample(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_model
    from .generate import GenerationConfig
    from .train import resolve_device

    try:
        config = GenerationConfig(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            repetition_penalty=args.repetition_penalty, num_beams=args.num_beams, seed=args.seed,
            # beam search is deterministic: --num-beams implies --greedy
            do_sample=not args.greedy and args.num_beams == 1,
        )
        device = resolve_device(args.device)
        model, tokenizer = load_model(args.ckpt, device)
    except (CheckpointError, ValueError) as exc:
        print(f"mini-gpt sample: error: {exc}", file=sys.stderr)
        return 2
    if args.interactive:
        return _sample_interactive(model, tokenizer, config, args)
    try:
        ids = tokenizer.encode(args.prompt)
        if not ids:
            raise ValueError("--prompt must not be empty")
        _sample_one(model, tokenizer, args.prompt, ids, config, args)
    except ValueError as exc:
        print(f"mini-gpt sample: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: stop quietly, with the conventional exit code
        print()
        return 130
    print()
    return 0


def _sample_one(model, tokenizer, text: str, ids: list[int], config, args: argparse.Namespace) -> None:
    """Print the top --show-probs next tokens (if asked), then the prompt and its continuation as it comes."""
    from .generate import next_token_logits, stream

    tokens = stream(model, [ids], args.max_new_tokens, config=config)  # bad ids raise here, before printing
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


def _sample_interactive(model, tokenizer, config, args: argparse.Namespace) -> int:
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
            _sample_one(model, tokenizer, text, tokenizer.encode(text), config, args)
        except ValueError as exc:  # e.g. a character the tokenizer does not know
            print(f"error: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # Ctrl-C stops this continuation, not the session
            print("\n[stopped]", end="", file=sys.stderr, flush=True)
        print(flush=True)


def _cmd_export(args: argparse.Namespace) -> int:
    """A checkpoint as a Hugging Face folder (--format hf) or an ONNX graph (--format onnx)."""
    from .checkpoint import CheckpointError, load_model
    from .export import to_hf, to_onnx

    try:
        model, tokenizer = load_model(args.ckpt)
        write = to_hf if args.format == "hf" else to_onnx
        out = write(model, args.out, tokenizer, force=args.force)
    except (CheckpointError, ValueError, TypeError, FileExistsError, ImportError) as exc:
        print(f"mini-gpt export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.ckpt} to {out} ({args.format})")
    return 0


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
    parser = _Parser(prog="mini-gpt", description="Train, evaluate, sample and measure mini_gpt models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (Tiny Shakespeare by default); --resume continues a run",
                       description="Train a model from a recipe (--preset). A flag left out takes the preset's\n"
                                   "value, else TrainConfig's default. --max-iters only says where this run\n"
                                   "stops: the schedule's length is --lr-decay-iters, by default the preset's\n"
                                   "max_iters, so stopping and resuming never changes it.",
                       epilog=_recipes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_flags(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="loss, perplexity, bits per byte, calibration, multiple choice and samples "
                                    "of a checkpoint, with error bars")
    e.add_argument("--ckpt", required=True,
                   help="a checkpoint folder, a training --out folder (its newest) or DIR/best (its best)")
    e.add_argument("--data", help="default: what the model was trained on")
    e.add_argument("--split", choices=["train", "val"], default="val")
    e.add_argument("--batch-size", type=_positive_int, default=32)
    e.add_argument("--block-size", type=_positive_int)
    e.add_argument("--iters", type=_positive_int, default=50)
    e.add_argument("--seed", type=_non_negative_int, default=0)
    e.add_argument("--device", default="auto")
    e.add_argument("--max-tokens", type=_non_negative_int, default=20000,
                   help="evaluate the first N tokens of the split (0: all of it; default 20000)")
    e.add_argument("--stride", type=_positive_int, help="tokens between window starts (default: half the context)")
    e.add_argument("--choice-items", type=_positive_int, default=100, help="multiple-choice questions (default 100)")
    e.add_argument("--temperatures", type=_temperatures, default=(0.7, 1.0),
                   help="comma-separated sampling temperatures for the sample measures (default 0.7,1.0)")
    e.add_argument("--samples", type=_positive_int, default=4, help="samples per temperature (default 4)")
    e.add_argument("--json", action="store_true", help="print every measure as one JSON object")
    e.set_defaults(func=_cmd_eval)

    s = sub.add_parser("sample", help="continue a prompt with a trained model, printing text as it comes")
    s.add_argument("--ckpt", required=True,
                   help="a checkpoint folder, a training --out folder (its newest) or DIR/best (its best)")
    s.add_argument("--prompt", default="\n")
    s.add_argument("--max-new-tokens", type=_positive_int, default=500)
    s.add_argument("--temperature", type=_flag_type(Rule("number", min=0.0, min_open=True)), default=0.8,
                   help="< 1 sharper, > 1 flatter (sampling only)")
    s.add_argument("--top-k", type=_positive_int, help="sample from the K most likely tokens")
    s.add_argument("--top-p", type=_flag_type(Rule("number", min=0.0, max=1.0, min_open=True)),
                   help="sample from the smallest set of tokens whose probability reaches P")
    s.add_argument("--min-p", type=_flag_type(Rule("number", min=0.0, max=1.0, max_open=True)),
                   help="sample from tokens at least P times as likely as the most likely one")
    s.add_argument("--repetition-penalty", type=_flag_type(Rule("number", min=0.0, min_open=True)), default=1.0,
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

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face folder (transformers loads it) or ONNX")
    x.add_argument("--ckpt", required=True,
                   help="a checkpoint folder, a training --out folder (its newest) or DIR/best (its best)")
    x.add_argument("--out", required=True, help="the folder to write (must be empty or missing, unless --force)")
    x.add_argument("--format", choices=["hf", "onnx"], default="hf",
                   help="hf: config.json, model.safetensors and the tokenizer; onnx: model.onnx (needs the onnx extra)")
    x.add_argument("--force", action="store_true", help="replace what an earlier export wrote in --out")
    x.set_defaults(func=_cmd_export)

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
