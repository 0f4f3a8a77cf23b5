"""The harness every exercise check runs on: call the reader's function on a few inputs, compare
with the library, diagnose the usual mistakes, and report in one voice.

A check prints one line and returns None, so a notebook cell shows only that line:

- `✓ my_fn matches ...` when the answer agrees on every input;
- `✎ my_fn returned None: write its body, then run this cell again.` when the function still
  returns None (an exercise not started yet): a reminder, not an error;
- otherwise an AssertionError `✗ my_fn: on <input> ...` that says what differs and, when the wrong
  result equals what a known mistake gives, `Probably: <what that mistake is>`.

Most checks are `run_check(fn, name, cases, reference=..., mistakes=..., ...)`: a list of `Case`s
(what the reader's function is called with, and how messages name that input), the reference
computing the right answer from the same arguments, and the known mistakes as
`(explanation, what it gives)` pairs. The hooks (`convert`, `validate`, `agree`, `report`, `call`)
let a check change one step of that loop. The checks whose answers are stateful or are not a
value to compare (crash-safe writes, a resumed training, five AdamW updates in a row) use the same
pieces (`Answer`, `mismatch`, `diagnose`, the converters) in their own loop.
"""

from __future__ import annotations

import contextlib
import functools
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Case", "Mistake", "Answer", "run_check", "as_tensor", "whole_number", "is_count", "as_int", "as_float",
           "close", "max_diff", "diagnose", "probably", "mismatch", "random_generator", "keeps_rng"]

# A known wrong answer: what the mistake is, told to the reader, and a function computing what
# that mistake gives on the current input (it may raise: then it is not what was done)
Mistake = tuple[str, Callable[[], Any]]


@dataclass(frozen=True)
class Case:
    """One input of a check: the reader's function is called with `args` (tensors and lists
    copied, so it cannot change the check's own), and messages name it as `where`."""

    where: str
    args: tuple


class Answer:
    """The reader's function under a check `check`: calling it, and saying how it did."""

    def __init__(self, fn: Any, check: str) -> None:
        if not callable(fn):
            raise TypeError(f"{check} takes your function itself, e.g. {check}(my_function), got {type(fn).__name__}")
        self.fn = fn
        self.name = getattr(fn, "__name__", "your function")

    def call(self, args: tuple, where: str) -> Any:
        """Run the reader's function; an exception in it becomes an AssertionError saying on what input."""
        try:
            return self.fn(*args)
        except Exception as exc:  # the reader's code: report it with the input that triggered it
            raise self.fail(f"raised {type(exc).__name__}: {exc}\n  (on {where})") from exc

    def fail(self, message: str) -> AssertionError:
        """The error to raise: `✗ name: message`, long lines wrapped (a notebook shows them without
        wrapping), tensor printouts kept as they are."""
        lines = f"\u2717 {self.name}: {message}".split("\n")
        wrapped = [textwrap.fill(line, 90, subsequent_indent="  ", break_on_hyphens=False) if len(line) > 90
                   else line for line in lines]
        return AssertionError("\n".join(wrapped))

    def remind(self, what: str = "returned None") -> None:
        print(f"\u270e {self.name} {what}: write its body, then run this cell again.")

    def passed(self, what: str) -> None:
        print(f"\u2713 {self.name} {what}")


# ---------------------------------------------------------------------------- the answer's form


def as_tensor(answer: Answer, out: Any, where: str) -> torch.Tensor:
    """The answer as a tensor (a list or a number is converted); a tuple or a non-number is refused."""
    if isinstance(out, tuple):
        raise answer.fail(f"returned a tuple of {len(out)} items on {where}; return one tensor")
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError):
            raise answer.fail(f"returned {type(out).__name__} on {where}; return a torch.Tensor") from None
    return out


def whole_number(out: Any) -> Any:
    """`out` with a one-element tensor read out and a whole float made an int: an int (not a bool)
    when the answer is a count, something else to show the reader when it is not."""
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, float) and out.is_integer():
        out = int(out)
    return out


def is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def as_int(answer: Answer, out: Any, where: str) -> int:
    """The answer as an int (see `whole_number`)."""
    out = whole_number(out)
    if not is_count(out):
        raise answer.fail(f"returned {out!r} for {where}; return an int")
    return out


def as_float(answer: Answer, out: Any, where: str) -> float:
    """The answer as a float: a one-element tensor or any real number."""
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            raise answer.fail(f"returned a tensor of shape {tuple(out.shape)} on {where}; return one number")
        out = out.item()
    if isinstance(out, (bool, str, bytes)):
        raise answer.fail(f"returned {out!r} on {where}; return a number")
    try:
        return float(out)
    except (TypeError, ValueError):
        raise answer.fail(f"returned {type(out).__name__} on {where}; return a number (a float)") from None


# ---------------------------------------------------------------------------- comparing and explaining


