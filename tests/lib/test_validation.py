import dataclasses
import math

import numpy as np
import pytest

from mini_gpt.validation import (
    Rule,
    WrongKindError,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_settings,
    describe_range,
    is_int,
    is_number,
    setting,
)


def test_is_int_and_is_number():
    for x in (0, -3, 10**20, np.int64(5), np.int32(-1), np.uint8(7)):
        assert is_int(x) and is_number(x)
    for x in (1.0, 2.5, np.float32(1), np.float64(0)):
        assert not is_int(x) and is_number(x)
    for x in (True, False, np.bool_(True), "3", None, [1], 1j):
        assert not is_int(x) and not is_number(x)


def test_check_int_accepts_ints_and_numpy_ints_as_python_ints():
    assert check_int("n", 3, min=1) == 3
    for x in (np.int64(7), np.int32(7), np.uint16(7)):
        out = check_int("n", x, min=1, max=7)
        assert out == 7 and type(out) is int


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), 2.0, 2.5, "3", None, float("nan")])
def test_check_int_rejects_other_kinds_naming_the_argument(bad):
    with pytest.raises(TypeError, match=r"^n_layer must be an int >= 1, got ") as info:
        check_int("n_layer", bad, min=1)
    # the wrong kind is a TypeError and a ValueError at once: callers may catch either
    assert isinstance(info.value, ValueError) and isinstance(info.value, WrongKindError)


def test_check_int_range():
    with pytest.raises(ValueError, match=r"^n_layer must be an int >= 1, got 0$") as info:
        check_int("n_layer", 0, min=1)
    assert not isinstance(info.value, TypeError)  # a right kind out of range is a plain ValueError
    with pytest.raises(ValueError, match=r"^layer must be an int in \[0, 3\], got 4$"):
        check_int("layer", 4, min=0, max=3)
    with pytest.raises(ValueError, match=r"^k must be an int <= 5, got 6$"):
        check_int("k", 6, max=5)
    with pytest.raises(ValueError, match=r"^n_embd must be a multiple of n_head, got 7$"):
        check_int("n_embd", 7, min=8, what="a multiple of n_head")


def test_check_number_accepts_ints_floats_and_numpy_as_floats():
    for x in (1, 0.5, np.float32(0.5), np.float64(2), np.int64(3)):
        out = check_number("lr", x, min=0.0, min_open=True)
        assert out == float(x) and type(out) is float


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.inf])
def test_check_number_rejects_nan_and_infinities(bad):
    with pytest.raises(ValueError, match=r"^temperature must be a number > 0, got "):
        check_number("temperature", bad, min=0.0, min_open=True)


def test_check_number_infinity_only_when_asked_and_never_nan():
    assert check_number("limit", float("inf"), min=0.0, finite=False) == math.inf
    with pytest.raises(ValueError, match="limit"):
        check_number("limit", float("nan"), finite=False)


@pytest.mark.parametrize("bad", [True, "0.1", None, [0.1], 1j])
def test_check_number_rejects_other_kinds(bad):
    with pytest.raises(TypeError, match=r"^dropout must be a number in \[0, 1\), got ") as info:
        check_number("dropout", bad, min=0.0, max=1.0, max_open=True)
    assert isinstance(info.value, ValueError)


def test_check_number_open_and_closed_bounds():
    assert check_number("p", 1.0, min=0.0, max=1.0, min_open=True) == 1.0
    assert check_number("p", 0.0, min=0.0, max=1.0, max_open=True) == 0.0
    with pytest.raises(ValueError, match=r"^top_p must be a number in \(0, 1\], got 0.0$"):
        check_number("top_p", 0.0, min=0.0, max=1.0, min_open=True)
    with pytest.raises(ValueError, match=r"^min_p must be a number in \[0, 1\), got 1.0$"):
        check_number("min_p", 1.0, min=0.0, max=1.0, max_open=True)
    with pytest.raises(ValueError, match=r"^beta must be a number < 1, got 1.5$"):
        check_number("beta", 1.5, max=1.0, max_open=True)


def test_check_bool():
    assert check_bool("bias", True) is True and check_bool("bias", np.bool_(False)) is False
    for bad in (1, 0, "True", None, 1.0):
        with pytest.raises(TypeError, match=r"^bias must be True or False, got "):
            check_bool("bias", bad)


