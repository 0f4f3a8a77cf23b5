"""The checkpointing chapter's exercises: a crash-safe write (tried with simulated crashes), saving
and restoring a training state without pickle, and activation checkpointing (measured by the bytes
autograd keeps for the backward pass)."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..model import GPT
from .checking import (
    Answer,
    as_tensor,
    close,
    diagnose,
    is_count,
    max_diff,
    mismatch,
    probably,
    random_generator,
    whole_number,
)
from .crashsim import logged_save
from .shared import small_model

__all__ = ["check_atomic_write", "check_training_state", "check_checkpointed_forward"]


# ---------------------------------------------------------------------------- a crash-safe write


def _crash_payloads() -> tuple[bytes, bytes]:
    from safetensors.torch import save as to_safetensors

    g = random_generator(9)
    old = to_safetensors({"w": torch.randn(8, 8, generator=g)})
    new = to_safetensors({"w": torch.randn(8, 16, generator=g)})
    return old, new


_NAME = "model.safetensors"
_IN_PLACE = ("it writes over the old file in place: opening it for writing empties it at once, and a crash "
             "before the last byte leaves a broken file. Write a temporary file in the same folder, then "
             "os.replace it over the old one")


def _survives_every_crash(answer: Answer, log, before: bytes | None, new: bytes, scenario: str) -> None:
    """A crash at each of the save's operations in turn leaves the old file (or none) or the new one."""
    allowed = ("the old file", "the new file") if before is not None else ("no file", "the new file")
    target = log.root / _NAME
    for k in range(len(log.ops)):
        crash_log, crash_outcome, _, _ = logged_save(answer.fn, before, new, _NAME, k)
        if crash_outcome in allowed:
            continue
        op = crash_log.ops[k] if k < len(crash_log.ops) else log.ops[k]
        if target in log.opened_for_writing:
            hint = _IN_PLACE
        elif crash_outcome == "no file" and any(o.startswith(f"delete {_NAME}") for o in log.ops):
            hint = ("the old file is deleted before the new one takes its name; os.replace(tmp, path) swaps "
                    "them in one step, with no delete needed")
        else:
            hint = "the new file must be complete before it takes the name: write it all, then rename it"
        raise answer.fail(f"{scenario}: a crash at step {k + 1} of {len(log.ops)} ({op}) leaves {crash_outcome}."
                          f"\n  Probably: {hint}")


def _renamed_durably(answer: Answer, log, scenario: str) -> None:
    """The new file takes its name by a rename from the same folder, fsync'ed before, the folder after."""
    target = log.root / _NAME
    renames = [i for i, e in enumerate(log.events) if e[0] == "rename" and e[2] == target]
    if not renames:
        hint = _IN_PLACE if target in log.opened_for_writing else "write a temp file, then os.replace(tmp, path)"
        raise answer.fail(f"{_NAME} gets its new bytes without a rename of a finished temporary file onto it "
                          f"({scenario}).\n  Probably: {hint}")
    i = renames[-1]
    _, src, _, durable, fsync_before_flush = log.events[i]
    if src is None or src.parent != target.parent:
        raise answer.fail(f"the temporary file ({log.name(src)}) is not in the target's folder: a rename is atomic "
                          f"only within one file system (across two, os.replace fails or copies). Create it next "
                          f"to the target, e.g. path.with_name(path.name + '.tmp')")
    if not durable:
        if fsync_before_flush:
            hint = ("os.fsync ran while the bytes were still in Python's buffer: call f.flush() first, then "
                    "os.fsync(f.fileno())")
        else:
            hint = ("the temporary file is not fsync'ed before the rename: after a power cut the rename can "
                    "reach the disk before the data, leaving an empty or partial file under the real name. "
                    "Call f.flush() and os.fsync(f.fileno()) before os.replace")
        raise answer.fail(f"the new file is not durable when it is renamed ({scenario}).\n  Probably: {hint}")
    if not any(e[0] == "fsync-dir" and e[1] == target.parent for e in log.events[i + 1:]):
        raise answer.fail("the folder is not fsync'ed after the rename: the rename is a change to the folder, and a "
                          "power cut can undo it. After os.replace: fd = os.open(folder, os.O_RDONLY); "
                          "os.fsync(fd); os.close(fd)")


