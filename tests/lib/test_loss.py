"""The autoregressive loss shifts by one, ignores what it is told to, and matches hand counts."""

import math

import pytest
import torch
import torch.nn.functional as F

from mini_gpt.loss import autoregressive_loss, next_token_accuracy, perplexity


def hand_loss(logits, tokens, ignore_index=-100):
    """-log p(next token), averaged over the scored positions, with explicit loops."""
    B, T, _ = logits.shape
    total, count = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            target = int(tokens[b, t + 1])
            if target == ignore_index:
                continue
            total -= torch.log_softmax(logits[b, t].double(), -1)[target].item()
            count += 1
    return total / count


def test_matches_cross_entropy_on_a_manual_shift():
    torch.manual_seed(0)
    logits = torch.randn(3, 10, 17) * 3
    tokens = torch.randint(0, 17, (3, 10))
    loss = autoregressive_loss(logits, tokens)
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, 17), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, manual, rtol=0, atol=1e-6)
    assert math.isclose(loss.item(), hand_loss(logits, tokens), rel_tol=1e-5)
    # not the unshifted loss: position t predicts t+1, not t
    assert not math.isclose(loss.item(), F.cross_entropy(logits.reshape(-1, 17), tokens.reshape(-1)).item())


def test_ignore_index_leaves_targets_out():
    torch.manual_seed(1)
    logits = torch.randn(2, 8, 11)
    tokens = torch.randint(0, 11, (2, 8))
    tokens[0, 5:] = -100  # padding at the end of row 0
    tokens[1, 3] = -100
    loss = autoregressive_loss(logits, tokens)
    assert math.isclose(loss.item(), hand_loss(logits, tokens), rel_tol=1e-5)
    # any id can be the ignored one, e.g. a real padding token id
    custom_tokens = torch.where(tokens == -100, 10, tokens)
    custom = autoregressive_loss(logits, custom_tokens, ignore_index=10)
    assert math.isclose(custom.item(), hand_loss(logits, custom_tokens, ignore_index=10), rel_tol=1e-5)
    assert not math.isclose(custom.item(), autoregressive_loss(logits, custom_tokens).item())


def test_last_position_gets_no_gradient():
    # the last logits have no next token in the batch, the first token is never a target
    logits = torch.randn(2, 6, 5, requires_grad=True)
    autoregressive_loss(logits, torch.randint(0, 5, (2, 6))).backward()
    assert (logits.grad[:, -1] == 0).all()
    assert (logits.grad[:, :-1].abs().sum(-1) > 0).all()


def test_uniform_logits_give_log_vocab_and_perplexity_vocab():
    V = 50
    loss = autoregressive_loss(torch.zeros(2, 9, V), torch.randint(0, V, (2, 9)))
    assert math.isclose(loss.item(), math.log(V), rel_tol=1e-6)
    assert math.isclose(perplexity(loss).item(), V, rel_tol=1e-5)


def test_perplexity_is_exp():
    assert math.isclose(perplexity(2.0), math.exp(2.0))
    assert isinstance(perplexity(1.5), float)
    t = torch.tensor([0.0, 1.0, 3.0])
    torch.testing.assert_close(perplexity(t), torch.exp(t))
    assert perplexity(1e6) == math.inf


def test_bf16_logits_are_scored_in_fp32():
    torch.manual_seed(2)
    logits = torch.randn(2, 16, 1000) * 4
    tokens = torch.randint(0, 1000, (2, 16))
    ref = autoregressive_loss(logits.bfloat16().float(), tokens)
    got = autoregressive_loss(logits.bfloat16(), tokens)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_next_token_accuracy_against_a_hand_count():
    torch.manual_seed(3)
    logits = torch.randn(4, 7, 6)
    tokens = torch.randint(0, 6, (4, 7))
    tokens[2, 4] = -100
    # make some predictions right on purpose
    tokens[0, 1:] = logits[0, :-1].argmax(-1)
    hits = scored = 0
    for b in range(4):
        for t in range(6):
            if tokens[b, t + 1] == -100:
                continue
            scored += 1
            best = max(range(6), key=lambda v: logits[b, t, v].item())
            hits += best == tokens[b, t + 1].item()
    acc = next_token_accuracy(logits, tokens)
    assert math.isclose(acc.item(), hits / scored, rel_tol=1e-6)
    assert hits >= 6


def test_shape_errors_name_both_arguments():
    with pytest.raises(ValueError, match=r"logits.*tokens.*\(2, 5, 7\).*\(2, 6\)"):
        autoregressive_loss(torch.zeros(2, 5, 7), torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits.*tokens.*\(2, 5\).*\(2, 5\)"):
        autoregressive_loss(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="T >= 2"):
        autoregressive_loss(torch.zeros(2, 1, 7), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="T >= 2"):
        next_token_accuracy(torch.zeros(2, 1, 7), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens.*integer"):
        autoregressive_loss(torch.zeros(2, 5, 7), torch.zeros(2, 5))
