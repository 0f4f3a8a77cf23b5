"""Chapter 6 (sampling) exercise checks: each accepts a right answer, explains the usual wrong
ones, and reminds (rather than fails) when the answer still returns None."""


import pytest
import torch

from mini_gpt import course
from mini_gpt.course.sampling import sampling_probs
from mini_gpt.generate import apply_repetition_penalty, top_k_filter, top_p_filter

from check_helpers import fails, passes

NEG_INF = float("-inf")


CHECKS = [course.check_top_k_filter, course.check_top_p_filter, course.check_repetition_penalty,
          course.check_sampling_probs]


def test_checks_are_exported():
    for check in CHECKS:
        assert check.__name__ in course.__all__


# ---------------------------------------------------------------------------- top-k


def my_top_k(logits, k, *, strict=True, fill=NEG_INF, extra=0, largest=True, per_row=True):
    if per_row:
        kth = torch.topk(logits, k + extra, dim=-1, largest=largest).values[..., -1:]
    else:
        kth = torch.topk(logits.flatten(), k + extra, largest=largest).values[-1]
    if not largest:
        return logits.masked_fill(logits > kth, fill)
    return logits.masked_fill(logits < kth if strict else logits <= kth, fill)


def test_check_top_k_filter(capsys):
    passes(course.check_top_k_filter, my_top_k, capsys)
    passes(course.check_top_k_filter, top_k_filter, capsys)

    def by_sort(logits, k):  # another right answer: sort, keep the first k positions
        order = logits.argsort(dim=-1, descending=True)
        drop = torch.ones_like(logits, dtype=torch.bool)
        drop.scatter_(-1, order[:, :k], False)
        return logits.masked_fill(drop, NEG_INF)

    passes(course.check_top_k_filter, by_sort, capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda x, k: my_top_k(x, k, strict=False), "one token too few"),
        (lambda x, k: my_top_k(x, k, extra=1) if k < x.shape[-1] else x, "one token too many"),
        (lambda x, k: my_top_k(x, k, fill=0.0), "set to 0"),
        (lambda x, k: my_top_k(x, k, fill=-1e9), "large negative number"),
        (lambda x, k: my_top_k(x, k, largest=False), "k smallest"),
        (lambda x, k: my_top_k(x, k).softmax(-1), "probabilities"),
        (lambda x, k: my_top_k(x, k, per_row=False), "one threshold for the whole batch"),
        (lambda x, k: torch.topk(x, k, dim=-1).values, "only the kept tokens"),
        (lambda x, k: x, r"row 0 keeps 8 of its 8 tokens \(logits above -inf\); top_k_filter keeps 3\. "
                         r"Probably: nothing is ruled out"),
    ],
)
def test_check_top_k_filter_explains_mistakes(wrong, match):
    fails(course.check_top_k_filter, wrong, match)


# ---------------------------------------------------------------------------- top-p


def my_top_p(logits, p, *, before=True, scatter=True, descending=True, on_probs=True, fill=NEG_INF):
    sorted_logits, order = torch.sort(logits, descending=descending, dim=-1)
    probs = sorted_logits.softmax(-1) if on_probs else sorted_logits
    cum = probs.cumsum(-1)
    drop = (cum - probs >= p) if before else (cum > p)
    if scatter:
        drop = drop.scatter(-1, order, drop)
    return logits.masked_fill(drop, fill)


def test_check_top_p_filter(capsys):
    passes(course.check_top_p_filter, my_top_p, capsys)
    passes(course.check_top_p_filter, top_p_filter, capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda x, p: my_top_p(x, p, before=False), "the token that makes the mass reach p is dropped"),
        (lambda x, p: my_top_p(x, p, scatter=False), r"keeps 2 \(the same number, but not the same tokens\)\. "
                                                      r"Probably: the mask is still in sorted order"),
        (lambda x, p: my_top_p(x, p, descending=False), "descending"),
        (lambda x, p: my_top_p(x, p, on_probs=False), "adds up logits"),
        (lambda x, p: x.masked_fill(x.softmax(-1) < p, NEG_INF), "own probability is at least p"),
        (lambda x, p: my_top_p(x, p, fill=0.0), "set to 0"),
        (lambda x, p: my_top_p(x, p).softmax(-1), "probabilities"),
        (lambda x, p: x, r"row 0 keeps 5 of its 5 tokens .* top_p_filter keeps 2\. Probably: nothing is ruled out"),
    ],
)
def test_check_top_p_filter_explains_mistakes(wrong, match):
    fails(course.check_top_p_filter, wrong, match)