def _fails_cleanly_on_a_full_disk(answer: Answer, old: bytes, new: bytes) -> None:
    """A save whose first write fails raises an OSError and leaves the old file, and nothing else."""
    _, outcome, error, leftovers = logged_save(answer.fn, old, new, _NAME, None, disk_full=True)
    full = "when the disk fills up (the first write raises OSError: No space left on device)"
    if error is None:
        raise answer.fail(f"{full}, it returns as if the save worked: let the error reach the caller (re-raise it), "
                          f"so that training stops or retries instead of going on without a checkpoint")
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    if not any(isinstance(e, OSError) for e in chain):
        raise answer.fail(f"{full}, it raises {type(error).__name__}: {error}; let the OSError through") from error
    if outcome != "the old file":
        raise answer.fail(f"{full}, {_NAME} holds {outcome}: a failed save must leave the old file as it was")
    if leftovers:
        raise answer.fail(f"{full}, it leaves {', '.join(leftovers)} behind in the folder: remove the temporary "
                          f"file before the error goes on (try: ... except BaseException: tmp.unlink(missing_ok=True); "
                          f"raise)")


def check_atomic_write(fn: Callable[[Path, bytes], Any]) -> None:
    """fn(path, data) writes the bytes `data` to `path` crash-safely: a crash at any moment leaves
    either the old file whole or the new one, once fn returns the new file survives a power cut, and
    a write that fails (a full disk) leaves the old file and no temporary file, and raises.

    Runs fn over an old file and where there is none yet, crashing it at each of its file-system
    operations in turn (`simulate_crashes`), checks the order of its fsyncs and rename, then runs it
    on a disk that fills up half-way through the first write.
    """
    # not run_check's loop: fn's result is not compared, what it leaves on disk after each crash is
    answer = Answer(fn, "check_atomic_write")
    old, new = _crash_payloads()
    for scenario, before in (("over an old file", old), ("where there was no file yet", None)):
        log, outcome, error, _ = logged_save(fn, before, new, _NAME, None)
        if error is not None:
            raise answer.fail(f"raised {type(error).__name__}: {error}\n  (writing {len(new):,} bytes to {_NAME} "
                              f"{scenario})") from error
        if not log.ops and outcome != "the new file":
            return answer.remind("wrote nothing")
        if outcome != "the new file":
            raise answer.fail(f"after it returned (no crash), {_NAME} holds {outcome}, not the {len(new):,} new "
                              f"bytes ({scenario})")
        _survives_every_crash(answer, log, before, new, scenario)
        _renamed_durably(answer, log, scenario)
    _fails_cleanly_on_a_full_disk(answer, old, new)
    return answer.passed(f"leaves the old or the new file after a crash at any of its {len(log.ops)} steps, fsyncs "
                         f"the file before the rename and the folder after, and cleans up after a full disk")


# ---------------------------------------------------------------------------- saving and restoring a training state


def _state_model(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.GELU(), torch.nn.Dropout(0.3),
                                   torch.nn.Linear(32, 3))


def _state_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _state_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, start: int, n: int) -> list[float]:
    """n training steps from step `start`: the learning rate warms up by step, batch `step` depends
    only on step (the data stream's position), dropout draws from torch's global generator."""
    model.train()
    losses = []
    for step in range(start, start + n):
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * min(1.0, (step + 1) / 10)
        g = torch.Generator().manual_seed(100 + step)
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch.save's zip, or a pickle stream


def _same_optimizer_state(a: dict, b: dict) -> str | None:
    """None when two optimizer `state` dicts hold equal tensors, else what differs."""
    if not b:
        return "empty"
    if sorted(a) != sorted(b):
        return f"it has state for parameters {sorted(b)}, the saved one for {sorted(a)}"
    for idx in a:
        for key, value in a[idx].items():
            if key not in b[idx]:
                return f"'{key}' of parameter {idx} is missing"
            other = b[idx][key]
            if not torch.equal(torch.as_tensor(value).float(), torch.as_tensor(other).float()):
                return f"'{key}' of parameter {idx} differs"
    return None


