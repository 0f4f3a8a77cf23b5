"""The training chapter: a picture of one optimizer step (`draw_training_loop`), and its exercises:
the learning-rate schedule, gradient clipping and one AdamW update, each compared with the library
or PyTorch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..train import TrainConfig, lr_at
from .checking import (
    Answer,
    Case,
    as_float,
    as_tensor,
    close,
    diagnose,
    mismatch,
    probably,
    random_generator,
    run_check,
)
from .figures import BOX, HIGHLIGHT, arrow, box, canvas

__all__ = ["draw_training_loop", "check_lr_schedule", "check_clip_grad_norm", "check_adamw_step"]


def draw_training_loop(ax=None):
    """One optimizer step as a cycle: batch -> forward -> loss -> backward -> clip -> AdamW step
    (learning rate from the schedule) -> the next batch. Returns the Axes."""
    ax = canvas(ax, (9, 3.6), (0, 100), (-1, 37))
    w, h = 26, 10
    top = [(2, "batch\nx, y = random windows"), (37, "forward\nlogits = model(x)"),
           (72, "loss\ncross-entropy vs y")]
    bottom = [(72, "backward\nloss.backward()"), (37, "clip\nglobal grad norm \u2264 1"),
              (2, "AdamW step\nlr = schedule(step)")]
    for x, text in top:
        box(ax, x, 24, w, h, text, fill=HIGHLIGHT if text.startswith("loss") else BOX, fontsize=9.5)
    for x, text in bottom:
        box(ax, x, 2, w, h, text, fontsize=9.5)
    arrow(ax, (28, 29), (37, 29))
    arrow(ax, (63, 29), (72, 29))
    arrow(ax, (85, 24), (85, 12))
    arrow(ax, (72, 7), (63, 7))
    arrow(ax, (37, 7), (28, 7))
    arrow(ax, (15, 12), (15, 24), color="#9ca3af")
    ax.text(16.5, 18, "next step", ha="left", va="center", fontsize=8.5, color="#6b7280")
    ax.text(50, 18, "forward and backward run grad_accum times (the gradients add up)\n"
                    "before each update; then the gradients are set back to zero",
            ha="center", va="center", fontsize=8.5, color="#6b7280")
    return ax


# ---------------------------------------------------------------------------- the learning-rate schedule


def _schedule_variant(step: int, max_lr: float, min_lr: float, warmup: int, total: int, mistake: str) -> float:
    """Warmup + cosine with one deliberate mistake, for diagnosing answers."""
    if step < warmup:
        return max_lr * (step if mistake == "warmup_from_zero" else step + 1) / warmup
    if step >= total and mistake != "no_floor":
        return 0.0 if mistake == "to_zero" else min_lr
    start = 0 if mistake == "progress_from_zero" else warmup
    progress = (step - start) / max(1, total - start)
    if mistake == "linear":
        return max_lr - progress * (max_lr - min_lr)
    if mistake == "to_zero":
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * max_lr
    if mistake == "no_half":
        return min_lr + math.cos(math.pi * progress) * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


_SCHEDULE_MISTAKES = [
    ("warmup_from_zero", "the warmup starts at 0, so the first step does not move the weights: step s (counting "
                         "from 0) gets max_lr * (s + 1) / warmup"),
    ("to_zero", "the cosine decays to 0; it must end at min_lr: min_lr + 0.5 * (1 + cos(pi * progress)) * "
                "(max_lr - min_lr)"),
    ("progress_from_zero", "the cosine's progress counts from step 0; it starts after the warmup: "
                           "progress = (step - warmup) / (total - warmup)"),
    ("no_floor", "after `total` steps the cosine comes back up; from step `total` on, the rate stays at min_lr"),
    ("linear", "this is a linear decay; the decay follows half a cosine: 0.5 * (1 + cos(pi * progress))"),
    ("no_half", "the factor is cos(pi * progress), which goes down to -1; use 0.5 * (1 + cos(pi * progress)), "
                "which goes from 1 to 0"),
]



def _schedule_steps(total: int) -> range:
    return range(total + 10)  # and past the end, where the rate must stay at min_lr


def _rates_of_every_step(answer: Answer, case: Case) -> list[float] | None:
    """The answer's rate at every step of the schedule; None when it is not answered yet."""
    max_lr, min_lr, warmup, total = case.args
    rates = []
    for step in _schedule_steps(total):
        where = f"step={step} ({case.where})"
        out = answer.call((step, max_lr, min_lr, warmup, total), where)
        if out is None:
            if step == 0:
                return None
            raise answer.fail(f"returned None at {where}; return the learning rate at every step")
        rates.append(as_float(answer, out, where))
    return rates


