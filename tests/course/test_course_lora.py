"""Chapter 7's exercise checks (LoRA): each accepts a right answer, names the usual mistakes, and
treats an unanswered exercise as a reminder."""

import copy

import pytest
import torch
from torch import nn

from mini_gpt import GPT, course
from mini_gpt.lora import LoRALinear, add_lora, trainable_parameters

from check_helpers import fails, passes

CHECKS = [course.check_lora_forward, course.check_lora_param_count, course.check_merge]


def test_checks_are_exported():
    for name in ("check_lora_forward", "check_lora_param_count", "check_merge"):
        assert name in course.__all__


# ---------------------------------------------------------------------------- the forward pass


def lora_forward(x, base, A, B, alpha):
    r = A.shape[0]
    return base(x) + (alpha / r) * (x @ A.T @ B.T)


def test_check_lora_forward_accepts_the_formula_and_the_library(capsys):
    out = passes(course.check_lora_forward, lora_forward, capsys)
    assert "LoRALinear" in out

    def with_the_library(x, base, A, B, alpha):
        layer = LoRALinear(copy.deepcopy(base), rank=A.shape[0], alpha=alpha)
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
        return layer(x)

    passes(course.check_lora_forward, with_the_library, capsys)


@pytest.mark.parametrize("wrong, match", [
    (lambda x, base, A, B, alpha: base(x) + alpha * (x @ A.T @ B.T), r"scaled by alpha; LoRA scales it by alpha / r"),
    (lambda x, base, A, B, alpha: base(x) + (A.shape[0] / alpha) * (x @ A.T @ B.T), r"scaled by r / alpha"),
    (lambda x, base, A, B, alpha: base(x) + x @ A.T @ B.T, "not scaled"),
    (lambda x, base, A, B, alpha: base(x), "low-rank update .* is missing"),
    (lambda x, base, A, B, alpha: alpha / A.shape[0] * (x @ A.T @ B.T), r"frozen path W x \+ b is missing"),
    (lambda x, base, A, B, alpha: x @ base.weight.T + alpha / A.shape[0] * (x @ A.T @ B.T), "bias .* is missing"),
    (lambda x, base, A, B, alpha: base(x) - alpha / A.shape[0] * (x @ A.T @ B.T), "subtracted"),
    (lambda x, base, A, B, alpha: base(x) + alpha / A.shape[0] * (x @ (B @ A)), "transposed"),
    (lambda x, base, A, B, alpha: (base(x) + alpha / A.shape[0] * (x @ A.T @ B.T))[..., :-1], "shape"),
])
def test_check_lora_forward_names_the_mistake(wrong, match):
    fails(course.check_lora_forward, wrong, match)


def test_check_lora_forward_reports_an_exception_with_its_input():
    def shapes_wrong(x, base, A, B, alpha):
        return base(x) + alpha / A.shape[0] * (x @ A @ B)  # A is (r, in): x @ A does not fit

    fails(course.check_lora_forward, shapes_wrong, r"raised RuntimeError: .*\(on x of shape \(2, 5, 16\)")


# ---------------------------------------------------------------------------- counting


def lora_count(config, rank, targets):
    C = config.n_embd
    shapes = {"attn": [(C, 3 * C), (C, C)], "mlp": [(C, 4 * C), (4 * C, C)]}
    layers = shapes["attn"] + shapes["mlp"] if targets == "all" else shapes[targets]
    return config.n_layer * sum(rank * (n_in + n_out) for n_in, n_out in layers)


def test_check_lora_param_count_accepts_the_formula_and_the_library(capsys):
    passes(course.check_lora_param_count, lora_count, capsys)

    def by_building(config, rank, targets):
        with torch.device("meta"):
            return trainable_parameters(add_lora(GPT(config), rank=rank, targets=targets))[0]

    passes(course.check_lora_param_count, by_building, capsys)
    passes(course.check_lora_param_count, lambda c, r, t: float(lora_count(c, r, t)), capsys)  # 1.2e5 as a float


def _count_with(size=None, c_attn_out=3, mlp_width=4, per_block=False, targets_as=None):
    """lora_count with one deliberate mistake."""
    def count(config, rank, targets):
        C = config.n_embd
        shapes = {"attn": [(C, c_attn_out * C), (C, C)], "mlp": [(C, mlp_width * C), (mlp_width * C, C)]}
        t = targets_as or targets
        layers = shapes["attn"] + shapes["mlp"] if t == "all" else shapes[t]
        one = sum((size or (lambda i, o: rank * (i + o)))(i, o) for i, o in layers)
        return one if per_block else config.n_layer * one
    return count


