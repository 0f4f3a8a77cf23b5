import copy
from collections import Counter

import pytest
import torch

from mini_gpt import GPT, GPTConfig
from mini_gpt.data import load_dataset
from mini_gpt.finetune import (
    SCRAMBLES,
    GPTClassifier,
    _reverse_words,
    _shuffle_letters,
    _shuffle_words,
    build_classifier,
    classification_metrics,
    evaluate_classifier,
    finetune,
    scramble_task,
    speaker_task,
)
from mini_gpt.lora import load_lora, lora_layers, save_lora
from mini_gpt.train import TrainConfig, train

TINY = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64)


def ft_config(**changes):
    base = {"batch_size": 32, "max_iters": 150, "learning_rate": 1e-2, "warmup_iters": 10, "weight_decay": 0.0,
            "eval_interval": 10**6, "log_interval": 50, "device": "cpu", "dtype": "float32", "progress": False,
            "seed": 0}
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def task():
    return scramble_task(max_len=64, max_examples=4000)


@pytest.fixture(scope="module")
def pretrained():
    """A tiny GPT pre-trained on Tiny Shakespeare for 300 steps (a few seconds): it has learned
    which letters follow which, not much more, and that is enough for LoRA to build on."""
    torch.manual_seed(0)
    gpt = GPT(TINY)
    train(gpt, load_dataset("shakespeare", "char"),
          TrainConfig(batch_size=16, max_iters=300, learning_rate=3e-3, warmup_iters=20, eval_interval=10**6,
                      log_interval=10**6, device="cpu", dtype="float32", progress=False, seed=0))
    return gpt.eval()


# ------------------------------------------------------------------------------ the classifier


def test_hidden_states_are_the_gpt_without_its_head():
    torch.manual_seed(0)
    gpt = GPT(TINY).eval()
    idx = torch.randint(0, 65, (3, 20))
    seen = []
    handle = gpt.transformer.ln_f.register_forward_hook(lambda m, args, out: seen.append(out))
    logits = gpt(idx)
    handle.remove()
    h = gpt.hidden_states(idx)
    assert h.shape == (3, 20, 64) and torch.equal(h, seen[0])  # ln_f's output, as a hook catches it
    torch.testing.assert_close(gpt.lm_head(h), logits, rtol=0, atol=0)  # forward is exactly hidden_states + head
    # the head is the token embedding matrix (tied weights): logits = h @ wte^T
    torch.testing.assert_close(h @ gpt.transformer.wte.weight.T, logits, rtol=1e-5, atol=1e-5)
    # with return_attention (the written-out attention path), the same as forward's
    logits_att, attentions = gpt(idx, return_attention=True)
    h_att, att = gpt.hidden_states(idx, return_attention=True)
    assert torch.equal(gpt.lm_head(h_att), logits_att)
    assert all(torch.equal(a, b) for a, b in zip(att, attentions, strict=True))
    # the classifier reads them directly: lm_head (the 65-column projection) never runs
    clf = GPTClassifier(gpt, num_classes=3, pad_token_id=0).eval()

    def refuse(module, args):
        raise AssertionError("lm_head ran")

    gpt.lm_head.register_forward_pre_hook(refuse)
    with torch.no_grad():
        torch.testing.assert_close(clf(idx), clf.head(h[:, -1]), rtol=1e-5, atol=1e-6)