def test_check_top_p_names_the_worked_example():
    fails(course.check_top_p_filter, lambda x, p: my_top_p(x, p, before=False),
          r"probabilities are \[\[0\.05, 0\.5, 0\.1, 0\.2, 0\.15\], \[0\.15")


# ---------------------------------------------------------------------------- repetition penalty


def my_penalty(logits, seen, penalty):
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def test_check_repetition_penalty(capsys):
    passes(course.check_repetition_penalty, my_penalty, capsys)
    passes(course.check_repetition_penalty, apply_repetition_penalty, capsys)

    def in_place(logits, seen, penalty):  # another right answer, editing its own copy
        out = logits.clone()
        pos, neg = seen & (logits > 0), seen & (logits < 0)
        out[pos] /= penalty
        out[neg] *= penalty
        return out

    passes(course.check_repetition_penalty, in_place, capsys)


@pytest.mark.parametrize(
    "wrong, match",
    [
        (lambda x, s, r: torch.where(s, x / r, x), "multiply the negative ones"),
        (lambda x, s, r: torch.where(s, torch.where(x < 0, x / r, x * r), x), "swapped"),
        (lambda x, s, r: my_penalty(x, ~s, r), "not seen are penalised"),
        (lambda x, s, r: my_penalty(x, torch.ones_like(s), r), "every token is penalised"),
        (lambda x, s, r: torch.where(s, x - r, x), "subtracted"),
        (lambda x, s, r: x, "differs from apply_repetition_penalty by up to .* Probably: nothing changed"),
    ],
)
def test_check_repetition_penalty_explains_mistakes(wrong, match):
    fails(course.check_repetition_penalty, wrong, match)


# ---------------------------------------------------------------------------- the whole sampler


def my_probs(logits, temperature, top_k, top_p, *, temp="first", k_first=True, use_k=True, use_p=True,
             renormalise=True, as_logits=False):
    x = {"first": logits / temperature, "times": logits * temperature, "none": logits, "last": logits}[temp]
    filters = [("k", top_k), ("p", top_p)] if k_first else [("p", top_p), ("k", top_k)]
    for name, value in filters:
        if name == "k" and value is not None and use_k:
            x = my_top_k(x, value)
        if name == "p" and value is not None and use_p:
            x = my_top_p(x, value)
    if temp == "last":
        x = x / temperature
    if as_logits:
        return x
    if not renormalise:
        return (logits / temperature).softmax(-1) * torch.isfinite(x)
    return x.softmax(-1)


def test_check_sampling_probs(capsys):
    passes(course.check_sampling_probs, my_probs, capsys)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(as_logits=True), "these are logits"),
        (dict(temp="times"), "multiplied by the temperature"),
        (dict(temp="none"), "temperature is not applied"),
        (dict(temp="last"), "temperature comes after the filters"),
        (dict(k_first=False), "top-p is applied before top-k"),
        (dict(use_k=False), "top_k is not applied"),
        (dict(use_p=False), "top_p is not applied"),
        (dict(renormalise=False), "not renormalised"),
    ],
)
def test_check_sampling_probs_explains_mistakes(kwargs, match):
    fails(course.check_sampling_probs, lambda *a: my_probs(*a, **kwargs), match)


def test_check_sampling_probs_divided_probabilities():
    fails(course.check_sampling_probs, lambda x, t, k, p: x.softmax(-1) / t, "probabilities are divided")


def test_check_sampling_probs_reference_is_what_generate_samples_from():
    """The check's reference picks the same tokens as generate: sample with both from one seed."""
    from mini_gpt import generate

    model = course.small_model()
    idx = torch.tensor([[1, 2, 3]])
    settings = dict(temperature=0.8, top_k=20, top_p=0.7)
    out = generate(model, idx, 12, seed=5, **settings)
    g = torch.Generator().manual_seed(5)
    tokens = idx
    with torch.no_grad():
        for _ in range(12):
            probs = sampling_probs(model(tokens)[:, -1], settings["temperature"], settings["top_k"],
                                   settings["top_p"])
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=g)], dim=1)
    assert torch.equal(out, tokens)