def close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 1e-4) -> bool:
    """Same shape and equal within atol + rtol * |b| (in float64; NaN equals NaN)."""
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a - b|: 0 where both hold the same value (the same infinity too), inf where
    only one is infinite or NaN (nan_to_num alone would report an infinity as 1.8e+308)."""
    a, b = a.double(), b.double()
    diff = (a - b).abs().nan_to_num(nan=math.inf, posinf=math.inf)
    return float(torch.where(a == b, 0.0, diff).max()) if diff.numel() else 0.0


def diagnose(out: Any, mistakes: Iterable[Mistake], agree: Callable[[Any, Any], bool]) -> list[str]:
    """The explanations of the known mistakes whose result agrees with `out`, in order, each once."""
    found: list[str] = []
    for explanation, make in mistakes:
        try:
            wrong = make()
        except Exception:  # a mistake that cannot be computed here cannot be what was done
            continue
        if agree(out, wrong) and explanation not in found:
            found.append(explanation)
    return found


def probably(hints: Sequence[str] | str | None) -> str:
    """The end of a failure message naming the likely mistake(s): '' when none is known."""
    if isinstance(hints, str):
        hints = [hints]
    if not hints:
        return ""
    if len(hints) == 1:
        return f".\n  Probably: {hints[0]}"
    return ".\n  Probably one of these:" + "".join(f"\n  - {h}" for h in hints)


def mismatch(answer: Answer, out: torch.Tensor, expected: torch.Tensor, where: str, against: str,
             hint: str | None, atol: float) -> AssertionError:
    """The failure for a tensor that differs from the reference `against`: its shape, or by how much."""
    if out.shape != expected.shape:
        msg = f"on {where} the result has shape {tuple(out.shape)}, but {against} gives {tuple(expected.shape)}"
    else:
        msg = f"on {where} the result differs from {against} by up to {max_diff(out, expected):.3g} (allowed: {atol:g})"
    return answer.fail(msg + probably(hint))


# ---------------------------------------------------------------------------- the loop


def _fresh(args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else list(a) if isinstance(a, list) else a for a in args)


def run_check(
    fn: Any,
    check: str,
    cases: Iterable[Case],
    *,
    reference: Callable[..., Any],
    passed: str,
    against: str = "",
    atol: float = 1e-5,
    mistakes: Callable[..., Iterable[Mistake]] = lambda *args: (),
    convert: Callable[[Answer, Any, str], Any] = as_tensor,
    validate: Callable[[Answer, Any, Any, Case], None] | None = None,
    agree: Callable[[Any, Any], bool] | None = None,
    report: Callable[[Answer, Any, Any, Case, list[str]], AssertionError] | None = None,
    call: Callable[[Answer, Case], Any] | None = None,
    no_grad: bool = False,
) -> None:
    """Run the check `check` of the reader's `fn` on every case, in order; print its ✓ line
    (`passed` says what it matched) or the reminder, or raise at the first case it gets wrong.

    For each case: `call(answer, case)` (default: fn on copies of case.args) -> None ends the
    check with the reminder; `convert(answer, out, where)` turns the answer into what is compared
    (default `as_tensor`; tensors are then detached); `reference(*case.args)` computes the right
    answer (after fn ran, so it sees what fn left behind); `validate(answer, out, expected, case)`
    may reject the answer's form (a shape, a dtype) with its own message; `agree(out, expected)`
    (default: `close` within `atol`) accepts it. A disagreement is explained by the known
    `mistakes(*case.args)` whose result also agrees with the answer, and reported by
    `report(answer, out, expected, case, explanations)` (default: `mismatch` against the
    reference named `against`, with the first explanation). `no_grad` runs it all without autograd.
    """
    answer = Answer(fn, check)
    agree = agree or (lambda a, b: close(a, b, atol))
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for case in cases:
            out = call(answer, case) if call is not None else answer.call(_fresh(case.args), case.where)
            if out is None:
                return answer.remind()
            out = convert(answer, out, case.where)
            if isinstance(out, torch.Tensor):
                out = out.detach()
            expected = reference(*case.args)
            if validate is not None:
                validate(answer, out, expected, case)
            if agree(out, expected):
                continue
            explanations = diagnose(out, mistakes(*case.args), agree)
            if report is not None:
                raise report(answer, out, expected, case, explanations)
            raise mismatch(answer, out, expected, case.where, against, explanations[0] if explanations else None, atol)
    return answer.passed(passed)


# ---------------------------------------------------------------------------- inputs


def random_generator(seed: int) -> torch.Generator:
    """A generator of its own, so a check's inputs never depend on (or move) the global random state."""
    return torch.Generator().manual_seed(seed)


def keeps_rng(check: Callable) -> Callable:
    """Run a check without touching the global random state: building layers (and the reader's
    own nn.Linear) draws random numbers, and a notebook's later cells must not depend on a check."""

    @functools.wraps(check)
    def wrapper(fn):
        with torch.random.fork_rng(devices=[]):
            return check(fn)

    return wrapper
