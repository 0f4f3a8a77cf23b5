"""The LoRA chapter's exercises: the forward pass of an adapted layer, counting what trains after
`add_lora`, and merging the update into the frozen weight."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import GPTConfig
from ..lora import LoRALinear, add_lora, trainable_parameters
from ..model import GPT
from .checking import Answer, Case, as_int, close, diagnose, keeps_rng, mismatch, probably, random_generator, run_check

__all__ = ["check_lora_forward", "check_lora_param_count", "check_merge"]


def _lora_inputs(seed: int) -> list[tuple[str, torch.Tensor, nn.Linear, torch.Tensor, torch.Tensor, float]]:
    """(where, x, base nn.Linear, A (r, in), B (out, r), alpha), with B != 0 so the update shows.

    The square layer comes first: there a transposed update still has the right shape, so the
    mistake can be named instead of ending in a shape error. alpha / r differs from alpha, r / alpha
    and 1 in every case, so each wrong scale is told apart."""
    g = random_generator(seed)
    inputs = []
    for n_in, n_out, r, alpha in ((16, 16, 2, 6.0), (12, 20, 4, 8.0), (10, 6, 3, 1.5)):
        base = nn.Linear(n_in, n_out)
        with torch.no_grad():
            base.weight.copy_(0.3 * torch.randn(n_out, n_in, generator=g))
            base.bias.copy_(0.3 * torch.randn(n_out, generator=g))
        base.requires_grad_(False)
        A = 0.3 * torch.randn(r, n_in, generator=g)
        B = 0.3 * torch.randn(n_out, r, generator=g)
        x = torch.randn(2, 5, n_in, generator=g)
        where = f"x of shape {tuple(x.shape)}, nn.Linear({n_in}, {n_out}), rank {r}, alpha {alpha:g}"
        inputs.append((where, x, base, A, B, alpha))
    return inputs


def _library_lora_layer(base: nn.Linear, A: torch.Tensor, B: torch.Tensor, alpha: float) -> LoRALinear:
    """mini_gpt's LoRALinear around a copy of `base`, holding exactly A and B."""
    layer = LoRALinear(copy.deepcopy(base), rank=A.shape[0], alpha=alpha)
    with torch.no_grad():
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer.eval()


# ---------------------------------------------------------------------------- the forward pass


def _forward_mistakes(x, base, A, B, alpha):
    r = A.shape[0]
    W, b = base.weight, base.bias
    frozen = x @ W.T + b  # (..., out)
    update = x @ A.T @ B.T  # (..., out): B A x, not yet scaled
    return [
        (f"the update is scaled by alpha; LoRA scales it by alpha / r (here {alpha:g} / {r})",
         lambda: frozen + alpha * update),
        (f"the update is scaled by r / alpha; the scale is alpha / r (here {alpha:g} / {r})",
         lambda: frozen + (r / alpha) * update),
        (f"the update is not scaled: multiply B A x by alpha / r (here {alpha:g} / {r})", lambda: frozen + update),
        ("only the frozen layer: the low-rank update (alpha / r) B A x is missing", lambda: frozen),
        ("the frozen path W x + b is missing: the layer adds the update to base(x)", lambda: (alpha / r) * update),
        ("the bias of the frozen layer is missing: base(x) = x @ W.T + b", lambda: x @ W.T + (alpha / r) * update),
        ("the update is subtracted: y = W x + b + (alpha / r) B A x", lambda: frozen - (alpha / r) * update),
        ("the update is transposed: B A is (out, in) like W, so apply it as x @ (B @ A).T = x @ A.T @ B.T",
         lambda: frozen + (alpha / r) * (x @ (B @ A))),
    ]


@keeps_rng
def check_lora_forward(fn: Callable[..., torch.Tensor]) -> None:
    """fn(x (..., in), base, A (r, in), B (out, r), alpha) -> (..., out): a LoRA layer's output
    W x + b + (alpha / r) B A x, where `base` is the frozen nn.Linear (weight W, bias b) and
    r = A.shape[0]. Compared with `mini_gpt.lora.LoRALinear` holding the same A and B."""
    cases = [Case(where, (x, base, A, B, alpha)) for where, x, base, A, B, alpha in _lora_inputs(70)]
    run_check(fn, "check_lora_forward", cases,
              reference=lambda x, base, A, B, alpha: _library_lora_layer(base, A, B, alpha)(x),
              against="mini_gpt.lora.LoRALinear", atol=1e-5, mistakes=_forward_mistakes, no_grad=True,
              passed="matches mini_gpt.lora.LoRALinear on 3 layers (ranks 2 to 4)")


