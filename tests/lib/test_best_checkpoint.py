"""Training keeps `best/`: the checkpoint of the lowest validation loss so far, written only when
an evaluation beats every earlier one, atomically, and invisible to `list_checkpoints`."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mini_gpt import GPT, GPTConfig
from mini_gpt import train as train_mod
from mini_gpt.checkpoint import (
    BEST_DIR,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    restore_model,
    save_checkpoint,
)
from mini_gpt.cli import main as cli_main
from mini_gpt.data import TextDataset
from mini_gpt.tokenizer import CharTokenizer
from mini_gpt.train import TrainConfig, train

WORKERS = Path(__file__).parent / "workers"
TEXT = "the quick brown fox jumps over the lazy dog. " * 60


@pytest.fixture(scope="module")
def data():
    return TextDataset.from_text(TEXT, CharTokenizer.from_text(TEXT))


def new_model(data, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=data.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1))


def recipe(out, **changes):
    settings = dict(out_dir=str(out) if out else None, batch_size=4, block_size=16, max_iters=12, eval_interval=2,
                    eval_iters=2, log_interval=1, warmup_iters=2, device="cpu", dtype="float32", progress=False)
    return TrainConfig(**{**settings, **changes})


@pytest.fixture
def scripted(monkeypatch):
    """Replace the validation loss by a script (one value per evaluation); record each save."""
    saves = []
    real_save = train_mod.save_checkpoint

    def record_save(out_dir, **kwargs):
        saves.append((Path(out_dir).name, kwargs["step"]))
        return real_save(out_dir, **kwargs)

    def use(losses):
        it = iter(losses)
        monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: {"val_loss": next(it)})
        return saves

    monkeypatch.setattr(train_mod, "save_checkpoint", record_save)
    return use


def best_steps(saves):
    return [step for folder, step in saves if folder == BEST_DIR]


def test_best_is_written_only_when_validation_improves(tmp_path, data, scripted):
    # evaluations at steps 2, 4, ..., 12: better, better, worse, better, a tie, worse
    saves = scripted([3.0, 2.0, 2.5, 1.5, 1.5, 1.8])
    train(new_model(data), data, recipe(tmp_path))
    assert best_steps(saves) == [2, 4, 8]  # the tie at step 10 keeps the earlier one
    best = load_checkpoint(tmp_path / BEST_DIR)
    assert (best.step, best.state["val_loss"]) == (8, 1.5)
    assert [p.name for p in list_checkpoints(tmp_path / BEST_DIR)] == ["ckpt-00000008"]  # the older ones went
    # beside the last N, invisible to them: the newest checkpoint is still the run's last step
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000010", "ckpt-00000012"]
    assert latest_checkpoint(tmp_path).step == load_checkpoint(tmp_path).step == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_DIR, "ckpt-00000010", "ckpt-00000012",
                                                          "metrics.jsonl"]


def test_best_holds_the_weights_of_its_step(tmp_path, data):
    train(new_model(data), data, recipe(tmp_path, max_iters=8, checkpoint_interval=2, keep_checkpoints=10))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    best_step = min(val, key=lambda s: (val[s], s))
    best = load_checkpoint(tmp_path / BEST_DIR)
    assert best.step == best_step and best.state["val_loss"] == val[best_step]
    same_step = load_checkpoint(tmp_path / f"ckpt-{best_step:08d}")
    for key, tensor in same_step.model_state.items():
        assert torch.equal(best.model_state[key], tensor), key
    model, tokenizer = load_model(tmp_path / BEST_DIR)
    assert tokenizer == data.tokenizer


def test_keeping_best_changes_no_training_number(tmp_path, data):
    with_files = train(new_model(data), data, recipe(tmp_path / "run"))
    without = train(new_model(data), data, recipe(None))
    def numbers(history):  # all but the speed, which is the clock's
        return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in history]

    assert numbers(with_files.history) == numbers(without.history)  # bit for bit (dropout is on)
    assert (tmp_path / "run" / BEST_DIR).is_dir()


def test_resume_compares_against_the_kept_best(tmp_path, data, scripted):
    saves = scripted([3.0, 2.0, 2.5])
    train(new_model(data), data, recipe(tmp_path, max_iters=6))
    assert best_steps(saves) == [2, 4]
    saves = scripted([2.2, 1.9, 2.1])  # steps 8, 10, 12: only 1.9 beats the kept 2.0
    saves.clear()
    train(new_model(data, seed=1), data, recipe(tmp_path, resume=True))
    assert best_steps(saves) == [10]
    assert load_checkpoint(tmp_path / BEST_DIR).state["val_loss"] == 1.9


def test_a_fresh_run_in_the_same_folder_drops_the_old_best(tmp_path, data, scripted):
    scripted([1.0, 2.0, 3.0])
    train(new_model(data), data, recipe(tmp_path, max_iters=6))
    saves = scripted([5.0, 4.0, 6.0])
    saves.clear()
    train(new_model(data), data, recipe(tmp_path, max_iters=6))  # not --resume: a new run
    assert best_steps(saves) == [2, 4]
    assert load_checkpoint(tmp_path / BEST_DIR).state["val_loss"] == 4.0


@pytest.mark.slow
def test_sigkill_while_best_is_written_leaves_a_loadable_best(tmp_path):
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last_step = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(WORKERS / "best_loop.py"), str(tmp_path)],
                                stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2):  # two evaluations done: best/ is now rewritten at every step
            proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.2))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        best = load_checkpoint(tmp_path / BEST_DIR)  # the one before the kill, or the new one: whole
        assert best.step >= last_step
        assert len(list_checkpoints(tmp_path / BEST_DIR)) <= 2  # at most the new one beside the old
        restore_model(best, GPT(best.model_config))
        last_step = best.step
    assert last_step > 6


def test_sample_takes_dir_or_dir_best(tmp_path, data, capsys):
    # eval and export find their checkpoint the same way (checkpoint.load_checkpoint / load_model)
    tok = CharTokenizer.from_text(TEXT)
    for step, seed in ((1, 0), (2, 1)):
        model = new_model(data, seed=seed)
        save_checkpoint(tmp_path, step=step, model=model, model_config=model.config, tokenizer=tok)
        if step == 1:
            save_checkpoint(tmp_path / BEST_DIR, step=1, model=model, model_config=model.config, tokenizer=tok, keep=1)
    texts = {}
    for ckpt in (tmp_path, tmp_path / BEST_DIR, tmp_path / "ckpt-00000001"):
        assert cli_main(["sample", "--ckpt", str(ckpt), "--prompt", "the", "--max-new-tokens", "30", "--greedy",
                         "--device", "cpu"]) == 0
        texts[ckpt.name] = capsys.readouterr().out
    assert texts[BEST_DIR] == texts["ckpt-00000001"] != texts[tmp_path.name]  # best is step 1, DIR the newest
