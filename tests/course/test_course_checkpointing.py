"""The exercise checks of chapter 9 (checkpointing): right answers pass, the usual mistakes are
named, and an exercise not started yet gets a reminder."""

import builtins
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from mini_gpt import course


def raises_naming(message):
    """pytest.raises(AssertionError) whose message, with its line wrapping undone, contains `message`."""
    return pytest.raises(AssertionError, match=r"\s+".join(map(re.escape, message.split())))

# ---------------------------------------------------------------------------------------------
# atomic writes


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(file, data, *, flush=True, fsync=True):
    """Write `data` to `file`, then flush Python's buffer and fsync, unless told not to."""
    with open(file, "wb") as f:
        f.write(data)
        if flush:
            f.flush()
        if fsync:
            os.fsync(f.fileno())


def _tmp(path):
    return Path(path).with_name(Path(path).name + ".tmp")


def atomic_write(path, data):
    path, tmp = Path(path), _tmp(path)
    try:
        _write(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write_mkstemp(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def atomic_write_named_temporary_file(path, data):
    path = Path(path)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False) as f:
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)
    _fsync_folder(path.parent)


def atomic_write_like_the_library(path, data):  # checkpoint._write: write, reopen, fsync
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)
    try:
        tmp.write_bytes(data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def in_place(path, data):
    with open(path, "wb") as f:
        f.write(data)


def no_fsync(path, data):
    _write(_tmp(path), data, fsync=False)
    os.replace(_tmp(path), path)
    _fsync_folder(Path(path).parent)


def fsync_before_flush(path, data):
    _write(_tmp(path), data, flush=False)  # the bytes are still in Python's buffer when fsync runs
    os.replace(_tmp(path), path)
    _fsync_folder(Path(path).parent)


def no_folder_fsync(path, data):
    _write(_tmp(path), data)
    os.replace(_tmp(path), path)


def delete_then_rename(path, data):
    _write(_tmp(path), data)
    if Path(path).exists():
        os.remove(path)
    os.rename(_tmp(path), path)
    _fsync_folder(Path(path).parent)


def temp_in_another_folder(path, data):
    fd, tmp = tempfile.mkstemp()  # in the system's temp folder, maybe another file system
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    shutil.move(tmp, path)
    _fsync_folder(Path(path).parent)


def copy_over(path, data):
    _write(_tmp(path), data)
    shutil.copyfile(_tmp(path), path)


def leaves_temp_file(path, data):  # the chapter's atomic_save: right, except after a full disk
    _write(_tmp(path), data)
    os.replace(_tmp(path), path)
    _fsync_folder(Path(path).parent)


def swallows_errors(path, data):
    try:
        atomic_write(path, data)
    except OSError:
        pass


def swallows_everything(path, data):
    try:
        in_place(path, data)
    except BaseException:  # even the crash: the file is broken all the same
        pass


def test_simulate_crashes_tells_naive_from_atomic():
    old, new = b"old checkpoint " * 20, b"new checkpoint!" * 30
    naive = course.simulate_crashes(in_place, old, new)
    assert naive[-1] == ("no crash", "the new file")
    assert ("write 450 bytes to model.safetensors", "a broken file: the first 225 of the 450 new bytes") in naive
    atomic = course.simulate_crashes(leaves_temp_file, old, new)
    assert [outcome for _, outcome in atomic] == ["the old file"] * 4 + ["the new file"] * 2
    assert atomic[3][0] == "rename model.safetensors.tmp over model.safetensors"
    # where there is no file yet, a crash before the rename leaves none
    first = course.simulate_crashes(leaves_temp_file, None, new)
    assert [outcome for _, outcome in first] == ["no file"] * 4 + ["the new file"] * 2


def test_crash_simulation_restores_the_file_functions():
    before = (builtins.open, io.open, os.open, os.write, os.fsync, os.replace, os.rename, os.unlink, os.close)

    def raises(path, data):
        with open(Path(path).with_name("x"), "wb") as f:
            f.write(data)
        raise ValueError("a bug in the reader's code")

    with raises_naming("raised ValueError: a bug"):
        course.check_atomic_write(raises)
    course.simulate_crashes(atomic_write, b"a", b"b")
    assert (builtins.open, io.open, os.open, os.write, os.fsync, os.replace, os.rename, os.unlink,
            os.close) == before


# ---------------------------------------------------------------------------------------------
# saving and restoring a training state


def save_state(folder, model, optimizer, step):
    folder = Path(folder)
    save_file(model.state_dict(), folder / "model.safetensors")
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
    tensors["rng"] = torch.get_rng_state()
    save_file(tensors, folder / "optim.safetensors")
    (folder / "state.json").write_text(json.dumps({"step": step, "param_groups": opt["param_groups"]}))


def load_state(folder, model, optimizer):
    folder = Path(folder)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    tensors = load_file(folder / "optim.safetensors")
    meta = json.loads((folder / "state.json").read_text())
    state = {}
    for key, value in tensors.items():
        if key != "rng":
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng"])
    return meta["step"]


def test_training_state_passes_and_keeps_the_random_state(capsys):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    course.check_training_state(save_state, load_state)
    assert capsys.readouterr().out.startswith("\u2713 save_state and load_state resume exactly")
    assert torch.equal(torch.get_rng_state(), before)


def test_training_state_not_started(capsys):
    def save_state(folder, model, optimizer, step):
        ...

    def load_state(folder, model, optimizer):
        ...

    course.check_training_state(save_state, load_state)
    assert "\u270e save_state and load_state are not written yet" in capsys.readouterr().out


def save_pickle(folder, model, optimizer, step):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "rng": torch.get_rng_state()}, Path(folder) / "state.pt")


def load_pickle(folder, model, optimizer):
    state = torch.load(Path(folder) / "state.pt")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return state["step"]