# ---------------------------------------------------------------------------- counting what trains

_TARGET_WORDS = {
    "attn": "attention's c_attn and c_proj only",
    "mlp": "the MLP's c_fc and c_proj only",
    "all": "attention's c_attn and c_proj and the MLP's c_fc and c_proj",
}


def _lora_shapes(config: GPTConfig, targets: str) -> list[tuple[str, int, int]]:
    """(name, in, out) of the Linear layers add_lora adapts in one block, for a shortcut target."""
    C = config.n_embd
    attn = [("attn.c_attn", C, 3 * C), ("attn.c_proj", C, C)]
    mlp = [("mlp.c_fc", C, 4 * C), ("mlp.c_proj", 4 * C, C)]
    return {"attn": attn, "mlp": mlp, "all": attn + mlp}[targets]


def _meta_lora_count(config: GPTConfig, rank: int, targets: str) -> tuple[int, int]:
    """(trainable, all) parameters of add_lora(GPT(config), rank, targets=targets), on the meta device."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return trainable_parameters(add_lora(GPT(config), rank=rank, alpha=2 * rank, targets=targets))


def _count_mistakes(config: GPTConfig, rank: int, targets: str):
    """Each known mistake as the count it gives."""
    L, C, r = config.n_layer, config.n_embd, rank
    shapes = _lora_shapes(config, targets)
    expected, total = _meta_lora_count(config, rank, targets)

    def per_block(shape_list, size=lambda i, o: r * (i + o)):
        return sum(size(i, o) for _, i, o in shape_list)

    known = [
        (L * per_block(shapes, lambda i, o: i * o),
         "this counts the full matrices (in x out each); LoRA trains A (r x in) and B (out x r): r (in + out)"),
        (L * per_block(shapes, lambda i, o: r * i * o),
         "r x in x out is the cost of a full matrix times r; A and B together hold r (in + out) numbers"),
        (L * per_block(shapes, lambda i, o: r * i), "only A (r x in) is counted: B (out x r) trains too"),
        (L * per_block(shapes, lambda i, o: r * o), "only B (out x r) is counted: A (r x in) trains too"),
        (per_block(shapes), f"this is one block's count: each of the n_layer = {L} blocks has its own adapters"),
        (total, "this is every parameter of the model; the base is frozen and only the adapters train"),
        (total - expected, "this counts the frozen base model; only the adapters (A and B) train"),
    ]
    if targets in ("attn", "all"):
        narrow = [(n, i, C if n == "attn.c_attn" else o) for n, i, o in shapes]
        known.append((L * per_block(narrow),
                      "c_attn makes q, k and v at once: it maps n_embd to 3 n_embd, so its B is (3 n_embd x r)"))
    if targets in ("mlp", "all"):
        narrow = [(n, C if n == "mlp.c_proj" else i, C if n == "mlp.c_fc" else o) for n, i, o in shapes]
        known.append((L * per_block(narrow),
                      "the MLP is 4x wider: c_fc maps n_embd to 4 n_embd and c_proj maps 4 n_embd back"))
    for other in ("attn", "mlp", "all"):
        if other != targets:
            known.append((L * per_block(_lora_shapes(config, other)),
                          f"this is the count for targets={other!r}; targets={targets!r} adapts "
                          f"{_TARGET_WORDS[targets]}"))
    return [(hint, lambda value=value: value) for value, hint in known]


def _report_count(answer: Answer, out: int, expected: int, case: Case, hints: list[str]):
    # two mistakes can give one count: then both are named
    return answer.fail(f"for {case.where} you count {out:,} trainable parameters, add_lora leaves {expected:,}"
                       + probably(hints))


@keeps_rng
def check_lora_param_count(fn: Callable[[GPTConfig, int, str], int]) -> None:
    """fn(config, rank, targets) -> how many parameters train after
    `add_lora(GPT(config), rank, targets=targets)`, for targets "attn", "mlp" or "all".

    Compared with `mini_gpt.lora.trainable_parameters` (on models built on the meta device) for
    several sizes, ranks and targets, GPT-2 small included.
    """
    small = GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)
    settings = [
        ("the 'shakespeare-char' preset", GPTConfig.preset("shakespeare-char"), 8, "attn"),
        ("GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)", small, 4, "mlp"),
        ("the same GPTConfig with bias=False", small.replace(bias=False), 2, "all"),
        ("the 'gpt2' preset", GPTConfig.preset("gpt2"), 8, "all"),
        ("the 'gpt2' preset", GPTConfig.preset("gpt2"), 16, "attn"),
    ]
    cases = [Case(f"{name}, rank={rank}, targets={targets!r}", (config, rank, targets))
             for name, config, rank, targets in settings]
    run_check(fn, "check_lora_param_count", cases, reference=lambda *args: _meta_lora_count(*args)[0],
              convert=as_int, agree=lambda out, expected: out == expected, mistakes=_count_mistakes,
              report=_report_count, passed=f"matches trainable_parameters() after add_lora in {len(cases)} settings")


# ---------------------------------------------------------------------------- merging


def _merged_weight_hint(out: nn.Linear, W, b, A, B, alpha: float, atol: float) -> str | None:
    """What is wrong with the merged layer's weight or bias, when it is a known mistake."""
    w, r = out.weight.detach(), A.shape[0]
    if w.shape != W.shape:
        return None
    delta = B @ A  # (out, in)
    weight_mistakes = [
        (f"the update is scaled by alpha; the merged weight is W + (alpha / r) B A (here {alpha:g} / {r})",
         lambda: W + alpha * delta),
        (f"the update is scaled by r / alpha; the merged weight is W + (alpha / r) B A (here {alpha:g} / {r})",
         lambda: W + (r / alpha) * delta),
        (f"the update is not scaled: the merged weight is W + (alpha / r) B A (here {alpha:g} / {r})",
         lambda: W + delta),
        ("the weight is W alone: add the update (alpha / r) B A to it", lambda: W),
        ("the weight is the update alone: the merged weight is W + (alpha / r) B A", lambda: (alpha / r) * delta),
        ("the update is subtracted: the merged weight is W + (alpha / r) B A", lambda: W - (alpha / r) * delta),
        ("the update is transposed: B A (out x in) already has the shape of nn.Linear's weight",
         lambda: W + (alpha / r) * delta.T),
    ]
    hints = diagnose(w, weight_mistakes, lambda a, b: close(a, b, atol=atol))
    if hints:
        return hints[0]
    if close(w, W + (alpha / r) * delta, atol=atol):
        if out.bias is None:
            return "the merged layer has no bias: copy layer.base.bias into it"
        if not close(out.bias.detach(), b, atol=atol):
            return ("the weight is right but the bias is not the base's: a new nn.Linear starts with "
                    "a random bias, so copy layer.base.bias into it")
    return None