def _resume_hint(step: int, saved_at: int, weights_restored: bool, optimizer_problem: str | None,
                 rng_restored: bool) -> str | None:
    """Why a resumed run differs from the uninterrupted one: the first part of the state not restored."""
    if step != saved_at:
        return (f"load_state returned step {step}, but the state was saved at step {saved_at}: the "
                f"learning rate and the batches depend on the step")
    if not weights_restored:
        return "the weights are not restored: model.load_state_dict(...) with the saved tensors"
    if optimizer_problem == "empty":
        return ("AdamW's state is not restored: a fresh optimizer restarts its moments (exp_avg, exp_avg_sq) "
                "from zero and its step count from 0. Save optimizer.state_dict()['state'] and load it with "
                "optimizer.load_state_dict")
    if optimizer_problem is not None:
        return f"the optimizer's state is not the saved one: {optimizer_problem}"
    if not rng_restored:
        return ("the random state is not restored, so dropout draws other masks: save torch.get_rng_state() "
                "and give it back with torch.set_rng_state (after everything else that draws random numbers)")
    return None


def check_training_state(save_state: Callable, load_state: Callable) -> None:
    """save_state(folder, model, optimizer, step) writes a training state into `folder`;
    load_state(folder, model, optimizer) -> step restores it into a fresh model and optimizer.

    A small model with dropout trains 7 steps (AdamW, a warming-up learning rate, a data stream
    indexed by the step), is saved, and goes on for 6 steps. A fresh model and optimizer, in a
    process whose random state has moved on, are then restored and run the same 6 steps: their
    losses must equal the uninterrupted run's exactly. No file may be a pickle.
    """
    # not run_check's loop: two functions, one round trip, judged by the training that follows it
    save, load = Answer(save_state, "check_training_state"), Answer(load_state, "check_training_state")
    saved_at, more = 7, 6
    with tempfile.TemporaryDirectory(prefix="mini-gpt-state-") as tmp, torch.random.fork_rng(devices=[]):
        folder = Path(tmp) / "state"
        folder.mkdir()
        torch.manual_seed(0)
        model = _state_model(0)
        optimizer = _state_optimizer(model)
        _state_steps(model, optimizer, 0, saved_at)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        moments = copy.deepcopy(optimizer.state_dict()["state"])
        rng = torch.get_rng_state()
        save.call((folder, model, optimizer, saved_at),
                  f"save_state(folder, model, optimizer, step={saved_at}) after {saved_at} training steps")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        expected = _state_steps(model, optimizer, saved_at, more)

        torch.manual_seed(12345)  # a new process: its random state is not the saved one
        fresh = _state_model(1)
        fresh_optimizer = _state_optimizer(fresh)
        if not files:
            try:
                step = load_state(folder, fresh, fresh_optimizer)
            except Exception:  # it looked for files that are not there
                step = False
            if step is None:  # both still empty: one reminder for the pair
                print(f"\u270e {save.name} and {load.name} are not written yet: write their bodies, "
                      f"then run this cell again.")
                return None
            raise save.fail("wrote no file into the folder: the state must survive the process, so it goes to disk")
        step = load.call((folder, fresh, fresh_optimizer), "load_state(folder, fresh_model, fresh_optimizer)")
        pickled = [p.relative_to(folder).as_posix() for p in files if _is_pickle(p)]
        if pickled:
            raise save.fail(f"{', '.join(pickled)} is a pickle (torch.save or pickle.dump): loading it runs "
                            f"whatever code the file holds. Save tensors with safetensors.torch.save_file "
                            f"and the rest as JSON")
        if step is None:
            raise load.fail(f"returned None; return the step the state was saved at ({saved_at}): the "
                            f"loop needs it to go on with the learning-rate schedule and the data where "
                            f"they stopped")
        step = whole_number(step)
        if not is_count(step):
            raise load.fail(f"returned {step!r}; return the step as an int ({saved_at})")
        rng_restored = torch.equal(torch.get_rng_state(), rng)
        weights_restored = all(torch.equal(v, weights[k]) for k, v in fresh.state_dict().items())
        optimizer_problem = _same_optimizer_state(moments, fresh_optimizer.state_dict()["state"])
        got = _state_steps(fresh, fresh_optimizer, step, more)
        if got == expected and step == saved_at:
            return save.passed(f"and {load.name} resume exactly: the next {more} losses equal the "
                               f"uninterrupted run's, and no file is a pickle")
        hint = _resume_hint(step, saved_at, weights_restored, optimizer_problem, rng_restored)
        i = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), 0)
        raise load.fail(f"after load_state the losses differ from the uninterrupted run's, first at step "
                        f"{saved_at + i + 1} ({got[i]:.6f} instead of {expected[i]:.6f})" + probably(hint))


# ---------------------------------------------------------------------------- activation checkpointing


