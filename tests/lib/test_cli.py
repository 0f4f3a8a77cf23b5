import dataclasses
import re
import subprocess
import sys

import pytest

from mini_gpt.cli import main


def test_files_command_finds_and_verifies_every_file(capsys):
    assert main(["files"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok ") == 4 and "tinyshakespeare.txt" in out


def test_files_command_reports_missing_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINI_GPT_DATA", str(tmp_path))
    monkeypatch.setenv("MINI_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MINI_GPT_OFFLINE", "1")
    assert main(["files"]) == 1
    assert "MINI_GPT_DATA" in capsys.readouterr().err


def test_unknown_command_exits_2():
    proc = subprocess.run([sys.executable, "-m", "mini_gpt.cli", "fly"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'fly'" in proc.stderr


def train_flag(field):
    return {"learning_rate": "--lr", "out_dir": "--out", "progress": "--no-progress"}.get(
        field.name, "--" + field.name.replace("_", "-"))


def parse_error(capsys, *args):
    from mini_gpt.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--out", "x", *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_train_flags_follow_the_rules_of_the_fields_they_set(capsys):
    from mini_gpt.cli import build_parser
    from mini_gpt.train import TrainConfig

    checked = 0
    for f in dataclasses.fields(TrainConfig):
        rule = f.metadata["rule"]
        if rule.kind not in ("int", "number") or rule.min is None:
            continue
        step = 1 if rule.kind == "int" else 1e-3
        lowest = rule.min + (step if rule.min_open else 0)  # the smallest value the field takes
        args = build_parser().parse_args(["train", "--out", "x", train_flag(f), str(lowest)])
        assert getattr(args, f.name) == lowest
        TrainConfig(**{f.name: lowest, **({"learning_rate": 1.0} if f.name == "min_lr" else {})})
        below = rule.min - (0 if rule.min_open else step)  # refused by the field, and so by its flag
        with pytest.raises(ValueError, match=f"TrainConfig.{f.name} must be {re.escape(rule.describe())}"):
            TrainConfig(**{f.name: below})
        err = parse_error(capsys, train_flag(f), str(below))
        assert f"argument {train_flag(f)}: must be {rule.describe()}, got '{below}'" in err
        checked += 1
    assert checked >= 15
    assert "argument --dtype: invalid choice: 'fp8'" in parse_error(capsys, "--dtype", "fp8")
    assert "argument --batch-size: must be an int >= 1, got '2.5'" in parse_error(capsys, "--batch-size", "2.5")
    assert "argument --beta2: must be a number in [0, 1), got 'nan'" in parse_error(capsys, "--beta2", "nan")
    assert "argument --dropout: must be a number in [0, 1), got '1'" in parse_error(capsys, "--dropout", "1")


def test_train_bool_flags_are_unset_unless_given():
    from mini_gpt.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "x"])
    assert args.compile is args.resume is args.progress is None  # unset: the recipe's, else TrainConfig's
    args = build_parser().parse_args(["train", "--out", "x", "--compile", "--resume", "--no-progress"])
    assert (args.compile, args.resume, args.progress) == (True, True, False)


def test_train_sample_and_eval_with_a_bpe_tokenizer_learned_from_the_training_split(tmp_path):
    import os

    from mini_gpt.bpe import BytePairTokenizer, train_bpe
    from mini_gpt.data import load_text, split_text

    data = tmp_path / "t.txt"
    data.write_text(load_text("shakespeare")[:120_000], "utf-8")  # a validation split long enough for eval
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mini_gpt.cli", *args], capture_output=True, text=True, env=env)

    proc = cli("train", "--out", str(out), "--data", str(data), "--tokenizer", "bpe:300", "--max-iters", "4",
               "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
               "--eval-interval", "4", "--eval-iters", "1", "--no-progress", "--device", "cpu", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    saved = BytePairTokenizer.load(out / "ckpt-00000004" / "tokenizer.json")
    assert saved == train_bpe(split_text(data.read_text("utf-8"))[0], 300) and saved.vocab_size == 300
    proc = cli("sample", "--ckpt", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "0",
               "--device", "cpu")
    assert proc.returncode == 0 and proc.stdout.startswith("ROMEO:"), proc.stderr
    proc = cli("eval", "--ckpt", str(out), "--iters", "1", "--batch-size", "2", "--device", "cpu")
    assert proc.returncode == 0 and "loss" in proc.stdout, proc.stderr


def test_tokenizer_flag_takes_bpe_n(capsys):
    from mini_gpt.cli import build_parser

    assert build_parser().parse_args(["train", "--out", "x", "--tokenizer", "bpe:512"]).tokenizer == "bpe:512"
    err = parse_error(capsys, "--tokenizer", "bpe:100")
    assert "argument --tokenizer: must be one of 'char', 'gpt2', 'r50k_base' or 'bpe:N' (N an int >= 256), " \
           "got 'bpe:100'" in err
