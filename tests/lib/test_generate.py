"""Sampling: greedy, temperature, top-k/top-p/min-p, repetition penalty, beam search, KV cache,
left-padded batches, the sliding window, streaming, and the `mini-gpt sample` command.

References: transformers' own `generate` on the same (random) GPT-2 weights for greedy and beam
search; hand computations and float64 recomputations for the filters; each prompt run alone for
batches; the cache-free recomputation for the KV cache.
"""

import dataclasses
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mini_gpt import GPT, GenerationConfig, GPTConfig, generate, stream
from mini_gpt.generate import (
    apply_repetition_penalty,
    min_p_filter,
    next_token_logits,
    pad_prompts,
    top_k_filter,
    top_p_filter,
)

V, BLOCK = 40, 24


def tiny_gpt(pos_encoding="learned", vocab_size=V, block_size=BLOCK, n_layer=2, n_embd=32, seed=0):
    """A small random GPT whose logits are spread out (std ~2), so the argmax has no near-ties."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2,
                          n_embd=n_embd, pos_encoding=pos_encoding)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module", params=["learned", "sinusoidal", "rope"])
def model(request):
    return tiny_gpt(request.param)


@pytest.fixture(scope="module")
def learned():
    return tiny_gpt("learned")


def prompts(B=2, T=5, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# KV cache: the same tokens as recomputing everything


def test_cache_gives_the_same_tokens(model):
    idx = prompts()
    for kwargs in (dict(do_sample=False), dict(seed=7), dict(seed=7, temperature=0.7, top_k=10, top_p=0.9),
                   dict(do_sample=False, num_beams=3), dict(do_sample=False, repetition_penalty=1.5)):
        with_cache = generate(model, idx, 12, use_cache=True, **kwargs)
        without = generate(model, idx, 12, use_cache=False, **kwargs)
        assert with_cache.shape == (2, 17)
        assert torch.equal(with_cache, without), kwargs
        assert torch.equal(with_cache[:, :5], idx)  # the prompt comes back in front


def test_cache_with_the_sliding_window(learned):
    # 6 + 40 > block_size = 24: the window slides, with and without the cache alike
    idx = prompts(T=6)
    for kwargs in (dict(do_sample=False), dict(seed=3), dict(do_sample=False, num_beams=2)):
        a = generate(learned, idx, 40, use_cache=True, **kwargs)
        b = generate(learned, idx, 40, use_cache=False, **kwargs)
        assert a.shape == (2, 46) and torch.equal(a, b), kwargs
    # past block_size each step sees exactly the last block_size tokens (positions 0..23 again)
    out = generate(learned, idx, 40, do_sample=False)
    for t in (BLOCK + 1, 30, 45):
        expected = learned(out[:, t - BLOCK : t])[:, -1].argmax(-1)
        assert torch.equal(out[:, t], expected)
    # a prompt longer than block_size keeps its last block_size tokens
    long = prompts(T=30)
    assert torch.equal(generate(learned, long, 5, do_sample=False)[:, 30:],
                       generate(learned, long[:, -BLOCK:], 5, do_sample=False)[:, BLOCK:])


def test_strict_refuses_to_slide(learned):
    idx = prompts(T=6)
    generate(learned, idx, BLOCK - 5, strict=True, seed=0)  # needs 6 + 19 - 1 = 24 positions: fits
    with pytest.raises(ValueError, match=r"block_size=24.*strict=False"):
        generate(learned, idx, BLOCK - 4, strict=True, seed=0)
    with pytest.raises(ValueError, match="block_size"):
        generate(learned, prompts(T=30), 1, strict=True)
    # other position encodings have no limit
    generate(tiny_gpt("rope"), idx, 40, strict=True, do_sample=False)


# ---------------------------------------------------------------------------------------------
# Batches of different lengths: left-padded, each sequence as if it were alone


BATCH = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3], [8, 9, 7, 9, 3]]


def test_pad_prompts():
    idx, mask = pad_prompts(BATCH, pad_token_id=0)
    assert idx.tolist()[1] == [0] * 6 + [5, 3]
    assert mask.tolist()[1] == [False] * 6 + [True] * 2
    assert mask.sum(1).tolist() == [8, 2, 5]


def test_left_padded_batch_equals_each_prompt_alone(model):
    batched = next_token_logits(model, BATCH)  # (3, V)
    for i, p in enumerate(BATCH):
        torch.testing.assert_close(batched[i], next_token_logits(model, [p])[0], rtol=0, atol=1e-5)

    for kwargs in (dict(do_sample=False), dict(do_sample=False, num_beams=3),
                   dict(do_sample=False, repetition_penalty=1.3)):
        out = generate(model, BATCH, 10, pad_token_id=0, **kwargs)  # (3, 8 + 10)
        assert out.shape == (3, 18)
        for i, p in enumerate(BATCH):
            alone = generate(model, [p], 10, **kwargs)
            assert torch.equal(out[i, 8:], alone[0, len(p):]), (i, kwargs)
        # a (B, T) tensor with the mask is the same as the list
        idx, mask = pad_prompts(BATCH)
        assert torch.equal(generate(model, idx, 10, attention_mask=mask.long(), **kwargs), out)
        assert torch.equal(generate(model, BATCH, 10, use_cache=False, **kwargs), out)


def test_left_padded_batch_with_the_sliding_window(learned):
    out = generate(learned, BATCH, 30, do_sample=False)  # 8 + 30 > 24 columns
    for i, p in enumerate(BATCH):
        assert torch.equal(out[i, 8:], generate(learned, [p], 30, do_sample=False)[0, len(p):])


def test_stream_yields_what_generate_returns(model):
    idx = prompts()
    steps = list(stream(model, idx, 6, seed=5, top_k=5))
    assert len(steps) == 6 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, 1), generate(model, idx, 6, seed=5, top_k=5)[:, 5:])
    beams = list(stream(model, BATCH, 6, do_sample=False, num_beams=2))
    assert torch.equal(torch.stack(beams, 1), generate(model, BATCH, 6, do_sample=False, num_beams=2)[:, 8:])


# ---------------------------------------------------------------------------------------------
# transformers' generate on the same weights


@pytest.fixture(scope="module")
def gpt2_pair():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)  # logits with std ~2.5 instead of ~0.2: no near-ties to flip
    hf.generation_config.eos_token_id = None  # each call says what it wants
    return hf, GPT.from_gpt2(hf.state_dict(), n_head=4)


def hf_generate(hf, idx, mask, n, eos, pad, **kwargs):
    # do_sample=False and no sampling warpers: greedy or plain beam search
    return hf.generate(idx, attention_mask=mask.long(), max_new_tokens=n, do_sample=False, top_k=None,
                       top_p=None, temperature=None, eos_token_id=eos, pad_token_id=pad, **kwargs)


def hf_batch():
    idx = torch.randint(1, 64, (4, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(idx, dtype=torch.bool)
    mask[0, :2] = mask[1, :4] = False  # two left-padded prompts
    idx[~mask] = 5
    return idx, mask


def test_greedy_matches_transformers(gpt2_pair):
    hf, ours = gpt2_pair
    idx, mask = hf_batch()
    full = torch.ones_like(mask)
    ref = hf_generate(hf, idx, full, 20, None, 5)
    assert torch.equal(ref, generate(ours, idx, 20, do_sample=False))
    values, counts = ref[:, 6:].unique(return_counts=True)
    eos = int(values[counts.argmax()])  # a token this model likes: the greedy runs stop early
    ref = hf_generate(hf, idx, mask, 20, eos, eos)
    out = generate(ours, idx, 20, do_sample=False, attention_mask=mask, eos_token_id=eos)
    assert torch.equal(ref, out) and out.shape[1] < 26
    ref = hf_generate(hf, idx, full, 20, None, 5, repetition_penalty=1.8)
    assert torch.equal(ref, generate(ours, idx, 20, do_sample=False, repetition_penalty=1.8))


@pytest.mark.parametrize(
    "length_penalty, early_stopping",
    [(1.0, False), (1.0, True), (2.0, "never"), (0.5, False), (-1.0, True), (2.0, False)],
)
def test_beam_search_matches_transformers(gpt2_pair, length_penalty, early_stopping):
    hf, ours = gpt2_pair
    idx, mask = hf_batch()
    kwargs = dict(num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
    # without eos every hypothesis ends at max_new_tokens
    ref = hf_generate(hf, idx, mask, 16, None, 5, **kwargs)
    assert torch.equal(ref, generate(ours, idx, 16, do_sample=False, attention_mask=mask, pad_token_id=5, **kwargs))
    # with eos: the most frequent token of those beams, so hypotheses finish at different lengths
    values, counts = ref[:, 6:].unique(return_counts=True)
    ended = 0
    for eos in values[counts.argsort(descending=True)[:2]].tolist():
        ref = hf_generate(hf, idx, mask, 16, eos, eos, **kwargs)
        out = generate(ours, idx, 16, do_sample=False, attention_mask=mask, eos_token_id=eos, **kwargs)
        assert torch.equal(ref, out), (eos, ref, out)
        ended += int((out[:, 6:] == eos).any(1).sum())  # hypotheses that ended with eos
    assert ended >= 1  # the eos path is really exercised: some winning hypothesis ended with it


# ---------------------------------------------------------------------------------------------
# Filters and penalties


def test_top_k_1_is_greedy(model):
    idx = prompts()
    assert torch.equal(generate(model, idx, 10, top_k=1, seed=0), generate(model, idx, 10, do_sample=False))
    assert torch.equal(generate(model, idx, 10, min_p=0.999, seed=1), generate(model, idx, 10, do_sample=False))


def test_top_k_filter():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0]])
    assert top_k_filter(logits, 2).isfinite().tolist() == [[False, True, False, False, True]]
    assert torch.equal(top_k_filter(logits, 10), logits)


logit_rows = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(row, p):
    logits = torch.tensor([row])
    kept = top_p_filter(logits, p).isfinite()[0]
    probs = torch.tensor(row, dtype=torch.float64).softmax(-1)
    assert kept.any()
    # the most likely tokens: every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max() - 1e-12
    mass = probs[kept].sum()
    assert mass >= p - 1e-5  # reaches p ...
    assert mass - probs[kept].min() < p + 1e-5  # ... and one token fewer would not


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.floats(0.0, 0.99))
def test_min_p_keeps_exactly_the_likely_enough(row, min_p):
    probs = torch.tensor(row, dtype=torch.float64).softmax(-1)
    ratio = probs / probs.max()
    assume(((ratio - min_p).abs() > 1e-5).all())  # no token sits on the boundary itself
    kept = min_p_filter(torch.tensor([row]), min_p).isfinite()[0]
    assert torch.equal(kept, ratio >= min_p)


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    # positive seen logits are halved, negative ones doubled; unseen tokens untouched
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0, 2.0]]


def test_repetition_penalty_in_generate(learned):
    idx = torch.tensor([[1, 2, 3, 2]])
    logits = next_token_logits(learned, idx)[0]
    seen = torch.zeros(V, dtype=torch.bool)
    seen[[1, 2, 3]] = True
    by_hand = torch.where(seen, torch.where(logits < 0, logits * 3.0, logits / 3.0), logits)
    first = generate(learned, idx, 1, do_sample=False, repetition_penalty=3.0)[0, -1]
    assert first == by_hand.argmax()


# ---------------------------------------------------------------------------------------------
# Randomness


def test_seed_reproducible_and_global_rng_untouched(model):
    idx = prompts()
    state = torch.get_rng_state()
    a = generate(model, idx, 15, seed=123, temperature=1.5)
    assert torch.equal(torch.get_rng_state(), state)  # our own generator, not the global one
    assert torch.equal(a, generate(model, idx, 15, seed=123, temperature=1.5))
    others = {tuple(generate(model, idx, 15, seed=s, temperature=1.5).flatten().tolist()) for s in range(1, 6)}
    assert len(others | {tuple(a.flatten().tolist())}) >= 4  # different seeds, (nearly always) different text


def test_sampling_frequencies_follow_softmax_over_temperature():
    small = tiny_gpt(vocab_size=6, n_layer=1, n_embd=16, seed=2)
    prompt = [[1, 4, 2]]
    n = 20000
    logits = next_token_logits(small, prompt)[0].double()
    for temperature, top_k in ((0.7, None), (1.3, None), (1.0, 3)):
        out = generate(small, prompt * n, 1, temperature=temperature, top_k=top_k, seed=0)[:, -1]
        counts = torch.bincount(out, minlength=6).double()
        scaled = logits / temperature
        if top_k is not None:
            scaled = top_k_filter(scaled[None], top_k)[0]
        expected = scaled.softmax(-1) * n
        assert counts[expected == 0].sum() == 0  # filtered tokens never come out
        live = expected > 0
        chi2 = (((counts - expected)[live] ** 2) / expected[live]).sum().item()
        # chi-square with at most 5 degrees of freedom: P(chi2 > 25) < 2e-4
        assert chi2 < 25, (temperature, top_k, counts.tolist(), expected.tolist())


# ---------------------------------------------------------------------------------------------
# eos, outputs, errors


def test_eos_stops(learned):
    idx = prompts(B=1)
    free = generate(learned, idx, 12, do_sample=False)
    eos = int(free[0, 8])  # the 4th new token
    first = (free[0, 5:] == eos).nonzero()[0].item()  # it may come even earlier
    out = generate(learned, idx, 12, do_sample=False, eos_token_id=eos)
    assert torch.equal(out, free[:, : 5 + first + 1])  # stops right after eos
    assert len(list(stream(learned, idx, 12, do_sample=False, eos_token_id=eos))) == first + 1
    # in a batch, a finished sequence pads (pad_token_id) until all are done
    two = torch.cat([idx, prompts(B=1, seed=9)])
    out = generate(learned, two, 12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    row = out[0, 5:].tolist()
    assert row[first] == eos and set(row[first + 1 :]) <= {0}


def test_output_is_an_ordinary_tensor_and_mode_is_restored(learned):
    learned.train()
    out = generate(learned, prompts(), 3, seed=0)
    assert learned.training
    learned.eval()
    out[0, 0] = 1  # not an inference tensor: free to modify
    assert not out.is_inference()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), r"temperature must be .*> 0 when sampling"),
        (dict(temperature=-1.0), r"temperature"),
        (dict(top_k=0), r"top_k must be an int >= 1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(min_p=1.0), r"min_p must be in \[0, 1\)"),
        (dict(min_p=-0.1), r"min_p must be in \[0, 1\)"),
        (dict(repetition_penalty=0.0), r"repetition_penalty must be .*> 0"),
        (dict(max_new_tokens=0), r"max_new_tokens must be an int >= 1"),
        (dict(num_beams=0), r"num_beams must be an int >= 1"),
        (dict(num_beams=2), r"num_beams=2 with do_sample=True .*not supported.*do_sample=False"),
        (dict(eos_token_id=V), r"eos_token_id must be None or an int in \[0, 39\]"),
        (dict(eos_token_id=-1), r"eos_token_id must be None or an int in \[0, 39\]"),
        (dict(early_stopping="sometimes"), r"early_stopping must be True, False or 'never'"),
        (dict(idx=torch.zeros(1, 0, dtype=torch.long)), r"idx must be a non-empty"),
        (dict(idx=[[1, 2], []]), r"prompts\[1\] is empty"),
        (dict(idx=[]), r"non-empty list"),
    ],
)
def test_bad_arguments(learned, kwargs, match):
    kwargs = {"idx": prompts(), "max_new_tokens": 3, **kwargs}
    idx, n = kwargs.pop("idx"), kwargs.pop("max_new_tokens")
    with pytest.raises(ValueError, match=match):
        generate(learned, idx, n, **kwargs)
    with pytest.raises(ValueError, match=match):  # at the call, not at the first next()
        stream(learned, idx, n, **kwargs)


def test_bad_attention_mask(learned):
    idx = prompts()
    right_padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left-padded"):
        generate(learned, idx, 2, attention_mask=right_padded)
    with pytest.raises(ValueError, match="shape of idx"):
        generate(learned, idx, 2, attention_mask=torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------
# GenerationConfig: every option, checked once


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("temperature", 0.0, ValueError), ("temperature", "hot", TypeError), ("top_k", 0, ValueError),
        ("top_k", 2.5, TypeError), ("top_p", 1.5, ValueError), ("min_p", 1.0, ValueError),
        ("repetition_penalty", float("inf"), ValueError), ("do_sample", 1, TypeError), ("num_beams", 0, ValueError),
        ("length_penalty", float("nan"), ValueError), ("early_stopping", "sometimes", ValueError),
        ("use_cache", "yes", TypeError), ("eos_token_id", 1.0, TypeError), ("pad_token_id", "0", TypeError),
        ("seed", 0.5, TypeError), ("strict", None, TypeError),
    ],
)
def test_config_names_the_bad_field(field, value, error):
    with pytest.raises(error, match=rf"^{field} must be .*got {re.escape(repr(value))}"):
        GenerationConfig(**{field: value})


def test_config_is_checked_once_and_frozen(learned, monkeypatch):
    config = GenerationConfig(temperature=0.7, top_k=5, seed=3)
    calls = []
    real = GenerationConfig.__post_init__
    monkeypatch.setattr(GenerationConfig, "__post_init__", lambda self: calls.append(1) or real(self))
    generate(learned, prompts(), 4, config=config)
    list(stream(learned, prompts(), 4, config=config))
    assert calls == []  # a config is not checked again by each call
    generate(learned, prompts(), 4, config=config, top_k=6)
    assert calls == [1]  # a keyword makes one new config, checked once
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 3
    assert config.replace(top_k=6) == GenerationConfig(temperature=0.7, top_k=6, seed=3)
    assert GenerationConfig(temperature=1, top_k=np.int64(5)) == GenerationConfig(temperature=1.0, top_k=5)


@pytest.mark.parametrize(
    "fields",
    [dict(do_sample=False), dict(seed=7, temperature=0.7, top_k=10, top_p=0.9, min_p=0.01),
     dict(do_sample=False, num_beams=3, length_penalty=0.5, eos_token_id=4),
     dict(do_sample=False, repetition_penalty=1.5, use_cache=False), dict(seed=1, eos_token_id=3, pad_token_id=7)],
)
def test_a_config_is_its_keywords(learned, fields):
    config = GenerationConfig(**fields)
    expected = generate(learned, prompts(), 12, **fields)
    assert torch.equal(generate(learned, prompts(), 12, config=config), expected)
    assert torch.equal(generate(learned, prompts(), 12, **dataclasses.asdict(config)), expected)
    streamed = torch.stack(list(stream(learned, prompts(), 12, config=config)), dim=1)
    assert torch.equal(streamed, expected[:, 5:])


def test_keywords_override_the_config(learned):
    config = GenerationConfig(do_sample=False, num_beams=3)
    assert torch.equal(generate(learned, prompts(), 10, config=config, num_beams=1),
                       generate(learned, prompts(), 10, do_sample=False))
    sampled = GenerationConfig(seed=1, temperature=0.5)
    assert torch.equal(generate(learned, prompts(), 10, config=sampled, seed=2),
                       generate(learned, prompts(), 10, seed=2, temperature=0.5))
    with pytest.raises(ValueError, match="num_beams=2 with do_sample=True"):  # the result is checked
        generate(learned, prompts(), 10, config=sampled, num_beams=2)


def test_options_and_config_errors(learned):
    with pytest.raises(TypeError, match=r"generate\(\) got an unexpected keyword argument 'topk'.*top_k"):
        generate(learned, prompts(), 3, topk=3)
    with pytest.raises(TypeError, match=r"stream\(\) got an unexpected keyword argument 'topk'"):
        stream(learned, prompts(), 3, topk=3)
    with pytest.raises(TypeError, match="config must be a GenerationConfig"):
        generate(learned, prompts(), 3, config={"top_k": 3})
    # the model-dependent checks stay at the call
    with pytest.raises(ValueError, match=r"pad_token_id must be None or an int in \[0, 39\]"):
        generate(learned, prompts(), 3, config=GenerationConfig(pad_token_id=40))
    with pytest.raises(ValueError, match=r"block_size=24.*strict=False"):
        generate(learned, prompts(T=6), 20, config=GenerationConfig(strict=True))
    # help() and autocompletion see every option, with its default
    for fn in (generate, stream):
        params = inspect.signature(fn).parameters
        for field in dataclasses.fields(GenerationConfig):
            assert params[field.name].default == field.default and params[field.name].kind is params["config"].kind


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mini_gpt.data import load_dataset
    from mini_gpt.train import TrainConfig, train

    out = tmp_path_factory.mktemp("sample_ckpt")
    data = load_dataset("shakespeare", "char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
    train(model, data, TrainConfig(out_dir=str(out), max_iters=5, batch_size=4, eval_interval=5, eval_iters=1,
                                   warmup_iters=1, device="cpu", dtype="float32", progress=False))
    return out


def sample_cli(*args, stdin=""):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mini_gpt.cli", "sample", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120)


def test_interactive_sample(checkpoint):
    common = ["--ckpt", str(checkpoint), "--device", "cpu", "--max-new-tokens", "12", "--seed", "3"]
    proc = sample_cli(*common, "--interactive", "--show-probs", "3", stdin="ROMEO:\n\nJULIET:\n:q\nnot read\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # for each prompt: a header, K probability lines (best first), then prompt + continuation
    assert lines[0] == "next-token probabilities after 'ROMEO:':"
    probs = [float(line.split()[0]) for line in lines[1:4]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert lines[4].startswith("ROMEO:")
    assert any(line.startswith("JULIET:") for line in lines[5:]) and "not read" not in proc.stdout
    # the same seed gives what the one-shot command prints; EOF (Ctrl-D) ends cleanly too
    one = sample_cli(*common, "--prompt", "ROMEO:")
    assert one.returncode == 0 and one.stdout.rstrip("\n") in proc.stdout
    eof = sample_cli(*common, "--interactive", "--num-beams", "2", stdin="ROMEO:")
    assert eof.returncode == 0 and eof.stdout.startswith("ROMEO:")


@pytest.mark.parametrize(
    "flag, value", [("--top-p", "0"), ("--min-p", "1"), ("--repetition-penalty", "0"), ("--num-beams", "0"),
                    ("--top-k", "-2"), ("--show-probs", "x"), ("--temperature", "0")],
)
def test_sample_bad_flags(capsys, flag, value):
    from mini_gpt.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["sample", "--ckpt", "x", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err


def test_text_pieces_hold_back_incomplete_characters():
    from mini_gpt.cli import _text_pieces
    from mini_gpt.tokenizer import BPETokenizer

    bpe = BPETokenizer("gpt2")
    text = "naïve café — 日本語の文章 🙂!"
    ids = bpe.encode(text)
    pieces = list(_text_pieces(iter(ids), bpe))
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert len(pieces) < len(ids)  # some characters did span several tokens
