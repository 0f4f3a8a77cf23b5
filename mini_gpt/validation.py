"""The library's argument checks, in one place.

Every public function of `mini_gpt` checks what the user passed where the user called it and
raises a `ValueError` (a value out of range) or `TypeError` (a value of the wrong kind) whose
message names the argument, says what is allowed, and shows what was given:

    >>> check_int("n_layer", 0, min=1)
    Traceback (most recent call last):
    ...
    ValueError: n_layer must be an int >= 1, got 0

`bool` is not accepted where a number is asked for (`True` is an `int` to Python, but a flag
passed as a size is a mistake), and numpy's integers count as ints (they come out of indexing).
`what` overrides the description of what is allowed when a plain range does not say it well
("a multiple of n_head", "the id of a token in the vocabulary").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_bool", "check_choice", "describe_range"]


def is_int(x: Any) -> bool:
    """An int or a numpy integer, and not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_number(x: Any) -> bool:
    """An int or a float (numpy's too), and not a bool."""
    return is_int(x) or (isinstance(x, (float, np.floating)))


def describe_range(kind: str, min: float | None = None, max: float | None = None, *,
                   min_open: bool = False, max_open: bool = False) -> str:
    """'an int >= 1', 'a number in (0, 1]', 'a number > 0', ... for error messages."""
    lo = None if min is None else ("(" if min_open else "[") + f"{min:g}"
    hi = None if max is None else f"{max:g}" + (")" if max_open else "]")
    if lo and hi:
        return f"{kind} in {lo}, {hi}"
    if lo:
        return f"{kind} {'>' if min_open else '>='} {min:g}"
    if hi:
        return f"{kind} {'<' if max_open else '<='} {max:g}"
    return kind


def _fail(name: str, what: str, value: Any, error: type[Exception]) -> Exception:
    return error(f"{name} must be {what}, got {value!r}")


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None,
              what: str | None = None) -> int:
    """`value` as a Python int, if it is an int within [min, max]; else a TypeError/ValueError naming `name`."""
    what = what or describe_range("an int", min, max)
    if not is_int(value):
        raise _fail(name, what, value, TypeError if not is_number(value) else ValueError)
    if (min is not None and value < min) or (max is not None and value > max):
        raise _fail(name, what, value, ValueError)
    return int(value)


def check_number(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False, finite: bool = True,
                 what: str | None = None) -> float:
    """`value` as a float, if it is a real number in the given range (closed unless `*_open`),
    finite unless `finite=False`; else a TypeError/ValueError naming `name`."""
    what = what or describe_range("a number", min, max, min_open=min_open, max_open=max_open)
    if not is_number(value):
        raise _fail(name, what, value, TypeError)
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise _fail(name, what, value, ValueError)
    if min is not None and (v <= min if min_open else v < min):
        raise _fail(name, what, value, ValueError)
    if max is not None and (v >= max if max_open else v > max):
        raise _fail(name, what, value, ValueError)
    return v


def check_bool(name: str, value: Any) -> bool:
    """`value` if it is True or False (not 0/1, not a string); else a TypeError naming `name`."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, "True or False", value, TypeError)
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """`value` if it is one of `choices`; else a ValueError naming `name` and listing them."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # an unhashable value cannot be one of them
        ok = False
    if not ok:
        raise _fail(name, "one of " + ", ".join(repr(c) for c in choices), value, ValueError)
    return value
