"""The transformer blocks chapter: a diagram of pre-norm and post-norm blocks (`draw_block`), and
its exercises: LayerNorm, GELU, multi-head attention and the block, each by hand."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..attention import CausalSelfAttention
from ..block import Block
from ..config import GPTConfig
from ..validation import check_choice
from .checking import Case, random_generator, run_check
from .figures import EDGE, arrow, box, canvas, pyplot

__all__ = ["draw_block", "check_layer_norm", "check_gelu", "check_multi_head_attention", "check_block"]


def draw_block(kind: str = "pre", ax=None):
    """A transformer block as a diagram: the residual stream runs up the left, each sub-layer
    branches off and is added back (⊕). kind="pre" (GPT-2: LayerNorm before each sub-layer) or
    "post" (the original Transformer: LayerNorm after each addition). Returns the Axes."""
    check_choice("kind", kind, ("pre", "post"))
    ax = canvas(ax, (3.6, 6), (0, 20), (-2, 44))
    lane, branch = 4.0, 13.0  # x of the residual stream and of the sub-layers
    ln_fill, attn_fill, mlp_fill = "#e5e7eb", "#dbeafe", "#dcfce7"

    def add(y):  # the ⊕ where a sub-layer's output joins the stream
        ax.add_patch(pyplot().Circle((lane, y), 1.1, fc="white", ec=EDGE, lw=1.2))
        ax.text(lane, y, "+", ha="center", va="center", fontsize=12)

    ax.text(lane, -1.5, "x (B, T, C)", ha="center", fontsize=9)
    ax.text(10, 43, "pre-norm (GPT-2)" if kind == "pre" else "post-norm (2017 Transformer)", ha="center",
            fontsize=10, fontweight="bold")
    sublayers = [("masked multi-head\nattention", attn_fill, "ln_1"), ("MLP\n(4C, GELU)", mlp_fill, "ln_2")]
    y = 0.5
    for name, fill, ln in sublayers:
        top = y + 17
        if kind == "pre":
            arrow(ax, (lane, y + 1.5), (branch, y + 3.5), style="-", connection="angle,angleA=0,angleB=90")
            box(ax, branch - 4.5, y + 3.5, 9, 3, f"LayerNorm ({ln})", fill=ln_fill, fontsize=7.5)
            arrow(ax, (branch, y + 6.5), (branch, y + 8.5))
            box(ax, branch - 4.5, y + 8.5, 9, 4.5, name, fill=fill, fontsize=7.5)
            arrow(ax, (branch, y + 13), (lane + 1.1, top - 3), connection="angle,angleA=90,angleB=0")
            arrow(ax, (lane, y), (lane, top - 4.1))
            add(top - 3)
            y = top - 1.9
        else:
            arrow(ax, (lane, y + 1.5), (branch, y + 4.5), style="-", connection="angle,angleA=0,angleB=90")
            box(ax, branch - 4.5, y + 4.5, 9, 4.5, name, fill=fill, fontsize=7.5)
            arrow(ax, (branch, y + 9), (lane + 1.1, y + 11), connection="angle,angleA=90,angleB=0")
            arrow(ax, (lane, y), (lane, y + 9.9))
            add(y + 11)
            arrow(ax, (lane, y + 12.1), (lane, y + 13.5))
            box(ax, lane - 3.6, y + 13.5, 7.2, 3, f"LayerNorm ({ln})", fill=ln_fill, fontsize=7.0)
            y = y + 16.5
    arrow(ax, (lane, y), (lane, 41))
    ax.text(lane + 0.6, 40.5, "to the next block", ha="left", fontsize=8, color="#6b7280")
    return ax


# ---------------------------------------------------------------------------- LayerNorm and GELU


def _layer_norm_cases() -> list[Case]:
    g = random_generator(4)
    inputs = [
        ("x of shape (2, 3, 16)", torch.randn(2, 3, 16, generator=g) * 3 + 1, 1e-5),
        ("x of shape (4, 5): only 5 channels", torch.randn(4, 5, generator=g), 1e-5),
        ("x of shape (3, 8) with a tiny spread (variance ~1e-6, close to eps)",
         torch.randn(3, 8, generator=g) * 1e-3, 1e-5),
        ("x of shape (2, 6) with eps=0.5", torch.randn(2, 6, generator=g), 0.5),
    ]
    cases = []
    for where, x, eps in inputs:  # weights after all inputs: the order the generator has always been drawn in
        C = x.shape[-1]
        weight = 1 + 0.5 * torch.randn(C, generator=g)
        bias = 0.5 * torch.randn(C, generator=g)
        cases.append(Case(where, (x, weight, bias, eps)))
    return cases


def _layer_norm_mistakes(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    var_unbiased = x.var(-1, unbiased=True, keepdim=True)
    return [
        ("the variance is the unbiased one (divides by C - 1; torch.var's default): LayerNorm divides by C, "
         "use x.var(-1, unbiased=False) or ((x - mean) ** 2).mean(-1)",
         lambda: (x - mean) / torch.sqrt(var_unbiased + eps) * weight + bias),
        ("eps is missing: divide by sqrt(variance + eps)",
         lambda: (x - mean) / torch.sqrt(var) * weight + bias),
        ("eps is added to the standard deviation; it belongs inside the square root: sqrt(variance + eps)",
         lambda: (x - mean) / (torch.sqrt(var) + eps) * weight + bias),
        ("weight and bias are not applied: multiply by weight, then add bias",
         lambda: (x - mean) / torch.sqrt(var + eps)),
        ("bias is added before multiplying by weight: it is (normalised * weight) + bias",
         lambda: ((x - mean) / torch.sqrt(var + eps) + bias) * weight),
        ("the mean is not subtracted",
         lambda: x / torch.sqrt(var + eps) * weight + bias),
        ("this is RMSNorm (x divided by its root mean square): LayerNorm subtracts the mean and divides by the "
         "standard deviation",
         lambda: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight + bias),
        ("the statistics are taken over the wrong dimension: normalise each vector over its last "
         "dimension (dim=-1)",
         lambda: (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps)
         * weight + bias),
    ]


def check_layer_norm(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """fn(x (..., C), weight (C,), bias (C,), eps) -> LayerNorm over the last dimension.

    Compared with `F.layer_norm` (what `nn.LayerNorm` computes) on inputs chosen so that the usual
    mistakes show: few channels (unbiased variance differs), tiny variance (eps matters).
    """
    run_check(fn, "check_layer_norm", _layer_norm_cases(),
              reference=lambda x, weight, bias, eps: F.layer_norm(x, (x.shape[-1],), weight, bias, eps),
              against="F.layer_norm", atol=1e-4, mistakes=_layer_norm_mistakes,
              passed="matches nn.LayerNorm on 4 tricky inputs")


def _gelu_mistakes(x):
    c = math.sqrt(2 / math.pi)
    return [
        ("this is the exact GELU, x * Phi(x) with erf; GPT-2 uses the tanh approximation "
         "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))", lambda: F.gelu(x)),
        ("this is ReLU", lambda: F.relu(x)),
        ("the cubic term 0.044715 x^3 is missing inside tanh", lambda: 0.5 * x * (1 + torch.tanh(c * x))),
        ("the factor sqrt(2/pi) is missing inside tanh",
         lambda: 0.5 * x * (1 + torch.tanh(x + 0.044715 * x**3))),
        ("the leading x is missing: GELU(x) = 0.5 * x * (1 + tanh(...))",
         lambda: 0.5 * (1 + torch.tanh(c * (x + 0.044715 * x**3)))),
        ("this is the sigmoid approximation x * sigmoid(1.702 x)", lambda: x * torch.sigmoid(1.702 * x)),
    ]


def check_gelu(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """fn(x) -> GELU with GPT-2's tanh approximation, elementwise.

    Compared with `F.gelu(x, approximate="tanh")` on values from -6 to 6.
    """
    run_check(fn, "check_gelu", [Case("x = linspace(-6, 6, 241)", (torch.linspace(-6, 6, 241),))],
              reference=lambda x: F.gelu(x, approximate="tanh"), against='F.gelu(x, approximate="tanh")',
              atol=1e-5, mistakes=_gelu_mistakes, passed='matches F.gelu(x, approximate="tanh") on [-6, 6]')


# ---------------------------------------------------------------------------- attention and the block


def _mha_variant(x, attn, *, split="heads", merge="heads", scale="head", mask=True, proj=True):
    """Multi-head attention with one deliberate mistake (or none), for diagnosing answers."""
    B, T, C = x.shape
    H = attn.n_head
    hs = C // H
    q, k, v = attn.c_attn(x).split(C, dim=2)

    def heads(t):
        if split == "heads":
            return t.view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
        if split == "no_transpose":
            return t.reshape(B, H, T, hs)  # wrong: mixes positions and channels
        return t.view(B, T, hs, H).permute(0, 3, 1, 2)  # wrong: channels strided across heads

    q, k, v = heads(q), heads(k), heads(v)
    s = q @ k.transpose(-2, -1) / {"head": math.sqrt(hs), "embd": math.sqrt(C), "none": 1.0}[scale]
    if mask:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = torch.softmax(s, dim=-1) @ v  # (B, H, T, hs)
    if merge == "heads":
        y = y.transpose(1, 2).reshape(B, T, C)
    else:
        y = y.reshape(B, T, C)  # wrong: no transpose back
    return attn.c_proj(y) if proj else y


def _attention_cases() -> list[Case]:
    modules = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        for C, H in ((16, 4), (12, 3), (8, 1), (24, 6)):
            attn = CausalSelfAttention(GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=H, n_embd=C))
            with torch.no_grad():  # biases too, so a missing bias would show
                for p in attn.parameters():
                    p.normal_(0.0, 0.3)
            modules.append((f"n_embd={C}, n_head={H}", attn.eval()))
    g = random_generator(5)
    cases = []
    for (name, attn), T in zip(modules, (5, 7, 3, 9)):
        x = torch.randn(2, T, attn.n_embd, generator=g)
        cases.append(Case(f"x of shape {tuple(x.shape)}, {name}", (x, attn)))
    return cases


def _mha_mistakes(x, attn):
    return [
        ("no causal mask: each position also attends to later ones", lambda: _mha_variant(x, attn, mask=False)),
        ("the scores are scaled by sqrt(n_embd); scale by sqrt(head size) = sqrt(n_embd // n_head)",
         lambda: _mha_variant(x, attn, scale="embd")),
        ("the scores are not scaled: divide by sqrt(head size)", lambda: _mha_variant(x, attn, scale="none")),
        ("the heads are split with reshape(B, n_head, T, hs), which mixes positions and channels; use "
         ".view(B, T, n_head, hs).transpose(1, 2)", lambda: _mha_variant(x, attn, split="no_transpose")),
        ("each head takes every n_head-th channel (view(B, T, hs, n_head)); a head owns a contiguous slice: "
         ".view(B, T, n_head, hs)", lambda: _mha_variant(x, attn, split="strided")),
        ("the heads are merged without transposing back: y.transpose(1, 2).reshape(B, T, C)",
         lambda: _mha_variant(x, attn, merge="no_transpose")),
        ("the output projection c_proj is missing", lambda: _mha_variant(x, attn, proj=False)),
    ]


def check_multi_head_attention(fn: Callable[[torch.Tensor, CausalSelfAttention], torch.Tensor]) -> None:
    """fn(x (B, T, C), attn) -> (B, T, C): causal multi-head self-attention by hand, using the
    weights of `attn` (a mini_gpt CausalSelfAttention: `attn.c_attn`, `attn.c_proj`, `attn.n_head`).

    Compared with `attn(x)` for several widths and head counts.
    """
    run_check(fn, "check_multi_head_attention", _attention_cases(), reference=lambda x, attn: attn(x),
              against="attn(x)", atol=1e-5, mistakes=_mha_mistakes, no_grad=True,
              passed="matches mini_gpt's CausalSelfAttention for 4 sizes (1 to 6 heads)")


def _random_block(config: GPTConfig, seed: int) -> Block:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        block = Block(config)
        with torch.no_grad():  # LayerNorms away from 1 and 0, so ln_1 and ln_2 differ
            for name, p in block.named_parameters():
                if name.startswith(("ln_1", "ln_2")):
                    p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
                else:
                    p.normal_(0.0, 0.15)
    return block.eval()


def _block_cases() -> list[Case]:
    g = random_generator(7)
    cases = []
    for C, H, T in ((16, 4, 6), (32, 2, 5)):
        block = _random_block(GPTConfig(vocab_size=10, block_size=16, n_layer=1, n_head=H, n_embd=C), seed=C)
        x = torch.randn(2, T, C, generator=g)
        cases.append(Case(f"x of shape {tuple(x.shape)}, n_head={H}", (x, block)))
    return cases


def _block_mistakes(x, b):
    return [
        ("this is post-norm, LayerNorm after each addition (ln(x + f(x))); GPT-2 is pre-norm: "
         "x + f(ln(x))", lambda: b.ln_2((h := b.ln_1(x + b.attn(x))) + b.mlp(h))),
        ("the residual connections are missing: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))",
         lambda: b.mlp(b.ln_2(b.attn(b.ln_1(x))))),
        ("the residual adds the normalised x: add attn(ln_1(x)) to x itself, not to ln_1(x)",
         lambda: (h := b.ln_1(x) + b.attn(b.ln_1(x))) + b.mlp(b.ln_2(h))),
        ("attention and MLP read the same input in parallel; the MLP must read the stream after "
         "attention was added", lambda: x + b.attn(b.ln_1(x)) + b.mlp(b.ln_2(x))),
        ("ln_1 is used twice: the MLP's LayerNorm is ln_2",
         lambda: (h := x + b.attn(b.ln_1(x))) + b.mlp(b.ln_1(h))),
        ("the MLP is missing", lambda: x + b.attn(b.ln_1(x))),
        ("the LayerNorms are missing", lambda: (h := x + b.attn(x)) + b.mlp(h)),
    ]


def check_block(fn: Callable[[torch.Tensor, Block], torch.Tensor]) -> None:
    """fn(x (B, T, C), block) -> (B, T, C): a pre-norm transformer block, using the sub-modules of
    `block` (a mini_gpt Block: `ln_1`, `attn`, `ln_2`, `mlp`). Compared with `block(x)`."""
    run_check(fn, "check_block", _block_cases(), reference=lambda x, block: block(x), against="block(x)",
              atol=1e-4, mistakes=_block_mistakes, no_grad=True,
              passed="matches mini_gpt's Block (pre-norm) on 2 sizes")