def _saved_activation_bytes(run: Callable[[], Any], params: Iterable[torch.Tensor] = ()) -> tuple[Any, int]:
    """run() under a hook that sees every tensor autograd saves for the backward pass; -> (its result,
    the bytes of the distinct storages saved, parameters left out: they are in memory anyway)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return out, sum(seen.values())


def _backward_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    for p in params:
        p.grad = None
    loss.backward()
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def _forward_mistakes(model: GPT, idx: torch.Tensor):
    tr = model.transformer

    def hidden():  # the stream after the last block
        x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[1]))
        for block in tr.h:
            x = block(x)
        return x

    return [
        ("the final LayerNorm ln_f is missing", lambda: hidden() @ tr.wte.weight.T),
        ("this returns the last hidden state, not the logits: apply the head (model.lm_head)",
         lambda: tr.ln_f(hidden())),
    ]


def _same_gradients(answer: Answer, model: GPT, grads: list, ref_grads: list, where: str, atol: float) -> None:
    names = [n for n, _ in model.named_parameters()]
    missing = [name for name, got_grad in zip(names, grads) if got_grad is None]
    if missing:
        shown = ", ".join(missing[:2]) + (", ..." if len(missing) > 2 else "")
        raise answer.fail(f"no gradient reaches {len(missing)} of the {len(names)} parameters ({shown}) on {where}: "
                          f"that part ran outside autograd (under torch.no_grad, or on a detached tensor)")
    for name, got_grad, ref in zip(names, grads, ref_grads):
        if not close(got_grad, ref, atol=atol):
            raise answer.fail(f"the gradient of {name} differs from the plain forward's by up to "
                              f"{max_diff(got_grad, ref):.3g} on {where}")


def check_checkpointed_forward(fn: Callable[[GPT, torch.Tensor], torch.Tensor]) -> None:
    """fn(model, idx (B, T)) -> logits (B, T, vocab_size) of a GPT in training mode, computed with
    activation checkpointing: the logits and the gradients must equal model(idx)'s, while autograd
    keeps at most 60% of the activations the plain forward keeps for the backward pass.
    """
    # not run_check's loop: the answer runs under autograd, and its gradients and memory are judged too
    answer = Answer(fn, "check_checkpointed_forward")
    g = random_generator(10)
    atol = 1e-5
    ratios = []
    for seed, L in ((0, 4), (1, 6)):
        model = small_model(seed=seed, n_layer=L, n_embd=32, n_head=4, block_size=32).train()
        params = list(model.parameters())
        idx = torch.randint(0, model.config.vocab_size, (4, 32), generator=g)
        where = f"a {L}-layer GPT, idx of shape {tuple(idx.shape)}"
        expected, plain_bytes = _saved_activation_bytes(lambda: model(idx), params)
        weights = torch.randn(expected.shape, generator=g)
        ref_grads = _backward_grads((expected * weights).sum(), params)
        out, kept = _saved_activation_bytes(lambda: answer.call((model, idx.clone()), where), params)
        if out is None:
            return answer.remind()
        out = as_tensor(answer, out, where)
        if not close(out.detach(), expected.detach(), atol=atol):
            with torch.no_grad():
                hints = diagnose(out.detach(), _forward_mistakes(model, idx), lambda a, b: close(a, b, atol))
            raise mismatch(answer, out.detach(), expected.detach(), where, "model(idx)", hints[0] if hints else None,
                           atol)
        if not out.requires_grad:
            raise answer.fail(f"the logits carry no gradient on {where}: the forward ran without autograd "
                              f"(torch.no_grad?), so training could not learn from them")
        grads = _backward_grads((out * weights).sum(), params)  # .backward(): reentrant checkpoints refuse .grad()
        _same_gradients(answer, model, grads, ref_grads, where, atol)
        ratios.append(kept / plain_bytes)
        if kept > 0.6 * plain_bytes:
            raise answer.fail(f"on {where} autograd keeps {kept:,} bytes of activations for the backward pass, "
                              f"{kept / plain_bytes:.0%} of the plain forward's {plain_bytes:,}: nothing is "
                              f"recomputed.\n  Probably: wrap each block (or run of blocks) in "
                              f"torch.utils.checkpoint.checkpoint(..., use_reentrant=False), with autograd on")
    return answer.passed(f"gives model(idx)'s logits and gradients, keeping {max(ratios):.0%} or less of the "
                         f"activations (2 models)")
