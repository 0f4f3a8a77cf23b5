"""GPT.from_gpt2 on a randomly initialised Hugging Face GPT2LMHeadModel gives the same logits.

The reference is `transformers`' own GPT-2 (a small random one: no download, works offline); the
real GPT-2 differs only in size.
"""

import os
import subprocess
import sys

import pytest
import torch

from mini_gpt import GPT

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

V, BLOCK = 500, 64


def random_gpt2(n_layer=2, n_head=2):
    """A small GPT2LMHeadModel with random weights (eval mode, fp32)."""
    transformers.logging.set_verbosity_error()
    config = transformers.GPT2Config(
        vocab_size=V,
        n_positions=BLOCK,
        n_embd=128,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        # larger weights than the 0.02 init, so the logits are far from zero and every detail
        # (GELU's tanh approximation, LayerNorm's eps, the Conv1D transposes) shows in them
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return random_gpt2()


def hf_logits(hf, idx, **kwargs):
    with torch.no_grad():
        return hf(idx, **kwargs).logits


def check_same(model, hf, tol=2e-5):
    idx = torch.randint(0, V, (3, BLOCK), generator=torch.Generator().manual_seed(1))
    ref = hf_logits(hf, idx)
    assert ref.abs().max() > 1.0  # a meaningful comparison, not of near-zero numbers
    for impl in ("sdpa", "explicit"):
        model.set_attention_impl(impl)
        with torch.no_grad():
            torch.testing.assert_close(model(idx), ref, rtol=0, atol=tol)


def test_state_dict_gives_the_same_logits(hf_model):
    model = GPT.from_gpt2(hf_model.state_dict())
    cfg = model.config
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) == (V, BLOCK, 2, 2, 128)
    assert not model.training
    assert model.lm_head.weight is model.transformer.wte.weight
    check_same(model, hf_model)


def test_keys_without_prefix_and_old_mask_buffers(hf_model):
    # the original OpenAI upload has no "transformer." prefix and carries attn.bias mask buffers
    sd = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.ones(1, 1, BLOCK, BLOCK).tril()
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    check_same(GPT.from_gpt2(sd), hf_model)


def saved_weights(hf_model):
    # tied weights share storage, which safetensors refuses: save independent clones
    return {k: v.clone().contiguous() for k, v in hf_model.state_dict().items()}


def test_safetensors_file_and_folder(hf_model, tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(saved_weights(hf_model), str(path))
    check_same(GPT.from_gpt2(path), hf_model)
    check_same(GPT.from_gpt2(str(tmp_path)), hf_model)
    # save_pretrained's own output (which drops the tied head) loads the same way
    hf_model.save_pretrained(tmp_path / "hf")
    check_same(GPT.from_gpt2(tmp_path / "hf"), hf_model)


def test_left_padded_batch_matches_transformers(hf_model):
    model = GPT.from_gpt2(hf_model.state_dict())
    idx = torch.randint(0, V, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :4] = False
    position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
    ref = hf_logits(hf_model, idx, attention_mask=mask.long(), position_ids=position_ids)
    with torch.no_grad():
        ours = model(idx, attention_mask=mask, position_ids=position_ids)
    torch.testing.assert_close(ours[mask], ref[mask], rtol=0, atol=2e-5)


def test_n_head_override(hf_model):
    torch.manual_seed(0)
    hf = random_gpt2(n_layer=1, n_head=4)  # head size 32, not GPT-2's 64
    model = GPT.from_gpt2(hf.state_dict(), n_head=4)
    assert model.config.n_head == 4
    check_same(model, hf)
    idx = torch.randint(0, V, (1, 16))
    wrong = GPT.from_gpt2(hf.state_dict())  # assumes 128 // 64 = 2 heads
    with torch.no_grad():
        assert (wrong(idx) - hf_logits(hf, idx)).abs().max() > 1e-3


def test_bad_weights_are_listed(hf_model, tmp_path):
    sd = dict(hf_model.state_dict())
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.0.attn.extra.weight"] = torch.zeros(3)
    sd["transformer.h.0.ln_2.weight"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        GPT.from_gpt2(sd)
    message = str(info.value)
    assert "missing keys: ['h.1.mlp.c_fc.bias']" in message
    assert "unexpected keys: ['transformer.h.0.attn.extra.weight']" in message
    assert "h.0.ln_2.weight: expected (128,), got (7,)" in message

    sd = dict(hf_model.state_dict())
    sd["lm_head.weight"] = torch.zeros(V, 128)  # an untied head cannot be represented
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        GPT.from_gpt2(sd)


def test_only_safetensors_is_read(tmp_path):
    pickled = tmp_path / "pytorch_model.bin"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        GPT.from_gpt2(pickled)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GPT.from_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a file, a folder or a known model name"):
        GPT.from_gpt2("no-such-model")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_by_name_in_a_fresh_process(env_changes, tmp_path):
    """Run GPT.from_gpt2('gpt2') with an empty Hugging Face cache; return what it printed."""
    env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper() and k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=os.pathsep.join([REPO_ROOT, env.get("PYTHONPATH", "")]))
    env.update(env_changes)
    code = (
        "from mini_gpt import GPT\n"
        "try:\n"
        "    GPT.from_gpt2('gpt2')\n"
        "except ConnectionError as e:\n"
        "    print('ERROR:', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_model_name_offline_raises_a_clear_error(tmp_path):
    # offline mode: fails at once and says why
    out = load_by_name_in_a_fresh_process({"HF_HUB_OFFLINE": "1"}, tmp_path)
    assert "ERROR:" in out and "offline" in out
    assert "openai-community/gpt2" in out and "model.safetensors" in out


def test_model_name_unreachable_hub_raises_a_clear_error(tmp_path):
    # not marked offline, but the Hub cannot be reached (a closed local port stands in for
    # "no internet"): a quick check fails fast instead of huggingface_hub's retries
    out = load_by_name_in_a_fresh_process({"HF_ENDPOINT": "http://127.0.0.1:9"}, tmp_path)
    assert "ERROR:" in out and "cannot be reached" in out