def test_check_choice():
    assert check_choice("dtype", "float32", ("auto", "float32")) == "float32"
    with pytest.raises(ValueError, match=r"^dtype must be one of 'auto', 'float32', got 'float8'$"):
        check_choice("dtype", "float8", ("auto", "float32"))
    with pytest.raises(ValueError, match=r"^impl must be one of 'sdpa', 'explicit', got \['sdpa'\]$"):
        check_choice("impl", ["sdpa"], ["sdpa", "explicit"])  # unhashable: never one of them
    assert check_choice("split", "val", (s for s in ("train", "val"))) == "val"  # any iterable of choices


def test_describe_range():
    assert describe_range("an int", 1) == "an int >= 1"
    assert describe_range("an int", 0, 3) == "an int in [0, 3]"
    assert describe_range("a number", 0, 1, min_open=True) == "a number in (0, 1]"
    assert describe_range("a number", 0, min_open=True) == "a number > 0"
    assert describe_range("a number", max=1, max_open=True) == "a number < 1"
    assert describe_range("a number", 1e-5) == "a number >= 1e-05"
    assert describe_range("a str") == "a str"


def test_rule_says_and_checks_what_the_check_functions_do():
    cases = [
        (Rule("int", min=1), "an int >= 1", 0, lambda v: check_int("x", v, min=1)),
        (Rule("number", min=0.0, max=1.0, max_open=True), "a number in [0, 1)", 1.0,
         lambda v: check_number("x", v, min=0.0, max=1.0, max_open=True)),
        (Rule("bool"), "True or False", 1, lambda v: check_bool("x", v)),
        (Rule("choice", choices=("a", "b")), "one of 'a', 'b'", "c", lambda v: check_choice("x", v, ("a", "b"))),
    ]
    for rule, words, bad, check in cases:
        assert rule.describe() == words
        with pytest.raises((TypeError, ValueError)) as ours:
            rule.check("x", bad)
        with pytest.raises((TypeError, ValueError)) as theirs:
            check(bad)
        assert str(ours.value) == str(theirs.value) and type(ours.value) is type(theirs.value)
        assert words in str(ours.value)


def test_rule_optional_str_and_what():
    assert Rule("int", min=1, optional=True).check("block_size", None) is None
    with pytest.raises(TypeError, match="block_size must be an int >= 1, got None"):
        Rule("int", min=1).check("block_size", None)
    device = Rule("str", what="a device name")
    assert device.check("device", "cpu") == "cpu" and device.describe() == "a device name"
    with pytest.raises(TypeError, match="^device must be a device name, got 3$"):
        device.check("device", 3)
    assert Rule("str").describe() == "a str"


def test_bad_rules_fail_when_made():
    with pytest.raises(ValueError, match="Rule.kind must be one of"):
        Rule("float")
    with pytest.raises(ValueError, match="choices"):
        Rule("choice")
    with pytest.raises(ValueError, match="choices"):
        Rule("int", choices=(1, 2))
    with pytest.raises(ValueError, match="closed"):
        Rule("int", min=0, min_open=True)


@dataclasses.dataclass
class Settings:
    steps: int = setting(10, Rule("int", min=1), "how many steps")
    rate: float = setting(0.5, Rule("number", min=0.0), "how fast")
    name: str = "free"  # no rule: not checked

    def __post_init__(self):
        check_settings(self)


def test_settings_carry_rule_and_help_and_are_checked_by_name():
    steps = dataclasses.fields(Settings)[0]
    assert steps.metadata["help"] == "how many steps" and steps.metadata["rule"] == Rule("int", min=1)
    assert Settings().steps == 10 and Settings(name=3).name == 3
    with pytest.raises(ValueError, match=r"^Settings\.steps must be an int >= 1, got 0$"):
        Settings(steps=0)
    with pytest.raises(TypeError, match=r"^Settings\.rate must be a number >= 0, got '1'$"):
        Settings(rate="1")


def test_check_settings_stores_numpy_scalars_as_python_values_and_keeps_python_ones():
    s = Settings(steps=np.int64(4), rate=np.float32(0.25))
    assert type(s.steps) is int and type(s.rate) is float and (s.steps, s.rate) == (4, 0.25)
    assert type(Settings(rate=1).rate) is int  # a Python int stays as given (its repr, its JSON)


def test_check_settings_with_rules_of_its_own():
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        n: int

        def __post_init__(self):
            check_settings(self, {"n": Rule("int", min=1)})

    assert type(Frozen(np.int16(2)).n) is int
    with pytest.raises(ValueError, match=r"^Frozen\.n must be an int >= 1, got -1$"):
        Frozen(-1)
