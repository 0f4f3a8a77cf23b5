"""The full GPT chapter's exercises: the forward pass from the model's parts, and counting its
parameters, compared with `GPT.forward` and `GPT.num_parameters`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..config import GPTConfig
from ..model import GPT
from .checking import Answer, Case, as_int, probably, random_generator, run_check
from .shared import small_model

__all__ = ["check_gpt_forward", "check_param_count"]


# ---------------------------------------------------------------------------- the forward pass


def _forward_cases() -> Iterator[Case]:
    # built one by one as the check runs: the final LayerNorms draw from the global random state,
    # in the order they always have (between the reader's calls)
    g = random_generator(8)
    for seed, T in ((0, 7), (1, 12)):
        model = small_model(seed=seed, n_layer=2, n_embd=32, block_size=16)
        with torch.no_grad():  # a final LayerNorm away from 1 and 0, so leaving it out shows
            model.transformer.ln_f.weight.normal_(1.0, 0.3)
            model.transformer.ln_f.bias.normal_(0.0, 0.3)
        idx = torch.randint(0, model.config.vocab_size, (2, T), generator=g)
        yield Case(f"idx of shape {tuple(idx.shape)}", (model, idx))


def _forward_mistakes(model: GPT, idx: torch.Tensor):
    tr = model.transformer
    pos = torch.arange(idx.shape[1])

    def run(x, blocks=True, ln_f=True, head=True):
        if blocks:
            for block in tr.h:
                x = block(x)
        if ln_f:
            x = tr.ln_f(x)
        return x @ tr.wte.weight.T if head else x

    return [
        ("the position embeddings are missing: add model.transformer.wpe(torch.arange(T))",
         lambda: run(tr.wte(idx))),
        ("the final LayerNorm ln_f is missing (pre-norm blocks leave the stream un-normalised)",
         lambda: run(tr.wte(idx) + tr.wpe(pos), ln_f=False)),
        ("the blocks are not applied", lambda: run(tr.wte(idx) + tr.wpe(pos), blocks=False)),
        ("this returns the last hidden state, not the logits: multiply by the embedding matrix "
         "(x @ wte.weight.T)", lambda: run(tr.wte(idx) + tr.wpe(pos), head=False)),
        ("these are probabilities (softmax); return the logits", lambda: torch.softmax(model(idx), dim=-1)),
    ]


def check_gpt_forward(fn: Callable[[GPT, torch.Tensor], torch.Tensor]) -> None:
    """fn(model, idx (B, T)) -> logits (B, T, vocab_size), computed from the model's parts
    (`model.transformer.wte`, `.wpe`, `.h`, `.ln_f`, and the tied head). Compared with `model(idx)`."""
    run_check(fn, "check_gpt_forward", _forward_cases(), reference=lambda model, idx: model(idx),
              against="model(idx)", atol=1e-4, mistakes=_forward_mistakes, no_grad=True,
              passed="matches GPT.forward on 2 small models")


# ---------------------------------------------------------------------------- counting parameters


def _meta_num_parameters(config: GPTConfig) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return GPT(config).num_parameters()


def _count_mistakes(config: GPTConfig):
    """Each known mistake as the count it gives: the right count plus what that mistake adds."""
    V, P, L, C = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    right = _meta_num_parameters(config)
    lin_biases = L * (3 * C + C + 4 * C + C)  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    ln_params = (2 * L + 1) * C  # weight (or bias) of every LayerNorm: two per block and ln_f
    known = [
        (True, V * C, "the head is counted separately, but it is tied to wte (one matrix, counted once)"),
        (config.pos_encoding == "learned", -P * C, "the position embeddings wpe (block_size x n_embd) are missing"),
        (config.pos_encoding != "learned", P * C,
         "sinusoidal and rotary positions have no parameters: count wpe only for pos_encoding='learned'"),
        (True, -C * (2 if config.bias else 1), "the final LayerNorm ln_f is missing"),
        (True, -ln_params * (2 if config.bias else 1), "the LayerNorms are missing: two per block and ln_f"),
        (config.bias, -lin_biases, "the biases of the Linear layers are missing"),
        (not config.bias, lin_biases + ln_params,
         "with bias=False neither the Linear layers nor the LayerNorms have biases (LayerNorm keeps its weight)"),
        (not config.bias, lin_biases, "with bias=False the Linear layers have no biases"),
        (not config.bias, ln_params, "with bias=False the LayerNorms have no bias (only a weight of n_embd)"),
        (True, -L * (6 * C * C + (3 * C if config.bias else 0)),
         "the MLP is 4x wider than n_embd: c_fc is n_embd x 4 n_embd and c_proj is 4 n_embd x n_embd"),
        (True, -L * (2 * C * C + (2 * C if config.bias else 0)),
         "c_attn makes q, k and v at once: it is n_embd x 3 n_embd"),
    ]
    return [(hint, lambda d=d: right + d) for applies, d, hint in known if applies]


def _report_count(answer: Answer, out: int, expected: int, case: Case, hints: list[str]):
    return answer.fail(f"for {case.where} you count {out:,} parameters, the model has {expected:,} "
                       f"(difference {out - expected:+,})" + probably(hints[:1]))


def check_param_count(fn: Callable[[GPTConfig], int]) -> None:
    """fn(config) -> the number of parameters of GPT(config), counting the tied head once.

    Compared with `GPT(config).num_parameters()` (built on the meta device) for several configs:
    presets, a model without biases, and models with sinusoidal and rotary positions.
    """
    small = dict(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)
    configs = [
        ("the 'shakespeare-char' preset", GPTConfig.preset("shakespeare-char")),
        ("the 'gpt2' preset", GPTConfig.preset("gpt2")),
        ("GPTConfig(vocab_size=100, block_size=32, n_layer=3, n_head=2, n_embd=48)", GPTConfig(**small)),
        ("the same with bias=False", GPTConfig(**small, bias=False)),
        ("the same with pos_encoding='sinusoidal'", GPTConfig(**small, pos_encoding="sinusoidal")),
        ("the same with pos_encoding='rope'", GPTConfig(**small, pos_encoding="rope")),
    ]
    run_check(fn, "check_param_count", [Case(where, (config,)) for where, config in configs],
              reference=_meta_num_parameters, convert=as_int, agree=lambda out, expected: out == expected,
              mistakes=_count_mistakes, report=_report_count,
              passed=f"matches num_parameters() on {len(configs)} configs")