@pytest.mark.parametrize("wrong, match", [
    (_count_with(size=lambda i, o: i * o), "counts the full matrices"),
    (_count_with(c_attn_out=1), r"c_attn makes q, k and v at once"),
    (_count_with(per_block=True), "one block's count"),
    (_count_with(targets_as="all"), "count for targets=.all.; targets=.attn. adapts attention.s c_attn and c_proj only"),
    (_count_with(targets_as="attn"), "count for targets=.attn.; targets=.mlp. adapts the MLP.s c_fc and c_proj only"),
    (lambda config, rank, targets: GPT(config).num_parameters() if config.n_embd < 200 else 0,
     "counts the frozen base model"),
    (lambda config, rank, targets: "many", r"return an int"),
    (lambda config, rank, targets: lora_count(config, rank, targets) + 1, r"you count 24,577 .* leaves 24,576$"),
])
def test_check_lora_param_count_names_the_mistake(wrong, match):
    fails(course.check_lora_param_count, wrong, match)


@pytest.mark.parametrize("wrong, match", [
    (_count_with(size=lambda i, o: 8 * i), r"only A \(r x in\) is counted"),
    (_count_with(size=lambda i, o: 8 * o), r"only B \(out x r\) is counted"),
    (_count_with(size=lambda i, o: 8 * i * o), "times r"),
])
def test_check_lora_param_count_names_half_counts(wrong, match):
    # the first case has rank 8, which these wrong answers hard-code
    fails(course.check_lora_param_count, wrong, match)


def test_check_lora_param_count_names_the_mlp_width():
    def narrow_mlp(config, rank, targets):
        return _count_with(mlp_width=1)(config, rank, targets)

    # passes the first case (attention only), fails on the MLP one
    fails(course.check_lora_param_count, narrow_mlp, "the MLP is 4x wider")


# ---------------------------------------------------------------------------- merging


def merge(layer):
    merged = nn.Linear(layer.in_features, layer.out_features)
    with torch.no_grad():
        merged.weight.copy_(layer.base.weight + (layer.alpha / layer.rank) * layer.lora_B @ layer.lora_A)
        merged.bias.copy_(layer.base.bias)
    return merged


def test_check_merge_accepts_a_new_linear_and_the_library(capsys):
    passes(course.check_merge, merge, capsys)
    passes(course.check_merge, lambda layer: layer.merged(), capsys)


def _merge_with(weight, bias="copy"):
    def wrong(layer):
        W, A, B, s = layer.base.weight, layer.lora_A, layer.lora_B, layer.alpha / layer.rank
        merged = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None)
        with torch.no_grad():
            merged.weight.copy_(weight(W, A, B, s, layer))
            if bias == "copy":
                merged.bias.copy_(layer.base.bias)
        return merged
    return wrong


@pytest.mark.parametrize("wrong, match", [
    (_merge_with(lambda W, A, B, s, layer: W + layer.alpha * B @ A), r"scaled by alpha; the merged weight"),
    (_merge_with(lambda W, A, B, s, layer: W + B @ A), "not scaled"),
    (_merge_with(lambda W, A, B, s, layer: W + (layer.rank / layer.alpha) * B @ A), "scaled by r / alpha"),
    (_merge_with(lambda W, A, B, s, layer: W), "the weight is W alone"),
    (_merge_with(lambda W, A, B, s, layer: s * B @ A), "the weight is the update alone"),
    (_merge_with(lambda W, A, B, s, layer: W - s * B @ A), "subtracted"),
    (_merge_with(lambda W, A, B, s, layer: W + s * (B @ A).T), "transposed"),
    (_merge_with(lambda W, A, B, s, layer: W + s * B @ A, bias=None), "has no bias"),
    (_merge_with(lambda W, A, B, s, layer: W + s * B @ A, bias="random"), "random bias"),
    (lambda layer: layer, "returned a LoRALinear"),
    (lambda layer: layer.base.weight + layer.delta_weight(), "returned a tensor"),
    (lambda layer: nn.Sequential(layer.merged()), "returned Sequential"),
])
def test_check_merge_names_the_mistake(wrong, match):
    fails(course.check_merge, wrong, match)


def test_check_merge_refuses_changing_the_layer_in_place():
    def in_place(layer):
        with torch.no_grad():
            layer.base.weight += layer.delta_weight()
        return layer.base

    fails(course.check_merge, in_place, "changed layer.base's weight or bias in place")


def test_check_merge_reports_the_base_returned_as_is():
    fails(course.check_merge, lambda layer: layer.base, "the weight is W alone")


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    course.check_lora_forward(lora_forward)
    course.check_lora_param_count(lora_count)
    course.check_merge(merge)
    assert torch.equal(torch.random.get_rng_state(), before)
