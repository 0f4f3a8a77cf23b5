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

A value of the wrong kind raises `WrongKindError`, which is a `TypeError` and a `ValueError` at
once: before these checks existed, some of the library's arguments raised one for it and some the
other, and code that catches either keeps working.

`Rule` keeps one argument's check as data, so that a config's field and the command-line flag that
sets it accept exactly the same values and describe them in the same words; `setting(...)`
declares a dataclass field with its rule and a one-line help, and `check_settings(obj)` checks them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "is_int", "is_number", "check_int", "check_number", "check_bool", "check_choice", "describe_range",
    "WrongKindError", "Rule", "setting", "check_settings",
]


class WrongKindError(TypeError, ValueError):
    """A value of the wrong kind: a str or None where a number goes, a float or a bool where an int goes."""


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
        raise _fail(name, what, value, WrongKindError)
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
        raise _fail(name, what, value, WrongKindError)
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
        raise _fail(name, "True or False", value, WrongKindError)
    return bool(value)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """`value` if it is one of `choices`; else a ValueError naming `name` and listing them."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # an unhashable value cannot be one of them
        ok = False
    if not ok:
        raise _fail(name, _one_of(choices), value, ValueError)
    return value


def _one_of(choices: Iterable[Any]) -> str:
    return "one of " + ", ".join(repr(c) for c in choices)



_KINDS = ("int", "number", "bool", "choice", "str")


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one argument may be, kept as data so that several places can check it and say it.

    kind:     "int", "number" (an int or a float, finite), "bool", "choice" (one of `choices`) or "str"
    min, max: the range of an int or a number, closed unless `min_open` / `max_open`
    optional: None is allowed too (it stands for a default worked out later)
    what:     the words for what is allowed (int, number, str), where kind and range do not say it well
    """

    kind: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    what: str | None = None

    def __post_init__(self) -> None:
        check_choice("Rule.kind", self.kind, _KINDS)
        object.__setattr__(self, "choices", tuple(self.choices))
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"Rule.choices must be given for kind 'choice' and only for it, got {self!r}")
        if self.kind == "int" and (self.min_open or self.max_open):
            raise ValueError(f"an int's range is closed (say min=1 rather than min=0 open), got {self!r}")

    def describe(self) -> str:
        """What is allowed, in the words of the error messages: 'an int >= 1', "one of 'a', 'b'", ..."""
        if self.what is not None and self.kind in ("int", "number", "str"):
            return self.what
        if self.kind == "int":
            return describe_range("an int", self.min, self.max)
        if self.kind == "number":
            return describe_range("a number", self.min, self.max, min_open=self.min_open, max_open=self.max_open)
        if self.kind == "bool":
            return "True or False"
        if self.kind == "choice":
            return _one_of(self.choices)
        return "a str"

    def check(self, name: str, value: Any) -> Any:
        """`value` (an int as a Python int, a number as a float) if it follows the rule; else a
        TypeError/ValueError naming `name`, as `check_int`, `check_number`, ... raise."""
        if value is None and self.optional:
            return None
        if self.kind == "int":
            return check_int(name, value, min=self.min, max=self.max, what=self.what)
        if self.kind == "number":
            return check_number(name, value, min=self.min, max=self.max, min_open=self.min_open,
                                max_open=self.max_open, what=self.what)
        if self.kind == "bool":
            return check_bool(name, value)
        if self.kind == "choice":
            return check_choice(name, value, self.choices)
        if not isinstance(value, str):
            raise _fail(name, self.describe(), value, WrongKindError)
        return value


def setting(default: Any, rule: Rule, help: str) -> Any:
    """A dataclass field whose metadata holds its `rule` and a one-line `help`: `check_settings`
    checks the rule, and a command line can make a flag of the field from the two."""
    return dataclasses.field(default=default, metadata={"rule": rule, "help": help})


def check_settings(obj: Any, rules: Mapping[str, Rule] | None = None) -> None:
    """Check fields of the dataclass `obj`: those named in `rules`, or else each one that has a
    rule (see `setting`). An error names the field as `ClassName.field`. A numpy scalar that
    passes is stored back as the Python int, float or bool it stands for, so the config stays
    JSON-able (numpy's ints come out of indexing); Python values are kept exactly as given."""
    if rules is None:
        rules = {f.name: f.metadata["rule"] for f in dataclasses.fields(obj) if "rule" in f.metadata}
    owner = type(obj).__name__
    for name, rule in rules.items():
        value = getattr(obj, name)
        checked = rule.check(f"{owner}.{name}", value)
        if isinstance(value, np.generic):
            object.__setattr__(obj, name, checked)  # also on a frozen dataclass: it is being made
