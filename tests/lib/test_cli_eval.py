"""`mini-gpt eval --ckpt DIR`: every measure of mini_gpt.evaluate, as text or --json."""

import json
import math

import pytest
import torch

from cli_runner import cli

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--max-iters", "10", "--log-interval", "5", "--eval-interval", "5", "--eval-iters", "2", "--no-progress",
        "--dtype", "float32", "--device", "cpu"]
SMALL_EVAL = ["--iters", "2", "--batch-size", "4", "--device", "cpu", "--max-tokens", "3000", "--choice-items", "20",
              "--samples", "2", "--temperatures", "0.5,1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    cli("train", "--out", str(out), *TINY)
    return out


def test_eval_json_holds_every_measure_and_they_agree_with_the_library(run):
    from mini_gpt.checkpoint import load_model
    from mini_gpt.data import TextDataset, load_text
    from mini_gpt.evaluate import evaluate_tokens

    report = json.loads(cli("eval", "--ckpt", str(run), "--json", *SMALL_EVAL).stdout)
    assert set(report) >= {"text", "calibration", "multiple_choice", "samples", "batches", "step", "checkpoint"}
    t = report["text"]
    assert t["tokens"] == 2999 and t["window"] == 32 and t["stride"] == 16
    assert t["perplexity"] == pytest.approx(math.exp(t["loss"]))
    assert t["bits_per_byte"] == pytest.approx(t["loss"] * t["tokens"] / (math.log(2) * t["bytes"]))
    assert t["loss_interval"][0] < t["loss"] < t["loss_interval"][1]
    torch.set_num_threads(1)
    model, tok = load_model(run)
    ids = TextDataset.from_text(load_text("shakespeare"), tok).val[:3000]
    assert t["loss"] == pytest.approx(evaluate_tokens(model, ids, n_bytes=2999).loss, abs=1e-5)
    bins = report["calibration"]["bins"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) == t["tokens"]
    m = report["multiple_choice"]
    assert m["items"] == 20 and m["chance"] == 0.25 and m["interval"][0] <= m["accuracy"] <= m["interval"][1]
    settings = report["samples"]["settings"]
    assert [s["temperature"] for s in settings] == [0.5, 1.0]
    assert all(0 < s["distinct_4"] <= 1 and 0 <= s["repetition_4"] < 1 for s in settings)
    assert report["batches"]["iters"] == 2


def test_eval_prints_each_measure_and_ends_with_the_training_estimate(run):
    out = cli("eval", "--ckpt", str(run), *SMALL_EVAL).stdout
    for needle in ["bits per byte", "expected calibration error", "multiple choice", "chance 0.250",
                   "temperature 0.5", "distinct-4", "from real text"]:
        assert needle in out, out
    last = out.strip().splitlines()[-1].split()
    assert last[0] == "loss" and math.exp(float(last[1])) == pytest.approx(float(last[3]), rel=1e-3)


@pytest.mark.parametrize("args, needle", [
    (["--temperatures", "0,1"], "argument --temperatures: must be a number > 0, got '0'"),
    (["--temperatures", ","], "argument --temperatures: must be comma-separated numbers > 0"),
    (["--stride", "0"], "argument --stride: must be an int >= 1, got '0'"),
    (["--choice-items", "0"], "argument --choice-items: must be an int >= 1"),
])
def test_eval_refuses_bad_flags(args, needle):
    proc = cli("eval", "--ckpt", "nowhere", *args, check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


def test_eval_refuses_a_stride_longer_than_the_context(run):
    proc = cli("eval", "--ckpt", str(run), *SMALL_EVAL, "--stride", "33", check=False)
    assert proc.returncode == 2 and "stride must be an int in (0, 32]" in proc.stderr, proc.stderr