@keeps_rng
def check_merge(fn: Callable[[Any], Any]) -> None:
    """fn(layer) -> a plain nn.Linear computing what `layer` computes, where `layer` is a
    `mini_gpt.lora.LoRALinear` (`layer.base` the frozen nn.Linear, `layer.lora_A`, `layer.lora_B`,
    `layer.alpha`, `layer.rank`). Its weight must be W + (alpha / r) B A, its bias the base's bias.

    The merged layer's outputs are compared with `layer(x)` (computed before fn runs), on three
    layers; `layer` itself must be left as it was.
    """
    # not run_check's loop: what is compared is not fn's result but the layer it returns, on x
    answer = Answer(fn, "check_merge")
    atol = 1e-5
    for where, x, base, A, B, alpha in _lora_inputs(71):
        layer = _library_lora_layer(base, A, B, alpha)
        W, b = base.weight.detach().clone(), base.bias.detach().clone()
        with torch.no_grad():
            expected = layer(x)
        out = answer.call((layer,), where)
        if out is None:
            return answer.remind()
        if isinstance(out, LoRALinear):
            raise answer.fail(f"returned a LoRALinear on {where}; merging gives one plain nn.Linear whose weight "
                              f"is W + (alpha / r) B A, so no extra work is left per token")
        if isinstance(out, torch.Tensor):
            raise answer.fail(f"returned a tensor of shape {tuple(out.shape)} on {where}; return an nn.Linear "
                              f"(nn.Linear(layer.in_features, layer.out_features)) holding the merged weight and "
                              f"the bias")
        if not isinstance(out, nn.Linear):
            raise answer.fail(f"returned {type(out).__name__} on {where}; return an nn.Linear")
        if not (torch.equal(layer.base.weight, W) and torch.equal(layer.base.bias, b)):
            raise answer.fail(f"changed layer.base's weight or bias in place on {where}: the LoRA layer now adds "
                              f"its update twice. Build a new nn.Linear (or work on a copy) and leave the layer as "
                              f"it is")
        with torch.no_grad():
            got = out(x)
            if not close(got, expected, atol=atol):
                hint = _merged_weight_hint(out, W, b, A, B, alpha, atol)
                raise mismatch(answer, got, expected, where, "layer(x)", hint, atol)
    return answer.passed("computes what the LoRA layer computes, as one plain nn.Linear, on 3 layers")
