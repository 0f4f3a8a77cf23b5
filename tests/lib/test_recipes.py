import dataclasses

import pytest

from mini_gpt import GPTConfig
from mini_gpt.cli import build_parser, main
from mini_gpt.config import PRESETS
from mini_gpt.recipes import RECIPES, Recipe, recipe
from mini_gpt.train import TrainConfig

# the course's shared model: its cached weights are keyed by exactly these two dicts
COURSE_MODEL = dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
COURSE_TRAINING = dict(batch_size=16, max_iters=1000, learning_rate=2e-3, min_lr=2e-4, warmup_iters=50,
                       weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20, log_interval=10,
                       device="cpu", dtype="auto", seed=1337)


def test_every_model_preset_has_its_own_recipe():
    assert set(PRESETS) <= set(RECIPES)
    for name in PRESETS:
        r = recipe(name)
        assert r.name == name and r.preset == name
        assert r.model_config() == GPTConfig.preset(name)
        assert r.description and "\n" not in r.description
    assert all(r.name == key for key, r in RECIPES.items())


def test_every_recipe_makes_valid_configs():
    for r in RECIPES.values():
        model, train = r.configs()
        assert isinstance(model, GPTConfig) and isinstance(train, TrainConfig)
        assert {k: getattr(train, k) for k in r.train} == r.train_dict()


def test_gpt2_large_no_longer_trains_with_gpt2s_recipe():
    gpt2 = recipe("gpt2").train_dict()
    lrs = [recipe(name).train_dict()["learning_rate"] for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == 4  # larger models, smaller peaks
    for name in ("gpt2-medium", "gpt2-large", "gpt2-xl"):
        r = recipe(name)
        assert r.train_dict() != gpt2 and r.tokenizer == "gpt2"
        # the same 64 windows of 1024 tokens per optimizer step, in smaller micro-batches
        t = r.train_dict()
        assert t["batch_size"] * t["grad_accum"] == gpt2["batch_size"] * gpt2["grad_accum"] == 64
        assert t["block_size"] == 1024 and t["batch_size"] < gpt2["batch_size"]


def test_mini_gpt_train_uses_the_large_recipe(capsys, tmp_path):
    # 5e-4 is below gpt2's peak (6e-4) but above gpt2-large's (2.5e-4): only the large recipe refuses it,
    # and it does so before any data is read or model is built
    assert main(["train", "--preset", "gpt2-large", "--min-lr", "5e-4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "min_lr" in err and "learning_rate=0.00025" in err


def test_course_recipe_holds_exactly_the_course_dicts():
    r = recipe("course-shakespeare")
    assert r.model_dict() == COURSE_MODEL and r.train_dict() == COURSE_TRAINING
    model, train = r.configs(out_dir="/tmp/x")
    assert model == GPTConfig(**COURSE_MODEL)
    assert train == TrainConfig(**COURSE_TRAINING, out_dir="/tmp/x")


def test_recipes_cannot_be_changed_by_their_callers():
    r = recipe("shakespeare-char")
    with pytest.raises(TypeError):
        r.train["max_iters"] = 1  # a read-only view
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.preset = "gpt2"
    copy = r.train_dict()
    copy["max_iters"] = 1
    assert recipe("shakespeare-char").train_dict()["max_iters"] == 2000


def test_unknown_recipe_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown recipe 'gpt5'; choose one of 'shakespeare-char', .*'gpt2-xl'"):
        recipe("gpt5")


def test_bad_recipes_fail_when_made():
    with pytest.raises(ValueError, match=r"train has no field\(s\) \['lr'\]"):
        Recipe("x", "a typo", preset="gpt2", train=dict(lr=1e-3))
    with pytest.raises(ValueError, match=r"model has no field\(s\) \['layers'\]"):
        Recipe("x", "a typo", preset="gpt2", model=dict(layers=3))
    with pytest.raises(ValueError, match="Recipe.preset must be one of"):
        Recipe("x", "no such shape", preset="gpt3")
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        Recipe("x", "a bad value", preset="gpt2", train=dict(batch_size=0))


def test_train_help_lists_every_trainconfig_field_and_every_preset(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    renamed = {"learning_rate": "--lr", "out_dir": "--out", "progress": "--no-progress"}
    for f in dataclasses.fields(TrainConfig):
        flag = renamed.get(f.name, "--" + f.name.replace("_", "-"))
        assert f" {flag} " in out or f" {flag}\n" in out, flag
    # the flags the design promises
    for flag in ("--batch-size --block-size --n-layer --n-head --n-embd --dropout --lr --max-iters --lr-decay-iters "
                 "--warmup-iters --eval-interval --grad-accum --device --dtype --compile --seed --min-lr --eval-iters "
                 "--log-interval --resume --no-progress --out --data --tokenizer --preset").split():
        assert flag in out, flag
    for name, r in RECIPES.items():
        assert f"  {name}  " in out and r.description in out
