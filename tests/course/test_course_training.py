"""Chapter 5's exercise checks (learning-rate schedule, gradient clipping, one AdamW update) and its
figure: each check accepts a right answer, names the usual mistakes, and reminds (not fails) when
the exercise is not answered yet."""

import math

import matplotlib
import pytest
import torch

from mini_gpt import course

from check_helpers import fails, passes

matplotlib.use("Agg")


# ---------------------------------------------------------------------------- learning-rate schedule


def right_lr(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def test_lr_schedule_accepts_the_right_answer_and_a_tensor(capsys):
    assert "lr_at at every step of 4 schedules" in passes(course.check_lr_schedule, right_lr, capsys)

    def as_tensor(*args):
        return torch.tensor(right_lr(*args), dtype=torch.float64)

    passes(course.check_lr_schedule, as_tensor, capsys)


def test_lr_schedule_warmup_from_zero():
    def lr(step, max_lr, min_lr, warmup, total):
        return max_lr * step / warmup if step < warmup else right_lr(step, max_lr, min_lr, warmup, total)

    fails(course.check_lr_schedule, lr, r"at step 0 .* you return 0, lr_at gives 0\.0001 .*warmup starts at 0")


def test_lr_schedule_decays_to_zero():
    def lr(step, max_lr, min_lr, warmup, total):
        return right_lr(step, max_lr, 0.0, warmup, total)

    fails(course.check_lr_schedule, lr, r"decays to 0; it must end at min_lr")


def test_lr_schedule_progress_from_step_zero():
    def lr(step, max_lr, min_lr, warmup, total):
        if step < warmup:
            return max_lr * (step + 1) / warmup
        if step >= total:
            return min_lr
        return min_lr + 0.5 * (1 + math.cos(math.pi * step / total)) * (max_lr - min_lr)

    fails(course.check_lr_schedule, lr, r"at step 10 .*progress counts from step 0")


def test_lr_schedule_without_a_floor_after_the_end():
    def lr(step, max_lr, min_lr, warmup, total):
        if step < warmup:
            return max_lr * (step + 1) / warmup
        progress = (step - warmup) / (total - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)

    fails(course.check_lr_schedule, lr, r"at step 101 .*the cosine comes back up")


def test_lr_schedule_linear_decay_and_a_bare_cosine():
    def linear(step, max_lr, min_lr, warmup, total):
        if step < warmup or step >= total:
            return right_lr(step, max_lr, min_lr, warmup, total)
        return max_lr - (step - warmup) / (total - warmup) * (max_lr - min_lr)

    def bare_cos(step, max_lr, min_lr, warmup, total):
        if step < warmup or step >= total:
            return right_lr(step, max_lr, min_lr, warmup, total)
        return min_lr + math.cos(math.pi * (step - warmup) / (total - warmup)) * (max_lr - min_lr)

    fails(course.check_lr_schedule, linear, r"linear decay")
    fails(course.check_lr_schedule, bare_cos, r"goes down to -1")


def test_lr_schedule_without_warmup_zero_handling_fails_on_that_schedule():
    def lr(step, max_lr, min_lr, warmup, total):  # divides by warmup even when it is 0
        if step < warmup:
            return max_lr * (step + 1) / warmup
        if step >= total:
            return min_lr
        progress = (step - warmup) / (total - warmup)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr) + (0.0 if warmup else 1e-3)

    fails(course.check_lr_schedule, lr, r"max_lr=0\.0006, min_lr=0, warmup=0, total=40")


def test_lr_schedule_none_midway_and_wrong_types():
    def partly(step, max_lr, min_lr, warmup, total):
        return right_lr(step, max_lr, min_lr, warmup, total) if step < 5 else None

    fails(course.check_lr_schedule, partly, r"returned None at step=5")
    fails(course.check_lr_schedule, lambda *a: "0.001", r"returned str|return a number")
    fails(course.check_lr_schedule, lambda *a: torch.ones(2), r"shape \(2,\)")


# ---------------------------------------------------------------------------- gradient clipping


def right_clip(grads, max_norm, *, always=False, upside_down=False):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    if always or norm > max_norm:
        for g in grads:
            g.mul_(norm / max_norm if upside_down else max_norm / norm)
    return norm


def test_clip_accepts_the_right_answer_and_torch_itself(capsys):
    assert "4 lists of gradients" in passes(course.check_clip_grad_norm, right_clip, capsys)

    passes(course.check_clip_grad_norm, _via_torch, capsys)


def _via_torch(grads, max_norm):
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


