import copy
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mini_gpt import GPT, GPTConfig
from mini_gpt.checkpoint import latest_checkpoint
from mini_gpt.data import load_dataset
from mini_gpt.train import (
    TrainConfig,
    attention_for_training,
    batch_loss,
    configure_optimizer,
    lr_at,
    train,
    train_step,
)

from cli_runner import cli

WORKERS = Path(__file__).parent / "workers"
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8",
        "--dropout", "0.1", "--log-interval", "1", "--eval-interval", "5", "--eval-iters", "2", "--no-progress",
        "--dtype", "float32", "--device", "cpu"]


def losses(out):
    return {r["step"]: r["train_loss"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())}


def test_resume_is_exact(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    cli("train", "--out", str(full), "--max-iters", "20", *TINY)
    cli("train", "--out", str(split), "--max-iters", "10", *TINY)
    cli("train", "--out", str(split), "--max-iters", "20", "--resume", *TINY)
    a, b = losses(full), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert [a[s] for s in range(11, 21)] == [b[s] for s in range(11, 21)]  # bit for bit (dropout on)
    assert len(set(a.values())) > 10  # the losses really move


def test_lr_schedule():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=50, lr_decay_iters=100)
    lrs = [lr_at(s, cfg) for s in range(120)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warmup
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never increases
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 45 / 90)) * 9e-4)  # cosine
    assert lrs[100] == lrs[119] == pytest.approx(1e-4)  # the floor
    # where this run stops does not change the schedule
    assert lr_at(30, cfg) == lr_at(30, TrainConfig(**{**cfg.__dict__, "max_iters": 80}))


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_parameters()


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(WORKERS / "ddp_train.py"), str(tmp_path / "one.st"), "2"],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(WORKERS / "ddp_train.py"), str(tmp_path / "two.st"), "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.st"), load_file(tmp_path / "two.st")
    init = GPT(GPTConfig(vocab_size=26, block_size=16, n_layer=2, n_head=2, n_embd=32)).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
        assert a[k].shape == init[k].shape
    moved = sum(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved < 1e-4


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    data = load_dataset("shakespeare", "char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.lm_head.register_forward_hook(poison)
    cfg = TrainConfig(out_dir=str(tmp_path), batch_size=2, max_iters=10, checkpoint_interval=1, eval_interval=100,
                      device="cpu", dtype="float32", progress=False)
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 3.*ckpt-00000002"):
        train(model, data, cfg)
    assert latest_checkpoint(tmp_path).step == 2


def test_train_is_train_step_in_a_loop():
    # train() and finetune() take the same public step: a loop of train_step gives train's losses and
    # weights bit for bit (accumulation, clipping, the schedule and dropout included)
    data = load_dataset("shakespeare", "char")
    cfg = TrainConfig(batch_size=4, max_iters=8, grad_accum=2, grad_clip=0.5, warmup_iters=3, learning_rate=3e-3,
                      eval_interval=100, log_interval=1, device="cpu", dtype="float32", progress=False, seed=3)
    torch.manual_seed(0)
    lib = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    mine = copy.deepcopy(lib).train()
    torch.manual_seed(1)
    result = train(lib, data, cfg)

    optimizer = configure_optimizer(mine, cfg, "cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stream = data.batches("train", cfg.batch_size, 16, seed=cfg.seed)

    def micro_batch_loss():
        x, y = next(stream)
        return batch_loss(mine(x), y)

    torch.manual_seed(1)
    steps = [train_step(s, micro_batch_loss, model=mine, optimizer=optimizer, scaler=scaler, cfg=cfg,
                        device=torch.device("cpu"), dtype=torch.float32) for s in range(cfg.max_iters)]
    assert [(r["train_loss"], r["lr"]) for r in result.history] == steps
    assert all(torch.equal(a, b) for a, b in zip(lib.state_dict().values(), mine.state_dict().values(), strict=True))


def test_train_step_stops_before_a_non_finite_update():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    cfg = TrainConfig(device="cpu", dtype="float32", progress=False)
    optimizer = configure_optimizer(model, cfg, "cpu")
    before = copy.deepcopy(model.state_dict())
    idx = torch.randint(0, 65, (2, 8))
    with pytest.raises(FloatingPointError, match="training loss is nan at step 5; stopping before the update"):
        train_step(4, lambda: model(idx).float().mean() * float("nan"), model=model, optimizer=optimizer,
                   scaler=torch.amp.GradScaler("cpu", enabled=False), cfg=cfg, device=torch.device("cpu"),
                   dtype=torch.float32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not optimizer.state  # no step was taken


def test_attention_for_training_switches_and_restores():
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16))

    def impls():
        return [block.attn.impl for block in model.transformer.h]

    model.transformer.h[1].attn.impl = "explicit"
    with attention_for_training(model, torch.device("cpu"), torch.float32):
        assert impls() == ["sdpa", "explicit"]  # float32: as it was
    with pytest.raises(RuntimeError), attention_for_training(model, torch.device("cpu"), torch.bfloat16):
        assert impls() == ["explicit", "explicit"]  # bf16 on CPU: the written-out path is faster
        raise RuntimeError
    assert impls() == ["sdpa", "explicit"]  # each layer as it was, after an error too


def test_learns_well_below_the_unigram_baseline():
    data = load_dataset("shakespeare", "char")
    counts = Counter(data.train.tolist())
    total = sum(counts.values())
    # cross-entropy on val of the best model that ignores context: train's character frequencies
    unigram = -sum(math.log(counts[t] / total) for t in data.val.tolist()) / len(data.val)
    assert 3.2 < unigram < 3.4
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("shakespeare-char", block_size=64))
    cfg = TrainConfig(batch_size=16, max_iters=300, learning_rate=3e-3, warmup_iters=30, eval_interval=300,
                      eval_iters=10, device="cpu", dtype="float32", progress=False)
    result = train(model, data, cfg)
    val = result.val_losses[-1][1]
    assert val < unigram - 0.7, (val, unigram)


def test_bad_flags_give_one_line_and_exit_2():
    for args, needle in [
        (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
        (["--lr", "-1"], "argument --lr: must be a number > 0, got '-1'"),
        (["--max-iters", "0"], "argument --max-iters: must be an int >= 1, got '0'"),
        (["--preset", "gpt5"], "argument --preset: invalid choice: 'gpt5'"),
        (["--n-embd", "30", "--n-head", "4"], "n_embd (30) must be divisible by n_head (4)"),
    ]:
        proc = cli("train", "--out", "/tmp/never-written", *args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_eval_and_sample_commands(tmp_path):
    out = tmp_path / "run"
    cli("train", "--out", str(out), "--max-iters", "10", *TINY)
    ev = cli("eval", "--ckpt", str(out), "--iters", "2", "--batch-size", "4", "--device", "cpu")
    line = ev.stdout.strip().splitlines()[-1]
    assert "loss" in line and "perplexity" in line and "next-token accuracy" in line
    loss = float(line.split()[1])
    assert math.exp(loss) == pytest.approx(float(line.split()[3]), rel=1e-3)
    s1 = cli("sample", "--ckpt", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1",
             "--device", "cpu")
    s2 = cli("sample", "--ckpt", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1",
             "--device", "cpu")
    assert s1.stdout == s2.stdout and s1.stdout.startswith("ROMEO:") and len(s1.stdout) >= 36
    bad = cli("sample", "--ckpt", str(tmp_path / "nothing"), check=False)
    assert bad.returncode == 2 and "not a checkpoint folder" in bad.stderr
