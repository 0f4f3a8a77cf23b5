"""Byte-level BPE: mini_gpt's `train_bpe` and GPT-2 encoder beside Hugging Face `tokenizers` and tiktoken.

    python benchmarks/bench_bpe.py [--threads 2] [--vocab-size 1024] [--json out.json] [--quick]

One run, side by side, on the whole of Tiny Shakespeare (1.1 MB):

Training a vocabulary of --vocab-size ids (256 bytes + merges), GPT-2's pre-tokenizer for all:
- mini_gpt `train_bpe`: incremental pair counts (only the chunks a merge touches are recounted)
- Hugging Face `tokenizers` (Rust): a BPE model with the ByteLevel pre-tokenizer (GPT-2's regex,
  no prefix space), the 256-byte initial alphabet, no special tokens, the same vocab size
- a plain Python loop that recounts every pair before every merge, over the distinct chunks with
  their counts, and over all the chunks (as in the simplest teaching code). It is slow, so it runs
  only the first --naive-merges merges and its time is extrapolated to the whole vocabulary:
  counting + merges * (seconds per merge). Chunks shrink as merges go, so that is an upper estimate.
  Its first merges are checked against `train_bpe`'s.

Encoding the corpus with GPT-2's 50,257-id vocabulary, in MB/s of UTF-8 text:
- tiktoken's `gpt2` encoding (Rust, `encode_ordinary`, one thread)
- mini_gpt `BytePairTokenizer.from_gpt2()` with a cold chunk cache (cleared before each run) and
  a warm one (the corpus encoded once before); both must give tiktoken's ids.

The timed implementations take turns `--repeats` times (median shown). `--threads` sets the threads
of the Rust libraries (RAYON_NUM_THREADS for `tokenizers`); mini_gpt's BPE is single-threaded
Python. `--quick` runs a small version (a prefix of the corpus, a small vocabulary) to check that
the script works; its numbers mean little. Timings on a shared CPU swing with what else runs: the
table prints the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter


def naive_train(text: str, vocab_size: int, n_merges: int, distinct: bool) -> dict:
    """Recount every pair before every merge; the first `n_merges` merges, timed, and extrapolated."""
    import regex

    from mini_gpt.bpe import GPT2_PATTERN

    start = time.perf_counter()
    chunks = regex.findall(GPT2_PATTERN, text)
    if distinct:
        counted = Counter(chunks)
        chunks, freqs = list(counted), list(counted.values())
    else:
        freqs = [1] * len(chunks)
    words = [list(c.encode("utf-8")) for c in chunks]
    setup_s = time.perf_counter() - start
    merges = []
    start = time.perf_counter()
    for new_id in range(256, 256 + n_merges):
        counts: dict[tuple[int, int], int] = {}
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                counts[pair] = counts.get(pair, 0) + freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, ties to the smallest pair
        merges.append((best, new_id))
        for w, word in enumerate(words):
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
    per_merge = (time.perf_counter() - start) / max(len(merges), 1)
    return {"merges": merges, "seconds": setup_s + per_merge * (vocab_size - 256), "measured_merges": len(merges),
            "seconds_per_merge": per_merge}


def hf_train(text: str, vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def hf_token_bytes(tok) -> set[bytes]:
    """The byte strings of a ByteLevel tokenizer's vocabulary (written in GPT-2's byte table)."""
    from mini_gpt.bpe import gpt2_bytes_to_unicode

    char_to_byte = {c: b for b, c in gpt2_bytes_to_unicode().items()}
    return {bytes(char_to_byte[c] for c in token) for token in tok.get_vocab()}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_training(text: str, vocab_size: int, naive_merges: int, naive_all_merges: int, repeats: int) -> list[dict]:
    from mini_gpt.bpe import train_bpe

    impls = {"mini_gpt train_bpe (incremental counts)": lambda: train_bpe(text, vocab_size),
             "Hugging Face tokenizers (Rust)": lambda: hf_train(text, vocab_size)}
    times: dict[str, list[float]] = {name: [] for name in impls}
    outs = {}
    for _ in range(repeats):  # taking turns: a slow spell of the machine hits both alike
        for name, fn in impls.items():
            seconds, outs[name] = timed(fn)
            times[name].append(seconds)
            print(f"  train {name}: {seconds:.2f} s", file=sys.stderr, flush=True)
    ours, hf = outs.values()
    our_tokens = {ours.token_bytes(i) for i in range(256, ours.vocab_size)}
    hf_tokens = hf_token_bytes(hf)
    hf_s = statistics.median(times["Hugging Face tokenizers (Rust)"])
    rows = []
    for name in impls:
        seconds = statistics.median(times[name])
        rows.append({"impl": name, "seconds": seconds, "runs": times[name], "vs_tokenizers": seconds / hf_s,
                     "vocab_size": ours.vocab_size if name.startswith("mini_gpt") else hf.get_vocab_size(),
                     "note": "" if name.startswith("mini_gpt") else
                     f"{len(our_tokens & hf_tokens)} of mini_gpt's {len(our_tokens)} merged tokens are in its vocabulary"})
    for distinct, n in ((True, naive_merges), (False, naive_all_merges)):
        if n <= 0:
            continue
        r = naive_train(text, vocab_size, n, distinct)
        same = r["merges"] == ours.merges[: len(r["merges"])]
        what = "distinct chunks with counts" if distinct else "all chunks"
        print(f"  train naive ({what}): {r['seconds_per_merge']:.3f} s per merge", file=sys.stderr, flush=True)
        rows.append({"impl": f"plain Python, recount every merge ({what})", "seconds": r["seconds"],
                     "runs": [r["seconds"]], "vs_tokenizers": r["seconds"] / hf_s, "vocab_size": vocab_size,
                     "extrapolated": True, "seconds_per_merge": r["seconds_per_merge"],
                     "first_merges_equal_train_bpe": same,
                     "note": f"extrapolated from the first {r['measured_merges']} merges "
                             f"({r['seconds_per_merge']:.3f} s each); those equal train_bpe's: {'yes' if same else 'NO'}"})
    return rows


def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding, built from the course's verified r50k_base.tiktoken (offline)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    from mini_gpt.files import course_file

    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str,
                             mergeable_ranks=load_tiktoken_bpe(str(course_file("gpt2/r50k_base.tiktoken"))),
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def bench_encoding(text: str, repeats: int) -> list[dict]:
    from mini_gpt.bpe import BytePairTokenizer

    ref_enc, ours = tiktoken_gpt2(), BytePairTokenizer.from_gpt2()
    ref = ref_enc.encode_ordinary(text)
    n_bytes = len(text.encode("utf-8"))

    def cold():
        ours.clear_cache()
        return ours.encode(text)

    impls = {"tiktoken gpt2 (Rust, 1 thread)": lambda: ref_enc.encode_ordinary(text),
             "mini_gpt BytePairTokenizer.from_gpt2(), cold cache": cold,
             "mini_gpt BytePairTokenizer.from_gpt2(), warm cache": lambda: ours.encode(text)}
    times: dict[str, list[float]] = {name: [] for name in impls}
    same = {}
    for _ in range(repeats):
        for name, fn in impls.items():
            seconds, ids = timed(fn)
            times[name].append(seconds)
            same[name] = ids == ref
            print(f"  encode {name}: {n_bytes / seconds / 1e6:.2f} MB/s", file=sys.stderr, flush=True)
    tik_s = statistics.median(times["tiktoken gpt2 (Rust, 1 thread)"])
    return [{"impl": name, "seconds": statistics.median(times[name]), "runs": times[name],
             "mb_per_s": n_bytes / statistics.median(times[name]) / 1e6, "tokens": len(ref),
             "slower_than_tiktoken": statistics.median(times[name]) / tik_s, "same_ids_as_tiktoken": same[name]}
            for name in impls]


def format_tables(train_rows: list[dict], encode_rows: list[dict], vocab_size: int) -> str:
    lines = [f"Training {vocab_size} ids ({vocab_size - 256} merges)", "",
             "| implementation | vocab | seconds | vs tokenizers | note |", "|---|---:|---:|---:|---|"]
    for r in train_rows:
        seconds = f"~{r['seconds']:.1f} (extrapolated)" if r.get("extrapolated") else f"{r['seconds']:.2f}"
        lines.append(f"| {r['impl']} | {r['vocab_size']} | {seconds} | {r['vs_tokenizers']:.1f}x | {r['note']} |")
    lines += ["", "Encoding with GPT-2's vocabulary", "",
              "| implementation | MB/s | seconds | slower than tiktoken | same ids as tiktoken |",
              "|---|---:|---:|---:|:---:|"]
    for r in encode_rows:
        lines.append(f"| {r['impl']} | {r['mb_per_s']:.2f} | {r['seconds']:.2f} | {r['slower_than_tiktoken']:.1f}x | "
                     f"{'yes' if r['same_ids_as_tiktoken'] else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab-size", type=int, default=1024, help="ids to train, bytes included (default 1024)")
    p.add_argument("--threads", type=int, default=2, help="threads of the Rust libraries (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row, interleaved; the median is shown")
    p.add_argument("--naive-merges", type=int, default=20,
                   help="merges the recount loop over distinct chunks runs before extrapolating (default 20)")
    p.add_argument("--naive-all-merges", type=int, default=3,
                   help="merges the recount loop over all chunks runs before extrapolating (default 3; 0: skip)")
    p.add_argument("--quick", action="store_true", help="a 100,000-character prefix, 300 ids, one run: a smoke test")
    p.add_argument("--json", help="also write the rows and the setup to this file")
    args = p.parse_args(argv)

    # before tokenizers is imported: its thread pool reads these once
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    import tiktoken
    import tokenizers

    import mini_gpt
    from mini_gpt.data import load_text

    text = load_text("shakespeare")
    vocab_size, repeats, naive, naive_all = args.vocab_size, args.repeats, args.naive_merges, args.naive_all_merges
    if args.quick:
        text, vocab_size, repeats, naive, naive_all = text[:100_000], 300, 1, min(naive, 3), min(naive_all, 1)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    train_rows = bench_training(text, vocab_size, naive, naive_all, repeats)
    encode_rows = bench_encoding(text, repeats)
    load_after = os.getloadavg()[0]
    n_bytes = len(text.encode("utf-8"))
    setup = {
        "corpus": "Tiny Shakespeare" + (" (100,000-character prefix, --quick)" if args.quick else ""),
        "bytes": n_bytes, "vocab_size": vocab_size, "threads": args.threads, "repeats": repeats,
        "tokenizers": tokenizers.__version__, "tiktoken": tiktoken.__version__, "mini_gpt": mini_gpt.__version__,
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
        "load_average_before": load_before, "load_average_after": load_after,
        "total_seconds": time.perf_counter() - start,
    }
    print(f"{setup['corpus']}, {n_bytes:,} bytes; {args.threads} threads for tokenizers "
          f"{tokenizers.__version__}, tiktoken {tiktoken.__version__} on one; Python {setup['python']}; "
          f"load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs)\n")
    print(format_tables(train_rows, encode_rows, vocab_size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": setup, "training": train_rows, "encoding": encode_rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
