"""What the tests of `mini_gpt.course`'s exercise checks share: run a check on an answer and
assert it accepts it (one ✓ line) or rejects it with a message that explains the mistake."""

import re

import pytest


def passes(check, fn, capsys):
    """The check accepts fn: it returns None and prints one line starting with ✓."""
    assert check(fn) is None
    out = capsys.readouterr().out
    assert out.startswith("\u2713 "), out
    return out


def fails(check, fn, match):
    """The check rejects fn; its message (long lines wrapped for notebooks, compared here
    with all whitespace collapsed to single spaces) matches the regex `match`."""
    with pytest.raises(AssertionError) as info:
        check(fn)
    message = str(info.value)
    assert message.startswith("\u2717 ")
    assert all(len(line) <= 90 for line in message.splitlines() if not line.startswith(("tensor", " "))), message
    flat = " ".join(message.split())
    assert re.search(match, flat), f"{match!r} not in {flat!r}"
    return message