def _library_rates(max_lr: float, min_lr: float, warmup: int, total: int) -> list[float]:
    config = TrainConfig(learning_rate=max_lr, min_lr=min_lr, warmup_iters=warmup, max_iters=total)
    return [lr_at(step, config) for step in _schedule_steps(total)]


def _same_rate(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def _schedule_mistakes(max_lr: float, min_lr: float, warmup: int, total: int):
    return [(hint, lambda mistake=mistake: [_schedule_variant(step, max_lr, min_lr, warmup, total, mistake)
                                            for step in _schedule_steps(total)])
            for mistake, hint in _SCHEDULE_MISTAKES]


def _report_schedule(answer: Answer, got: list[float], expected: list[float], case: Case, hints: list[str]):
    bad = [s for s, (a, b) in enumerate(zip(got, expected)) if not _same_rate(a, b)]
    s = bad[0]
    return answer.fail(f"at step {s} of the schedule {case.where} you return {got[s]:.6g}, lr_at gives "
                       f"{expected[s]:.6g} ({len(bad)} of {len(expected)} steps differ)" + probably(hints[:1]))


def check_lr_schedule(fn: Callable[[int, float, float, int, int], float]) -> None:
    """fn(step, max_lr, min_lr, warmup, total) -> the learning rate of optimizer step `step`
    (counting from 0): a linear warmup to max_lr over `warmup` steps, then half a cosine down to
    min_lr at step `total`, and min_lr after that.

    Compared with `mini_gpt.train.lr_at` at every step (and past the end) of several schedules.
    """
    schedules = [(1e-3, 1e-4, 10, 100), (2e-3, 2e-4, 50, 1000), (6e-4, 0.0, 0, 40), (1.0, 0.5, 3, 7)]
    cases = [Case(f"max_lr={max_lr:g}, min_lr={min_lr:g}, warmup={warmup}, total={total}",
                  (max_lr, min_lr, warmup, total)) for max_lr, min_lr, warmup, total in schedules]
    run_check(fn, "check_lr_schedule", cases, reference=_library_rates, call=_rates_of_every_step,
              convert=lambda answer, rates, where: rates,  # already read step by step
              agree=lambda got, expected: all(_same_rate(a, b) for a, b in zip(got, expected)),
              mistakes=_schedule_mistakes, report=_report_schedule,
              passed=f"matches mini_gpt.train.lr_at at every step of {len(schedules)} schedules")


# ---------------------------------------------------------------------------- gradient clipping


def _clip_cases() -> list[tuple[str, list[torch.Tensor], float]]:
    g = random_generator(11)
    mixed = [torch.randn(4, 6, generator=g), torch.randn(6, generator=g), torch.randn(2, 3, 5, generator=g)]
    lopsided = [torch.randn(8, 8, generator=g) * 3.0, torch.randn(8, generator=g) * 0.01,
                torch.randn(3, generator=g) * 0.2]
    return [
        ("3 tensors with a global norm of about 7.7, max_norm=1.0", mixed, 1.0),
        ("the same tensors with max_norm=10.0 (above their norm)", mixed, 10.0),
        ("one tensor of shape (5, 4), max_norm=0.5", [torch.randn(5, 4, generator=g)], 0.5),
        ("one large tensor and two small ones, max_norm=2.0", lopsided, 2.0),
    ]


def _norm_hint(norm: float, grads: list[torch.Tensor], expected_norm: float, max_norm: float) -> str | None:
    norms = [float(t.double().norm()) for t in grads]
    known = [
        (sum(norms), "this is the sum of the tensors' norms; the global norm is the norm of all entries "
                     "together: sqrt(sum over tensors of (norm of tensor) ** 2)"),
        (math.sqrt(sum(norms)), "square each tensor's norm before summing: sqrt(sum of norm ** 2)"),
        (max(norms), "this is the largest tensor's norm; the global norm takes all tensors together"),
        (sum(n**2 for n in norms), "the square root is missing: the norm is sqrt(sum of squares)"),
        (min(expected_norm, max_norm), "this is the norm after clipping; return the norm before it "
                                       "(training logs it to spot gradient spikes)"),
    ]
    return next((h for value, h in known if math.isclose(norm, value, rel_tol=1e-4)), None)


def _clip_mistakes(grads: list[torch.Tensor], max_norm: float):
    total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    return [
        ("the gradients were not changed: scale them in place, e.g. t.mul_(max_norm / norm)",
         lambda: [t.clone() for t in grads]),
        ("the gradients were scaled up to max_norm although their norm was smaller; clip only when "
         "norm > max_norm (the factor is min(1, max_norm / norm))",
         lambda: [t * (max_norm / total) for t in grads]),
        ("each tensor is clipped on its own; clipping scales all of them by one factor from the global "
         "norm, which keeps the gradient's direction",
         lambda: [t * min(1.0, max_norm / float(t.norm())) for t in grads]),
        ("the factor is upside down: multiply by max_norm / norm, not norm / max_norm",
         lambda: [t * (total / max_norm) if total > max_norm else t.clone() for t in grads]),
    ]


def _same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(close(x, y, atol=1e-6) for x, y in zip(a, b))


def check_clip_grad_norm(fn: Callable[[list[torch.Tensor], float], Any]) -> None:
    """fn(grads, max_norm) -> the global norm of `grads` (a list of tensors) before clipping; when
    that norm is above max_norm, fn scales every tensor in place by max_norm / norm.

    Compared with `torch.nn.utils.clip_grad_norm_` (the returned norm and the clipped gradients)
    on several lists of gradients.
    """
    # not run_check's loop: the answer is two things, the norm it returns and the tensors it changed in place
    answer = Answer(fn, "check_clip_grad_norm")
    for where, grads, max_norm in _clip_cases():
        mine = [t.clone() for t in grads]
        out = answer.call((mine, max_norm), where)
        if out is None:
            return answer.remind()
        if isinstance(out, (tuple, list)):
            raise answer.fail(f"returned a {type(out).__name__} on {where}; clip the tensors in place (t.mul_(...)) "
                              f"and return only the global norm, as torch.nn.utils.clip_grad_norm_ does")
        norm = as_float(answer, out, where)
        params = [torch.nn.Parameter(t.clone()) for t in grads]
        for p, t in zip(params, grads):
            p.grad = t.clone()
        expected_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        expected = [p.grad for p in params]
        if not math.isclose(norm, expected_norm, rel_tol=1e-4):
            raise answer.fail(f"on {where} you return a norm of {norm:.6g}, clip_grad_norm_ gives {expected_norm:.6g}"
                              + probably(_norm_hint(norm, grads, expected_norm, max_norm)))
        if _same_tensors(mine, expected):
            continue
        hints = diagnose(mine, _clip_mistakes(grads, max_norm), _same_tensors)
        worst = next(i for i, (a, b) in enumerate(zip(mine, expected)) if not close(a, b, atol=1e-6))
        raise mismatch(answer, mine[worst], expected[worst], f"{where} (tensor {worst} after clipping)",
                       "torch.nn.utils.clip_grad_norm_", hints[0] if hints else None, 1e-6)
    return answer.passed("matches torch.nn.utils.clip_grad_norm_ on 4 lists of gradients")


# ---------------------------------------------------------------------------- one AdamW update


def _adamw_variant(p, g, m, v, t, lr, beta1, beta2, eps, wd, mistake=None):
    """One AdamW update with one deliberate mistake (or none): returns (p, m, v)."""
    if mistake == "l2":
        g = g + wd * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m if mistake in ("no_correction", "no_correction_m") else m / (1 - beta1**t)
    v_hat = v if mistake in ("no_correction", "no_correction_v") else v / (1 - beta2**t)
    denom = torch.sqrt(v_hat + eps) if mistake == "eps_inside" else torch.sqrt(v_hat) + eps
    update = m_hat / denom
    if mistake == "l2":
        return p - lr * update, m, v
    if mistake == "wd_no_lr":
        return p * (1 - wd) - lr * update, m, v
    if mistake == "wd_after":
        return (p - lr * update) * (1 - lr * wd), m, v
    return p * (1 - lr * wd) - lr * update, m, v


_ADAMW_MISTAKES = [
    ("no_correction", "the bias correction is missing: divide m by (1 - beta1 ** t) and v by (1 - beta2 ** t), "
                      "with t = 1 on the first step"),
    ("no_correction_m", "only v is bias-corrected; m needs it too: m_hat = m / (1 - beta1 ** t)"),
    ("no_correction_v", "only m is bias-corrected; v needs it too: v_hat = v / (1 - beta2 ** t)"),
    ("l2", "this is Adam with L2 regularisation (weight_decay * p added to the gradient); AdamW decays the "
           "weights directly, outside the moments: p = p - lr * weight_decay * p"),
    ("wd_no_lr", "the weight decay is not multiplied by the learning rate: p = p * (1 - lr * weight_decay)"),
    ("wd_after", "the decay is applied to the updated weights; AdamW decays the old ones: "
                 "p_new = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)"),
    ("eps_inside", "eps is inside the square root; it is added to it: m_hat / (sqrt(v_hat) + eps) (this shows "
                   "for tiny gradients)"),
]


def _adamw_cases() -> list[tuple[str, torch.Tensor, list[torch.Tensor], float, tuple[float, float], float]]:
    g = random_generator(12)
    cases = []
    for name, shape, scale, betas, wd in (
        ("a (4, 5) matrix with weight_decay=0.1, betas=(0.9, 0.999)", (4, 5), 1.0, (0.9, 0.999), 0.1),
        ("a vector of 6 with weight_decay=0.0, betas=(0.9, 0.99)", (6,), 1.0, (0.9, 0.99), 0.0),
        ("a (3, 3) matrix with tiny gradients (about 1e-5), weight_decay=0.1", (3, 3), 1e-5, (0.9, 0.95), 0.1),
    ):
        p = torch.randn(shape, generator=g, dtype=torch.float64)
        grads = [torch.randn(shape, generator=g, dtype=torch.float64) * scale for _ in range(5)]
        cases.append((name, p, grads, 1e-8, betas, wd))
    return cases



def _adamw_hint(p, before, g, t, lr, beta1, beta2, eps, wd, atol) -> str | None:
    """The known mistake that gives `p` from the state `before` (p, m, v) right before this update."""
    def agree(a, b):
        return close(a, b, atol=atol, rtol=1e-7)

    p0, m0, v0 = before
    mistakes = [(explanation, lambda m=mistake: _adamw_variant(p0, g, m0, v0, t, lr, beta1, beta2, eps, wd, m)[0])
                for mistake, explanation in _ADAMW_MISTAKES]
    if t > 1:
        zeros = torch.zeros_like(p0)
        mistakes.append(("m and v start from zero at every update: return the updated m and v, they carry "
                         "over to the next update",
                         lambda: _adamw_variant(p0, g, zeros, zeros, t, lr, beta1, beta2, eps, wd)[0]))
    hints = diagnose(p, mistakes, agree)
    if hints:
        return hints[0]
    if torch.isnan(p).any():
        return "NaN: v averages the *squared* gradient (g * g), which is never negative"
    return None


def check_adamw_step(fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """fn(p, grad, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (p, m, v) after one AdamW
    update: t is the update's number (1 on the first), m and v the moving averages of the gradient
    and of its square (zeros before the first update).

    Five updates in a row (the learning rate changing as under a schedule) on three tensors,
    compared with `torch.optim.AdamW` after every update.
    """
    # not run_check's loop: each update starts from what the answer returned for the one before
    answer = Answer(fn, "check_adamw_step")
    lrs = [0.05, 0.1, 0.08, 0.05, 0.02]
    atol = 1e-9
    for name, p0, grads, eps, (beta1, beta2), wd in _adamw_cases():
        ref = torch.nn.Parameter(p0.clone())
        opt = torch.optim.AdamW([ref], lr=lrs[0], betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=False)
        p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        before = (p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0))  # (p, m, v) by hand, for hints
        for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
            where = f"update t={t} of {name}, lr={lr}"
            out = answer.call((p.clone(), g.clone(), m.clone(), v.clone(), t, lr, beta1, beta2, eps, wd), where)
            if out is None:
                return answer.remind()
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise answer.fail(f"returned {type(out).__name__} on {where}; return the tuple (p, m, v): the new "
                                  f"weights and the two updated moving averages")
            p, m, v = (as_tensor(answer, x, where).detach().to(torch.float64) for x in out)
            ref.grad = g.clone()
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            expected = ref.detach()
            if not close(p, expected, atol=atol, rtol=1e-7):
                raise mismatch(answer, p, expected, where, "torch.optim.AdamW",
                               _adamw_hint(p, before, g, t, lr, beta1, beta2, eps, wd, atol), atol)
            before = _adamw_variant(before[0], g, before[1], before[2], t, lr, beta1, beta2, eps, wd)
    return answer.passed("matches torch.optim.AdamW over 5 updates on 3 tensors")
