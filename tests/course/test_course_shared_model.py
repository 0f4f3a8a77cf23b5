"""The shared Shakespeare model of chapters 5-9: trained once per recipe, cached, resumable, adoptable.

The real recipe trains for about a minute and a half, so these tests shrink it (monkeypatched)
and check the caching and resume logic on a model that trains in a second.
"""

import pytest
import torch

from mini_gpt import course
from mini_gpt.checkpoint import latest_checkpoint
from mini_gpt.course import shared  # the recipe and the functions that read it live here


@pytest.fixture
def tiny_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("MINI_GPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shared, "SHAKESPEARE_CONFIG",
                        dict(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32))
    monkeypatch.setattr(
        shared, "SHAKESPEARE_TRAINING",
        {**shared.SHAKESPEARE_TRAINING, "batch_size": 2, "max_iters": 6, "warmup_iters": 2, "eval_interval": 3,
         "eval_iters": 2, "log_interval": 1, "dtype": "float32"},
    )
    return tmp_path


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_trained_once_then_loaded_from_the_cache(tiny_recipe, monkeypatch):
    threads = torch.get_num_threads()
    first = course.shakespeare_model(progress=False)
    assert torch.get_num_threads() == threads  # the recipe's thread count is restored afterwards
    assert not first.training
    assert latest_checkpoint(course.shakespeare_model_dir()).step == 6

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model must not be trained again")

    monkeypatch.setattr(shared, "train_shakespeare_model", no_training)
    assert _same_weights(first, course.shakespeare_model(progress=False))
    history = course.shakespeare_history()
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert "val_loss" in history[2] and "val_loss" not in history[1]


def test_staged_training_equals_the_cached_model(tiny_recipe):
    run = tiny_recipe / "run"
    course.train_shakespeare_model(run, max_iters=2, progress=False)
    course.train_shakespeare_model(run, max_iters=4, progress=False)
    assert latest_checkpoint(run).step == 4
    course.train_shakespeare_model(run, progress=False)
    staged = latest_checkpoint(run)
    model = course.shakespeare_model(progress=False)  # trained in one go into the cache
    assert all(torch.equal(staged.model_state[k], v) for k, v in model.state_dict().items() if k in staged.model_state)


def test_adopting_a_finished_run_skips_training(tiny_recipe, monkeypatch):
    run = tiny_recipe / "run"
    course.train_shakespeare_model(run, progress=False)
    assert course.adopt_shakespeare_model(run) == course.shakespeare_model_dir()
    monkeypatch.setattr(shared, "train_shakespeare_model", lambda *a, **k: pytest.fail("adopted run was retrained"))
    model = course.shakespeare_model(progress=False)
    ckpt = latest_checkpoint(run)
    assert all(torch.equal(ckpt.model_state[k], v) for k, v in model.state_dict().items() if k in ckpt.model_state)
    assert len(course.shakespeare_history()) == 6


def test_adopt_refuses_unfinished_or_foreign_runs(tiny_recipe, monkeypatch):
    run = tiny_recipe / "run"
    course.train_shakespeare_model(run, max_iters=3, progress=False)
    with pytest.raises(ValueError, match="run_dir"):
        course.adopt_shakespeare_model(run)
    course.train_shakespeare_model(run, progress=False)
    monkeypatch.setattr(shared, "SHAKESPEARE_TRAINING", {**shared.SHAKESPEARE_TRAINING, "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="recipe"):  # trained with another learning rate
        course.adopt_shakespeare_model(run)


def test_the_cache_key_follows_the_recipe(tiny_recipe, monkeypatch):
    before = course.shakespeare_model_dir()
    monkeypatch.setattr(shared, "SHAKESPEARE_TRAINING", {**shared.SHAKESPEARE_TRAINING, "seed": 7})
    assert course.shakespeare_model_dir() != before
    assert course.shakespeare_model_dir().parent == before.parent


def test_max_iters_beyond_the_schedule_is_refused(tiny_recipe):
    with pytest.raises(ValueError, match="max_iters"):
        course.train_shakespeare_model(tiny_recipe / "run", max_iters=7, progress=False)
