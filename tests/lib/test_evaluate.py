"""mini_gpt.evaluate: bits per byte."""

import math

import numpy as np
import pytest
import torch

from mini_gpt.evaluate import bits_per_byte


def test_bits_per_byte_formula():
    assert bits_per_byte(1.5, 100, 100) == pytest.approx(1.5 / math.log(2))  # one byte per token: nats -> bits
    assert bits_per_byte(3.0, 100, 400) == pytest.approx(3.0 * 100 / (math.log(2) * 400))
    assert bits_per_byte(0, 10, 10) == 0.0
    assert bits_per_byte(math.log(2), 1, 1) == pytest.approx(1.0)  # a fair coin per byte


def test_bits_per_byte_compares_tokenizers():
    # the same total cost, spread over 4x fewer tokens of 4 bytes each: the same bits per byte
    assert bits_per_byte(1.2, 1000, 1000) == pytest.approx(bits_per_byte(4.8, 250, 1000))


def test_bits_per_byte_takes_tensors_and_numpy():
    assert bits_per_byte(torch.tensor(1.5), 4, 8) == pytest.approx(bits_per_byte(1.5, 4, 8))
    assert bits_per_byte(np.float32(1.5), np.int64(4), 8) == pytest.approx(bits_per_byte(1.5, 4, 8))
    assert isinstance(bits_per_byte(torch.tensor(1.5), 4, 8), float)


@pytest.mark.parametrize("args, name, error", [
    ((-0.1, 10, 10), "loss", ValueError),
    ((float("nan"), 10, 10), "loss", ValueError),
    ((float("inf"), 10, 10), "loss", ValueError),
    (("1.5", 10, 10), "loss", TypeError),
    ((True, 10, 10), "loss", TypeError),
    ((torch.tensor([1.0, 2.0]), 10, 10), "loss", TypeError),
    ((1.5, 0, 10), "n_tokens", ValueError),
    ((1.5, 10.0, 10), "n_tokens", TypeError),
    ((1.5, True, 10), "n_tokens", TypeError),
    ((1.5, 10, 0), "n_bytes", ValueError),
    ((1.5, 10, -5), "n_bytes", ValueError),
    ((1.5, 10, None), "n_bytes", TypeError),
])
def test_bits_per_byte_refuses_bad_input(args, name, error):
    with pytest.raises(error, match=name):
        bits_per_byte(*args)