def test_right_padding_changes_nothing():
    torch.manual_seed(0)
    clf = GPTClassifier(GPT(TINY), num_classes=3, pad_token_id=0).eval()
    short, long = torch.randint(1, 65, (7,)), torch.randint(1, 65, (19,))
    batch = torch.zeros(2, 19, dtype=torch.long)  # right-padded with pad_token_id = 0
    batch[0, :7], batch[1] = short, long
    both = clf(batch, torch.tensor([7, 19]))
    torch.testing.assert_close(both[0], clf(short[None])[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[1], clf(long[None])[0], rtol=1e-5, atol=1e-6)
    # without lengths, the last token that is not padding is used
    torch.testing.assert_close(clf(batch), both, rtol=0, atol=0)
    # it is the hidden state of that token (here position 6) that the head reads
    h = clf.gpt.hidden_states(batch)
    torch.testing.assert_close(both[0], clf.head(h[0, 6]), rtol=1e-6, atol=1e-7)


def test_classifier_bad_arguments():
    gpt = GPT(TINY)
    with pytest.raises(ValueError, match="num_classes"):
        GPTClassifier(gpt, 1, 0)
    with pytest.raises(ValueError, match="pad_token_id"):
        GPTClassifier(gpt, 2, 65)
    with pytest.raises(TypeError, match="gpt"):
        GPTClassifier(torch.nn.Linear(2, 2), 2, 0)
    clf = GPTClassifier(gpt, 2, 0)
    with pytest.raises(ValueError, match="real tokens"):
        clf(torch.tensor([[5, 0, 0], [0, 0, 0]]))  # the second row is all padding
    with pytest.raises(ValueError, match="lengths"):
        clf(torch.tensor([[5, 6]]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="method"):
        build_classifier(gpt, 2, 0, method="adapters")


def test_metrics_by_hand():
    # true 0: 3 right, 1 called 1; true 1: 2 right; true 2: 1 right, 1 called 0; nothing is class 3
    confusion = torch.tensor([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    m = classification_metrics(confusion)
    assert m["accuracy"] == pytest.approx(6 / 8)
    f1 = [2 * 3 / (2 * 3 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]  # class 3 never occurs
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


# ------------------------------------------------------------------------------ the tasks


def test_scramblers_keep_every_character():
    import random

    text = "Why, then, O brawling love! O loving hate!\nO any thing, of nothing first create!"
    for scramble in (_shuffle_words, _shuffle_letters, _reverse_words):
        out = scramble(text, random.Random(0))
        assert out != text and sorted(out) == sorted(text)
        assert out.count("\n") == text.count("\n")
    assert _reverse_words("the king,", random.Random(0)) == "eht gnik,"
    assert _shuffle_letters("Cambridge", random.Random(1))[::8] == "Ce"


def test_scramble_task_is_balanced_and_deterministic(task):
    again = scramble_task(max_len=64, max_examples=4000)
    for name in ("train", "val", "test"):
        a, b = task.split(name), again.split(name)
        assert a.texts == b.texts and torch.equal(a.labels, b.labels) and torch.equal(a.idx, b.idx)
        counts = Counter(a.labels.tolist())
        assert len(counts) == 4 and max(counts.values()) - min(counts.values()) <= 0.05 * len(a)
        assert int(a.lengths.max()) <= 64 and a.idx.shape[1] == int(a.lengths.max())
        for row in range(3):  # padding on the right, the text decodes back
            n = int(a.lengths[row])
            assert task.tokenizer.decode(a.idx[row, :n].tolist()) == a.texts[row]
            assert (a.idx[row, n:] == task.pad_token_id).all()
    assert len(task.train) > 5 * len(task.val)
    assert task.classes == list(SCRAMBLES)
    assert scramble_task(max_len=64, max_examples=4000, seed=1).train.texts != task.train.texts


def test_speaker_task_splits_by_speech():
    task = speaker_task(max_len=64)
    assert task.classes == ["GLOUCESTER", "DUKE VINCENTIO", "ROMEO", "PETRUCHIO"]
    long_passages = [{t for t in task.split(n).texts if len(t) > 40} for n in ("train", "val", "test")]
    assert not (long_passages[0] & long_passages[1]) and not (long_passages[0] & long_passages[2])
    assert not any(t.startswith(("ROMEO:", "PETRUCHIO:")) for t in task.train.texts)  # names left out
    with pytest.raises(ValueError, match="speakers"):
        speaker_task(["ROMEO", "NOBODY"])


# ------------------------------------------------------------------------------ fine-tuning


def test_lora_beats_head_only_and_leaves_the_base_untouched(task, pretrained):
    results = {}
    for method in ("head", "lora"):
        torch.manual_seed(1)
        gpt = copy.deepcopy(pretrained)
        clf = build_classifier(gpt, len(task.classes), task.pad_token_id, method, rank=8, alpha=16)
        head_before = clf.head.weight.detach().clone()
        history = finetune(clf, task, ft_config()).history
        results[method] = evaluate_classifier(clf, task.val)["accuracy"]
        assert history[-1]["val_accuracy"] == pytest.approx(results[method])
        # the base weights did not move by one bit; the head did
        plain = {n.replace(".base.", "."): p for n, p in gpt.named_parameters()}
        for name, p in pretrained.named_parameters():
            assert torch.equal(plain[name], p), name
        assert not torch.equal(clf.head.weight, head_before)
        assert bool(lora_layers(gpt)) == (method == "lora")
    # chance is 1/4; the frozen features get the head part of the way, adapting attention much further
    assert results["lora"] > 0.45
    assert results["lora"] > results["head"] + 0.08, results


def test_finetune_is_deterministic_and_head_saves_with_adapters(task, tmp_path):
    cfg = ft_config(max_iters=4, batch_size=8, eval_interval=2, log_interval=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        clf = build_classifier(GPT(TINY.replace(dropout=0.1)), 4, task.pad_token_id, "lora", rank=2, alpha=4)
        runs.append((clf, finetune(clf, task, cfg).history))
    assert runs[0][1] == runs[1][1] and len(runs[0][1]) == 4  # same seed, same losses and metrics
    clf = runs[0][0].eval()
    save_lora(clf, tmp_path / "clf", include=("head",))
    torch.manual_seed(0)
    fresh = GPTClassifier(GPT(TINY.replace(dropout=0.1)), 4, task.pad_token_id).eval()  # same base, new head
    load_lora(fresh, tmp_path / "clf")
    x = task.val.subset(torch.arange(8))
    assert torch.equal(fresh(x.idx, x.lengths), clf(x.idx, x.lengths))
    with pytest.raises(ValueError, match="out_dir"):
        finetune(clf, task, ft_config(out_dir=str(tmp_path / "o")))
