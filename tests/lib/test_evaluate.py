"""mini_gpt.evaluate: bits per byte, windowed evaluation, calibration, diversity, multiple choice, error bars."""

import math

import numpy as np
import pytest
import torch

from mini_gpt import GPT
from mini_gpt.evaluate import (
    ChoiceItem,
    bits_per_byte,
    bootstrap_interval,
    calibration_bins,
    distinct_n,
    evaluate_text,
    evaluate_tokens,
    expected_calibration_error,
    multiple_choice,
    next_line_task,
    option_log_likelihoods,
    repetition_rate,
)
from mini_gpt.loss import autoregressive_loss
from mini_gpt.tokenizer import CharTokenizer


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


# ---------------------------------------------------------------------------- windowed evaluation

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 3


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    from mini_gpt import GPTConfig

    tok = CharTokenizer.from_text(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    return model, tok


def by_hand(model, ids, window, stride):
    """Each target scored once, by the first window (in text order) that reaches it from its second token on."""
    scored = {}
    for begin in range(0, len(ids) - 1, stride):
        x = torch.tensor([ids[begin:begin + window]])
        with torch.no_grad():
            logp = model(x).log_softmax(-1)[0]
        for t in range(1, x.shape[1]):
            scored.setdefault(begin + t, (-logp[t - 1, x[0, t]].item(), t - 1))
        if begin + window >= len(ids):
            break
    return [scored[k] for k in sorted(scored)]


@pytest.mark.parametrize("window, stride, batch_size", [(16, 8, 3), (16, 5, 1), (10, 3, 8), (16, 16, 2), (7, 1, 4)])
def test_evaluate_text_scores_each_token_once_with_the_most_context(tiny, window, stride, batch_size):
    model, tok = tiny
    text = TEXT[:300]
    ids = tok.encode(text)
    result = evaluate_text(model, tok, text, window=window, stride=stride, batch_size=batch_size)
    expected = by_hand(model, ids, window, stride)
    assert result.n_tokens == len(expected)
    assert torch.allclose(result.losses, torch.tensor([e[0] for e in expected]), atol=1e-5)
    assert result.positions.tolist() == [e[1] for e in expected]
    if stride < window:  # every token after the first is scored, with at least window - stride of context
        assert result.n_tokens == len(ids) - 1 and result.positions[window - 1:].min() >= window - stride - 1
    assert result.loss == pytest.approx(result.losses.double().mean().item())
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(bits_per_byte(result.loss, result.n_tokens, result.n_bytes))


def test_stride_equal_to_the_window_is_plain_evaluation(tiny):
    model, tok = tiny
    ids = torch.tensor(tok.encode(TEXT))
    n = (len(ids) // 16) * 16
    blocks = ids[:n].view(-1, 16)
    with torch.no_grad():
        logits = model(blocks)
    plain = autoregressive_loss(logits, blocks)
    accuracy = (logits[:, :-1].argmax(-1) == blocks[:, 1:]).double().mean()
    result = evaluate_tokens(model, ids[:n], n_bytes=n - 1, stride=16)
    assert result.loss == pytest.approx(plain.item(), abs=1e-6) and result.n_tokens == blocks[:, 1:].numel()
    assert result.accuracy == pytest.approx(accuracy.item())


def test_confidence_and_correct_are_the_top_token(tiny):
    model, tok = tiny
    ids = torch.tensor([tok.encode(TEXT[:16])])
    with torch.no_grad():
        probs = model(ids).softmax(-1)[0, :-1]
    result = evaluate_text(model, tok, TEXT[:16])
    assert torch.allclose(result.confidence, probs.max(-1).values, atol=1e-6)
    assert torch.equal(result.correct, probs.argmax(-1) == ids[0, 1:])


def test_a_smaller_stride_gives_more_context_and_a_lower_loss():
    from mini_gpt import course

    model, tok = course.shakespeare_model(progress=False), course.char_tokenizer()
    text = course.shakespeare_text()[-4000:]
    blocks, overlapping = (evaluate_text(model, tok, text, stride=s) for s in (128, 32))
    assert overlapping.n_tokens == len(text) - 1 > blocks.n_tokens
    assert overlapping.loss < blocks.loss  # most tokens see >= 96 characters instead of 0..127


def test_bits_per_byte_counts_the_bytes_of_the_scored_text(tiny):
    model, _ = tiny
    tok = CharTokenizer.from_text("aé")
    result = evaluate_text(model, tok, "aéaéa")  # é is 2 bytes; the first 'a' is only context
    assert result.n_tokens == 4 and result.n_bytes == 6


def test_windowed_perplexity_equals_transformers():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours = GPT.from_gpt2(hf.state_dict(), n_head=4).eval()
    ids = torch.randint(0, 50, (101,), generator=torch.Generator().manual_seed(2))
    window, stride = 24, 10
    # transformers' perplexity guide: labels -100 for what an earlier window already scored
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        x = ids[begin:end][None]
        labels = x.clone()
        labels[:, :-(end - prev_end)] = -100
        with torch.no_grad():
            loss = hf(x, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll, count, prev_end = nll + loss.item() * n, count + n, end
        if end == len(ids):
            break
    result = evaluate_tokens(ours, ids, n_bytes=100, window=window, stride=stride)
    assert result.n_tokens == count == 100
    assert result.loss == pytest.approx(nll / count, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


@pytest.mark.parametrize("kwargs, name, error", [
    (dict(text=""), "text", ValueError),
    (dict(text="a"), "text", ValueError),
    (dict(text=b"ab"), "text", TypeError),
    (dict(stride=0), "stride", ValueError),
    (dict(stride=17), "stride", ValueError),
    (dict(stride=-1), "stride", ValueError),
    (dict(stride=2.0), "stride", TypeError),
    (dict(window=17), "window", ValueError),
    (dict(window=1), "window", ValueError),
    (dict(batch_size=0), "batch_size", ValueError),
])
def test_evaluate_text_refuses_bad_input(tiny, kwargs, name, error):
    model, tok = tiny
    kwargs = {"text": TEXT, **kwargs}
    with pytest.raises(error, match=name):
        evaluate_text(model, tok, **kwargs)


def test_evaluate_tokens_refuses_bad_tokens(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="tokens"):
        evaluate_tokens(model, [3], n_bytes=1)
    with pytest.raises(TypeError, match="tokens"):
        evaluate_tokens(model, torch.zeros(2, 4, dtype=torch.long), n_bytes=1)
    with pytest.raises(TypeError, match="tokens"):
        evaluate_tokens(model, [1.5, 2.0], n_bytes=1)
    with pytest.raises(ValueError, match="n_bytes"):
        evaluate_tokens(model, [1, 2, 3], n_bytes=0)


# ---------------------------------------------------------------------------- calibration


def test_calibration_by_hand():
    conf = [0.05, 0.15, 0.18, 0.55, 0.95, 1.0]
    correct = [False, True, False, True, True, False]
    cal = calibration_bins(conf, correct, n_bins=10)
    assert cal.count.tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]  # 1.0 goes in the last bin
    assert cal.confidence[1].item() == pytest.approx(0.165) and cal.accuracy[1].item() == pytest.approx(0.5)
    assert math.isnan(cal.confidence[2].item()) and math.isnan(cal.accuracy[2].item())
    ece = (1 * 0.05 + 2 * abs(0.5 - 0.165) + 1 * abs(1 - 0.55) + 2 * abs(0.5 - 0.975)) / 6
    assert cal.ece == pytest.approx(ece)
    assert expected_calibration_error(torch.tensor(conf), torch.tensor(correct), 10) == pytest.approx(ece)
    assert cal.edges.tolist() == pytest.approx([i / 10 for i in range(11)])


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_does_not():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(20000, generator=g)
    correct = torch.rand(20000, generator=g) < conf  # right exactly as often as it is sure
    assert expected_calibration_error(conf, correct) < 0.02
    assert expected_calibration_error(conf.sqrt(), correct) > 0.1
    assert expected_calibration_error([0.5, 0.5], [True, False], n_bins=1) == 0.0


@pytest.mark.parametrize("args, name", [
    (([], []), "confidence"),
    (([0.5, 0.2], [True]), "same length"),
    (([1.5], [True]), "confidence"),
    (([0.5], [2]), "correct"),
    (([0.5], [True], 0), "n_bins"),
])
def test_calibration_refuses_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        calibration_bins(*args)


# ---------------------------------------------------------------------------- diversity


def test_distinct_n_by_hand():
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)  # n-grams are pooled across samples
    assert distinct_n(["abab", "ab"], 1) == pytest.approx(2 / 6)
    assert distinct_n([torch.tensor([5, 5, 5])], 1) == pytest.approx(1 / 3)
    assert distinct_n([[1, 2, 3], [9]], 3) == 1.0  # a sequence shorter than n has no n-gram


def test_repetition_rate_by_hand():
    assert repetition_rate(["abcabc"], 3) == pytest.approx(1 / 4)  # abc bca cab abc: the last abc repeats
    assert repetition_rate([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(1 / 4)  # only within a sequence
    assert repetition_rate(["abcdef"], 2) == 0.0


@pytest.mark.parametrize("fn", [distinct_n, repetition_rate])
def test_diversity_refuses_bad_input(fn):
    with pytest.raises(ValueError, match="n must be"):
        fn([[1, 2]], 0)
    with pytest.raises(TypeError, match="n must be"):
        fn([[1, 2]], 1.5)
    with pytest.raises(TypeError, match="sequences"):
        fn("abc", 1)
    with pytest.raises(TypeError, match="sequences"):
        fn([], 1)
    with pytest.raises(ValueError, match="sequences"):
        fn([[1], [2]], 2)


# ---------------------------------------------------------------------------- multiple choice


def test_option_log_likelihoods_by_hand(tiny):
    model, tok = tiny
    context, options = "Spe", ["ak, speak.", "e", "ak"]
    scored = option_log_likelihoods(model, tok, context, options)
    for option, (logp, n_tokens, n_bytes) in zip(options, scored, strict=True):
        ids = torch.tensor([tok.encode(context + option)])
        with torch.no_grad():
            lp = model(ids).log_softmax(-1)[0]
        c = len(tok.encode(context))
        expected = sum(lp[t - 1, ids[0, t]].item() for t in range(c, ids.shape[1]))
        assert logp == pytest.approx(expected, abs=1e-4) and n_tokens == len(option) and n_bytes == len(option)


def test_multiple_choice_picks_the_likeliest_option_per_byte(tiny):
    model, tok = tiny
    items = [ChoiceItem("All:\nSpe", ("ak, speak.", "e", "ak"), 0), ChoiceItem("First", (" Citizen", "eee"), 1)]
    for normalize, div in [("byte", 2), ("token", 1), ("sum", None)]:
        result = multiple_choice(model, tok, items, normalize=normalize)
        for item, chosen in zip(items, result.chosen, strict=True):
            scored = option_log_likelihoods(model, tok, item.context, item.options)
            scores = [s[0] / (s[div] if div else 1) for s in scored]
            assert chosen == scores.index(max(scores))
        assert result.accuracy == pytest.approx(sum(c == i.answer for c, i in zip(result.chosen, items)) / 2)
        assert result.chance == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_next_line_task_is_the_real_rest_of_a_line_among_others():
    from mini_gpt import course

    text = course.shakespeare_text()[-20000:]
    items = next_line_task(text, 30, n_options=4, seed=3)
    assert items == next_line_task(text, 30, n_options=4, seed=3) and len(items) == 30
    assert sorted({i.answer for i in items}) == [0, 1, 2, 3]  # the right option is anywhere
    for item in items:
        assert (item.context + item.options[item.answer]) in text  # the context and the true rest are contiguous
        assert len(set(item.options)) == 4 and all(o.endswith("\n") for o in item.options)


def test_the_trained_model_beats_chance_on_the_task():
    from mini_gpt import course

    model, tok = course.shakespeare_model(progress=False), course.char_tokenizer()
    text = course.shakespeare_text()
    result = multiple_choice(model, tok, next_line_task(text[int(len(text) * 0.9):], 200, seed=0))
    interval = bootstrap_interval(result.correct.float())
    assert result.chance == 0.25 and interval.low > 0.25


def test_multiple_choice_refuses_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="options"):
        ChoiceItem("ctx", ("one",), 0)
    with pytest.raises(ValueError, match="options"):
        ChoiceItem("ctx", ("one", ""), 0)
    with pytest.raises(ValueError, match="answer"):
        ChoiceItem("ctx", ("a", "b"), 2)
    with pytest.raises(ValueError, match="context"):
        ChoiceItem("", ("a", "b"), 0)
    with pytest.raises(ValueError, match="options"):
        option_log_likelihoods(model, tok, "All", ["a"])
    with pytest.raises(ValueError, match="options"):
        option_log_likelihoods(model, tok, "All", ["a", "A" * 16])  # longer than the model's context
    with pytest.raises(ValueError, match="normalize"):
        multiple_choice(model, tok, [ChoiceItem("All", ("a", "b"), 0)], normalize="char")
    with pytest.raises(ValueError, match="items"):
        multiple_choice(model, tok, [])
    with pytest.raises(ValueError, match="n_options"):
        next_line_task(TEXT, 2, n_options=1)
    with pytest.raises(ValueError, match="n_items"):
        next_line_task(TEXT, 0)
    with pytest.raises(ValueError, match="too few"):
        next_line_task(TEXT, 1000)


# ---------------------------------------------------------------------------- error bars


def test_bootstrap_interval_holds_the_estimate_and_shrinks_with_more_data():
    g = torch.Generator().manual_seed(0)
    widths = []
    for n in (100, 1000, 10000):
        x = torch.randn(n, generator=g) + 3
        iv = bootstrap_interval(x, n_resamples=500)
        assert iv.estimate == pytest.approx(x.double().mean().item()) and iv.low < iv.estimate < iv.high
        widths.append(iv.high - iv.low)
        # the normal theory's 95% interval is +-1.96 standard errors
        assert widths[-1] == pytest.approx(2 * 1.96 * x.std().item() / math.sqrt(n), rel=0.2)
    assert widths[0] > widths[1] > widths[2]
    assert bootstrap_interval(x, seed=1) == bootstrap_interval(x, seed=1)


def test_bootstrap_of_any_statistic_and_in_blocks():
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(2000, generator=g)
    rows = torch.stack([conf, (torch.rand(2000, generator=g) < conf).double()], 1)
    iv = bootstrap_interval(rows, lambda r: expected_calibration_error(r[:, 0], r[:, 1]), n_resamples=100)
    assert iv.estimate == pytest.approx(expected_calibration_error(rows[:, 0], rows[:, 1]))
    assert iv.low <= iv.estimate <= iv.high
    # correlated values (runs of 50 equal ones): resampling blocks widens the interval, as it should
    runs = torch.randn(40, generator=g).repeat_interleave(50)
    plain, blocked = bootstrap_interval(runs), bootstrap_interval(runs, block=50)
    assert (blocked.high - blocked.low) > 3 * (plain.high - plain.low)
    assert str(plain).count("[") == 1


@pytest.mark.parametrize("args, kwargs, name, error", [
    (([1.0],), {}, "values", ValueError),
    ((torch.ones(3, 2),), {}, "values", ValueError),
    (([1.0, 2.0],), dict(confidence=1.0), "confidence", ValueError),
    (([1.0, 2.0],), dict(confidence=0), "confidence", ValueError),
    (([1.0, 2.0],), dict(n_resamples=0), "n_resamples", ValueError),
    (([1.0, 2.0],), dict(block=3), "block", ValueError),
    (([1.0, 2.0],), dict(seed=-1), "seed", ValueError),
    (([1.0, 2.0], lambda x: x), {}, "statistic", ValueError),
])
def test_bootstrap_refuses_bad_input(args, kwargs, name, error):
    with pytest.raises(error, match=name):
        bootstrap_interval(*args, **kwargs)


def test_next_line_task_keeps_options_short_when_asked():
    from mini_gpt import course

    items = next_line_task(course.shakespeare_text()[-20000:], 40, max_chars=12, seed=0)
    assert all(len(o) <= 12 for item in items for o in item.options)
    with pytest.raises(ValueError, match="max_chars"):
        next_line_task(TEXT, 1, max_chars=2)


# ---------------------------------------------------------------------------- the quality of samples


def test_sample_quality_measures_the_samples_it_draws(tiny):
    from mini_gpt import generate
    from mini_gpt.generation_quality import sample_quality

    model, tok = tiny
    sweep = sample_quality(model, tok, TEXT, [0.5, (1.0, 0.9)], prompt="A", n_samples=3, length=12, n=2, seed=4)
    assert [(r.temperature, r.top_p) for r in sweep.rows] == [(0.5, None), (1.0, 0.9)]
    start = torch.tensor([tok.encode("A")] * 3)
    for row, options in zip(sweep.rows, [dict(temperature=0.5), dict(temperature=1.0, top_p=0.9)], strict=True):
        out = generate(model, start, 12, seed=4, **options)
        new = [r[1:].tolist() for r in out]
        assert row.samples == tuple(tok.decode(ids) for ids in new)
        assert row.distinct == distinct_n(new, 2) and row.repetition == repetition_rate(new, 2)
        nats = sum(evaluate_tokens(model, r, n_bytes=12).losses.double().sum().item() for r in out)
        assert row.bits_per_byte == pytest.approx(nats / (math.log(2) * 36))
    assert sweep.reference_bits_per_byte == pytest.approx(evaluate_text(model, tok, TEXT).bits_per_byte)
    assert sweep.gap(sweep.rows[0]) == pytest.approx(sweep.rows[0].bits_per_byte - sweep.reference_bits_per_byte)
    assert sweep.table()[1]["distinct_2"] == sweep.rows[1].distinct
    with pytest.raises(ValueError, match="temperature"):
        sample_quality(model, tok, TEXT, [0.0])
    with pytest.raises(ValueError, match="top_p"):
        sample_quality(model, tok, TEXT, [(1.0, 1.5)])
    with pytest.raises(ValueError, match="settings"):
        sample_quality(model, tok, TEXT, [])
    with pytest.raises(ValueError, match="length"):
        sample_quality(model, tok, TEXT, [1.0], length=0)
