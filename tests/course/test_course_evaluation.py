"""The evaluation chapter's exercise checks: each accepts right answers written in different ways,
rejects the usual wrong ones with the matching explanation, and reminds when unanswered; and the
earlier checkpoint of the shared model."""

import pytest
import torch

from mini_gpt import course

from check_helpers import fails, passes

CHECKS = [course.check_distinct_n, course.check_expected_calibration_error, course.check_choose_option]


@pytest.mark.parametrize("check", CHECKS)
def test_an_unanswered_exercise_gets_the_reminder(check, capsys):
    def my_answer(*args):
        ...

    assert check(my_answer) is None
    assert "returned None: write its body" in capsys.readouterr().out


# ---------------------------------------------------------------------------- distinct-n


def grams(s, n):
    return [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]


def test_distinct_n_right_answers(capsys):
    def pooled(sequences, n):
        every = [g for s in sequences for g in grams(s, n)]
        return len(set(every)) / len(every)

    def with_a_counter(sequences, n):
        from collections import Counter

        counts = Counter(tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1))
        return torch.tensor(len(counts) / sum(counts.values()))

    assert "4 cases" in passes(course.check_distinct_n, pooled, capsys)
    passes(course.check_distinct_n, with_a_counter, capsys)


@pytest.mark.parametrize("answer, hint", [
    (lambda seqs, n: len({g for s in seqs for g in grams(s, n)}), "divide it by the number of all n-grams"),
    (lambda seqs, n: 1 - (lambda e: len(set(e)) / len(e))([g for s in seqs for g in grams(s, n)]), "1 - distinct-n"),
    (lambda seqs, n: (lambda e: len(set(e)) / len(e))(grams([t for s in seqs for t in s], n)), "joined into one"),
    (lambda seqs, n: (lambda e: len(set(e)) / len(e))([tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n)]),
     "one n-gram short"),
    (lambda seqs, n: sum(len(set(grams(s, n))) / len(grams(s, n)) for s in seqs) / len(seqs), "pool the n-grams"),
])
def test_distinct_n_known_mistakes(answer, hint):
    fails(course.check_distinct_n, answer, f"Probably.*{hint}")


def test_distinct_n_refuses_what_is_not_a_number():
    fails(course.check_distinct_n, lambda seqs, n: "0.5", "return a number")


# ---------------------------------------------------------------------------- calibration


def ece(conf, correct, n_bins):
    which = (conf * n_bins).long().clamp(max=n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            total += inside.sum() / len(conf) * (correct[inside].float().mean() - conf[inside].mean()).abs()
    return total


def test_ece_right_answers(capsys):
    def with_bincount(conf, correct, n_bins):
        which = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
        c = torch.bincount(which, conf.double(), minlength=n_bins)
        a = torch.bincount(which, correct.double(), minlength=n_bins)
        return float(((a - c).abs()).sum() / len(conf))  # n * |mean a - mean c| = |sum a - sum c|

    assert "3 cases" in passes(course.check_expected_calibration_error, ece, capsys)
    passes(course.check_expected_calibration_error, with_bincount, capsys)


def unweighted(conf, correct, n_bins):
    which = (conf * n_bins).long().clamp(max=n_bins - 1)
    gaps = [(correct[which == b].float().mean() - conf[which == b].mean()).abs() for b in range(n_bins)
            if (which == b).any()]
    return sum(gaps) / len(gaps)


def signed(conf, correct, n_bins):
    which = (conf * n_bins).long().clamp(max=n_bins - 1)
    return sum((which == b).sum() / len(conf) * (correct[which == b].float().mean() - conf[which == b].mean())
               for b in range(n_bins) if (which == b).any())


def drops_ones(conf, correct, n_bins):
    which = (conf * n_bins).long()
    return sum((which == b).sum() / len(conf) * (correct[which == b].float().mean() - conf[which == b].mean()).abs()
               for b in range(n_bins) if (which == b).any())


@pytest.mark.parametrize("answer, hint", [
    (unweighted, "weight each bin"),
    (signed, "signed"),
    (lambda conf, correct, n_bins: (correct.float().mean() - conf.mean()).abs(), "one bin for everything"),
    (drops_ones, "exactly 1 is left out"),
])
def test_ece_known_mistakes(answer, hint):
    fails(course.check_expected_calibration_error, answer, f"Probably.*{hint}")


# ---------------------------------------------------------------------------- multiple choice


def test_choose_option_right_answers(capsys):
    def per_byte(log_likelihoods, n_bytes):
        scores = [lp / n for lp, n in zip(log_likelihoods, n_bytes)]
        return scores.index(max(scores))

    def with_torch(log_likelihoods, n_bytes):
        return (torch.tensor(log_likelihoods) / torch.tensor(n_bytes)).argmax()  # a 0-d tensor

    assert "3 questions" in passes(course.check_choose_option, per_byte, capsys)
    passes(course.check_choose_option, with_torch, capsys)


@pytest.mark.parametrize("answer, hint", [
    (lambda lp, n: lp.index(max(lp)), "favours short options"),
    (lambda lp, n: min(range(len(lp)), key=lambda i: lp[i] / n[i]), "least likely"),
    (lambda lp, n: max(range(len(lp)), key=lambda i: lp[i] * n[i]), "divide by them"),
])
def test_choose_option_known_mistakes(answer, hint):
    fails(course.check_choose_option, answer, f"Probably.*{hint}")


def test_choose_option_refuses_what_is_not_an_index():
    fails(course.check_choose_option, lambda lp, n: "first", "return an int")


# ---------------------------------------------------------------------------- an earlier checkpoint


def test_shakespeare_model_at_an_earlier_step():
    last = course.shakespeare_model(progress=False)
    assert course.shakespeare_model_at(course.SHAKESPEARE_TRAINING["max_iters"]).state_dict().keys() == \
        last.state_dict().keys()
    earlier = course.shakespeare_model_at(750)
    assert not earlier.training
    assert any(not torch.equal(a, b) for a, b in zip(earlier.state_dict().values(), last.state_dict().values()))
    with pytest.raises(ValueError, match="step"):
        course.shakespeare_model_at(0)
    with pytest.raises(ValueError, match="step"):
        course.shakespeare_model_at(5000)