def test_clip_per_tensor():
    def clip(grads, max_norm):
        total = torch.sqrt(sum((g**2).sum() for g in grads))
        for g in grads:
            n = g.norm()
            if n > max_norm:
                g.mul_(max_norm / n)
        return total

    fails(course.check_clip_grad_norm, clip, r"each tensor is clipped on its own")


def test_clip_scales_up_small_gradients():
    fails(course.check_clip_grad_norm, lambda grads, m: right_clip(grads, m, always=True),
          r"max_norm=10\.0 .*scaled up to max_norm")


def test_clip_wrong_norms():
    def sum_of_norms(grads, max_norm):
        norm = sum(g.norm() for g in grads)
        right_clip(grads, max_norm)
        return norm

    def after(grads, max_norm):
        norm = right_clip(grads, max_norm)
        return min(float(norm), max_norm)

    def no_sqrt(grads, max_norm):
        norm = sum((g**2).sum() for g in grads)
        right_clip(grads, max_norm)
        return norm

    fails(course.check_clip_grad_norm, sum_of_norms, r"sum of the tensors' norms")
    fails(course.check_clip_grad_norm, after, r"norm after clipping")
    fails(course.check_clip_grad_norm, no_sqrt, r"square root is missing")


def test_clip_not_in_place_and_upside_down():
    def copies(grads, max_norm):
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        grads = [g * min(1.0, max_norm / norm) for g in grads]  # rebinds: the caller's tensors stay as they were
        return norm

    fails(course.check_clip_grad_norm, copies, r"not changed: scale them in place")
    fails(course.check_clip_grad_norm, lambda grads, m: right_clip(grads, m, upside_down=True), r"upside down")
    fails(course.check_clip_grad_norm, lambda grads, m: (grads, right_clip(grads, m)), r"return only the global norm")


# ---------------------------------------------------------------------------- AdamW


def right_adamw(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    p = p - lr * weight_decay * p - lr * m_hat / (v_hat.sqrt() + eps)
    return p, m, v


def with_mistake(**changes):
    def adamw(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
        if changes.get("l2"):
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * (g if changes.get("v_not_squared") else g**2)
        m_hat = m if changes.get("no_m_correction") else m / (1 - beta1**t)
        v_hat = v if changes.get("no_v_correction") else v / (1 - beta2**t)
        denom = (v_hat + eps).sqrt() if changes.get("eps_inside") else v_hat.sqrt() + eps
        if changes.get("l2"):
            new = p - lr * m_hat / denom
        elif changes.get("wd_no_lr"):
            new = p - weight_decay * p - lr * m_hat / denom
        elif changes.get("wd_after"):
            new = (p - lr * m_hat / denom) * (1 - lr * weight_decay)
        else:
            new = p - lr * weight_decay * p - lr * m_hat / denom
        if changes.get("stale"):
            return new, torch.zeros_like(m), torch.zeros_like(v)
        return new, m, v

    return adamw


def test_adamw_accepts_the_right_answer(capsys):
    assert "torch.optim.AdamW over 5 updates on 3 tensors" in passes(course.check_adamw_step, right_adamw, capsys)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"no_m_correction": True, "no_v_correction": True}, r"t=1 .*bias correction is missing"),
        ({"no_m_correction": True}, r"only v is bias-corrected"),
        ({"no_v_correction": True}, r"only m is bias-corrected"),
        ({"l2": True}, r"Adam with L2 regularisation"),
        ({"wd_no_lr": True}, r"not multiplied by the learning rate"),
        ({"wd_after": True}, r"decays the old ones"),
        ({"eps_inside": True}, r"tiny gradients.*eps is inside the square root"),
        ({"stale": True}, r"t=2 .*start from zero at every update"),
        ({"v_not_squared": True}, r"squared"),
    ],
)
def test_adamw_usual_mistakes(changes, match):
    fails(course.check_adamw_step, with_mistake(**changes), match)


def test_adamw_wrong_return_shape():
    fails(course.check_adamw_step, lambda p, *a: p, r"return the tuple \(p, m, v\)")


# ---------------------------------------------------------------------------- figure


def test_draw_training_loop_names_every_stage():
    ax = course.draw_training_loop()
    texts = " ".join(t.get_text() for t in ax.texts)
    for stage in ("batch", "forward", "loss", "backward", "clip", "AdamW", "next step", "grad_accum"):
        assert stage in texts
    assert len(ax.patches) == 6
    matplotlib.pyplot.close(ax.figure)