def load_without_optimizer(folder, model, optimizer):
    folder = Path(folder)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    torch.set_rng_state(load_file(folder / "optim.safetensors")["rng"])
    return json.loads((folder / "state.json").read_text())["step"]


def load_without_rng(folder, model, optimizer):
    rng = torch.get_rng_state()
    step = load_state(folder, model, optimizer)
    torch.set_rng_state(rng)
    return step


def load_without_weights(folder, model, optimizer):
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    step = load_state(folder, model, optimizer)
    model.load_state_dict(weights)
    return step


def load_from_step_0(folder, model, optimizer):
    load_state(folder, model, optimizer)
    return 0


def load_returns_nothing(folder, model, optimizer):
    load_state(folder, model, optimizer)


def save_nothing(folder, model, optimizer, step):
    pass


@pytest.mark.parametrize("save, load, message", [
    (save_pickle, load_pickle, "state.pt is a pickle"),
    (save_state, load_without_optimizer, "AdamW's state is not restored"),
    (save_state, load_without_rng, "the random state is not restored"),
    (save_state, load_without_weights, "the weights are not restored"),
    (save_state, load_from_step_0, "returned step 0, but the state was saved at step 7"),
    (save_state, load_returns_nothing, "returned None; return the step"),
    (save_nothing, load_from_step_0, "wrote no file"),
])
def test_training_state_names_the_mistake(save, load, message):
    with raises_naming(message):
        course.check_training_state(save, load)


# ---------------------------------------------------------------------------------------------
# activation checkpointing


def _embed(model, idx):
    tr = model.transformer
    return tr.drop(tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1])))


def per_block(model, idx):
    x = _embed(model, idx)
    for block in model.transformer.h:
        x = checkpoint(block, x, use_reentrant=False)
    return model.lm_head(model.transformer.ln_f(x))


def in_segments(model, idx, k=2):
    x = _embed(model, idx)
    blocks = list(model.transformer.h)

    def run(x, segment):
        for block in segment:
            x = block(x)
        return x

    for i in range(0, len(blocks), k):
        x = checkpoint(run, x, blocks[i:i + k], use_reentrant=False)
    return model.lm_head(model.transformer.ln_f(x))


def with_the_library_flag(model, idx):
    for block in model.transformer.h:
        block.activation_checkpointing = True
    try:
        return model(idx)
    finally:
        for block in model.transformer.h:
            block.activation_checkpointing = False


def reentrant(model, idx):
    x = _embed(model, idx)
    for block in model.transformer.h:
        x = checkpoint(block, x, use_reentrant=True)
    return model.lm_head(model.transformer.ln_f(x))


def plain(model, idx):
    return model(idx)


def blocks_without_autograd(model, idx):
    x = _embed(model, idx)
    with torch.no_grad():
        for block in model.transformer.h:
            x = block(x)
    return model.lm_head(model.transformer.ln_f(x))


def without_ln_f(model, idx):
    x = _embed(model, idx)
    for block in model.transformer.h:
        x = checkpoint(block, x, use_reentrant=False)
    return model.lm_head(x)


def all_without_autograd(model, idx):
    with torch.no_grad():
        return model(idx)


# ---------------------------------------------------------------------------------------------
# what the one-function checks share: right answers pass, the usual mistakes are named, an empty
# answer gets a reminder

RIGHT_ANSWERS = [
    *[(course.check_atomic_write, fn, "leaves the old or the new file after a crash") for fn in
      (atomic_write, atomic_write_mkstemp, atomic_write_named_temporary_file, atomic_write_like_the_library)],
    *[(course.check_checkpointed_forward, fn, "gives model(idx)'s logits and gradients") for fn in
      (per_block, in_segments, with_the_library_flag, reentrant)],
]


WRONG_ANSWERS = [
    *[(course.check_atomic_write, fn, message) for fn, message in [
        (in_place, "writes over the old file in place"),
        (no_fsync, "not fsync'ed before the rename"),
        (fsync_before_flush, "still in Python's buffer"),
        (no_folder_fsync, "the folder is not fsync'ed after the rename"),
        (delete_then_rename, "the old file is deleted before the new one"),
        (temp_in_another_folder, "is not in the target's folder"),
        (copy_over, "without a rename"),
        (leaves_temp_file, "leaves model.safetensors.tmp behind"),
        (swallows_errors, "returns as if the save worked"),
        (swallows_everything, "leaves a broken file"),
    ]],
    *[(course.check_checkpointed_forward, fn, message) for fn, message in [
        (plain, "nothing is recomputed"),
        (blocks_without_autograd, "no gradient reaches"),
        (without_ln_f, "the final LayerNorm ln_f is missing"),
        (all_without_autograd, "the logits carry no gradient"),
    ]],
]


def _name(x):
    return getattr(x, "__name__", None)  # the check and the answer by name; pytest numbers the rest


@pytest.mark.parametrize("check, fn, what", RIGHT_ANSWERS, ids=_name)
def test_right_answers_pass(check, fn, what, capsys):
    check(fn)
    assert capsys.readouterr().out.startswith(f"\u2713 {fn.__name__} {what}")


@pytest.mark.parametrize("check, fn, message", WRONG_ANSWERS, ids=_name)
def test_wrong_answers_are_named(check, fn, message):
    with raises_naming(message):
        check(fn)


@pytest.mark.parametrize("check, reminder", [(course.check_atomic_write, "wrote nothing"),
                                             (course.check_checkpointed_forward, "returned None")])
def test_an_empty_answer_gets_a_reminder(check, reminder, capsys):
    def my_answer(a, b):
        ...

    check(my_answer)
    assert f"\u270e my_answer {reminder}: write its body" in capsys.readouterr().out
