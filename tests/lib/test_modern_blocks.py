"""Modern blocks (RMSNorm, SwiGLU, grouped-query attention, QK-norm, no biases, untied head):
each piece against torch's or transformers' own, and `GPT.from_llama` against `LlamaForCausalLM`."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mini_gpt import GPT, GPTConfig, generate, stream
from mini_gpt.attention import CausalSelfAttention, KVCache
from mini_gpt.block import MLP, SwiGLU
from mini_gpt.checkpoint import latest_checkpoint, load_checkpoint, restore_model, save_checkpoint
from mini_gpt.llama import gpt_config_from_llama
from mini_gpt.lora import add_lora, load_lora, merge_lora, save_lora
from mini_gpt.norm import RMSNorm

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

torch.set_num_threads(2)  # tests that compare numbers pin the thread count

LLAMA = GPTConfig.preset("llama-style", block_size=64, n_layer=2, n_embd=64)


def small(**changes):
    return GPTConfig(**{**LLAMA.to_dict(), **changes})


def llama_config(n_kv_head=2, tie=False, **changes):
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=n_kv_head, max_position_embeddings=64, tie_word_embeddings=tie,
                rope_theta=500.0, rms_norm_eps=1e-5)
    return LlamaConfig(**{**base, **changes})


def hf_llama(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**kwargs)).eval()
    with torch.no_grad():  # random norm gains too, so a swapped or skipped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


# ------------------------------------------------------------------ the pieces


def test_rmsnorm_equals_torch_and_llama():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 64) * 3 + 1
    ours = RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    ref = torch.nn.RMSNorm(64, eps=1e-5)
    hf = modeling_llama.LlamaRMSNorm(64, eps=1e-5)
    ref.load_state_dict(ours.state_dict())
    hf.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    assert torch.equal(ours(x), hf(x))
    # bf16 in, bf16 out, with the statistic taken in float32 (as Llama does)
    xb = x.bfloat16()
    assert ours(xb).dtype == torch.float32 or ours.bfloat16()(xb).dtype == torch.bfloat16
    assert torch.equal(ours.bfloat16()(xb), hf.bfloat16()(xb))


def test_swiglu_equals_llama_mlp():
    cfg = small(mlp_hidden=96)
    torch.manual_seed(0)
    ours = SwiGLU(cfg)
    hf = modeling_llama.LlamaMLP(llama_config())
    w_gate, w_up = ours.c_fc.weight.detach().split(96)
    hf.gate_proj.weight.data.copy_(w_gate)
    hf.up_proj.weight.data.copy_(w_up)
    hf.down_proj.weight.data.copy_(ours.c_proj.weight)
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), rtol=1e-5, atol=1e-6)
        by_hand = F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), ours.c_proj.weight)
        torch.testing.assert_close(ours(x), by_hand)


def test_default_widths_keep_the_parameter_count():
    gelu, swiglu = MLP(small(mlp="gelu")), SwiGLU(small(mlp="swiglu"))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert gelu.c_fc.out_features == 4 * 64 and swiglu.hidden == 176  # ceil(2/3 * 256 / 8) * 8
    assert abs(n(swiglu) - n(gelu)) / n(gelu) < 0.05
    assert small(mlp_hidden=100).mlp_hidden_size == 100


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_gqa_equals_repeated_heads_and_sdpa(n_kv_head, impl):
    torch.manual_seed(0)
    attn = CausalSelfAttention(small(n_kv_head=n_kv_head, pos_encoding="learned"))
    attn.impl = impl
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        q, k, v = attn.c_attn(x).split((64, 16 * n_kv_head, 16 * n_kv_head), dim=-1)
        q = q.view(2, 9, 4, 16).transpose(1, 2)
        k = k.view(2, 9, n_kv_head, 16).transpose(1, 2).repeat_interleave(4 // n_kv_head, dim=1)
        v = v.view(2, 9, n_kv_head, 16).transpose(1, 2).repeat_interleave(4 // n_kv_head, dim=1)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 9, 64)
        torch.testing.assert_close(attn(x), attn.c_proj(ref), rtol=1e-5, atol=1e-6)
        y, att = attn(x, return_attention=True)
    assert att.shape == (2, 4, 9, 9)  # one map per query head
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 4, 9))
    assert torch.all(att.triu(1) == 0)


def test_llama_attention_layer_equals_ours():
    hf_model = hf_llama(n_kv_head=2)
    ours = GPT.from_llama(hf_model.state_dict(), config=hf_model.config)
    x = torch.randn(2, 11, 64)
    layer = hf_model.model.layers[0].self_attn
    pos = torch.arange(11)[None].expand(2, -1)
    cos, sin = hf_model.model.rotary_emb(x, pos)
    with torch.no_grad():
        ref, _ = layer(x, position_embeddings=(cos, sin), attention_mask=None)
        for impl in ("sdpa", "explicit"):
            ours.set_attention_impl(impl)
            torch.testing.assert_close(ours.transformer.h[0].attn(x), ref, rtol=1e-5, atol=1e-5)


def test_qk_norm_normalises_every_heads_queries_and_keys():
    torch.manual_seed(0)
    attn = CausalSelfAttention(small(qk_norm=True))
    assert isinstance(attn.q_norm, RMSNorm) and attn.q_norm.dim == 16
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = output  # returns None: the output itself is left alone
        return hook

    attn.q_norm.register_forward_hook(keep("q"))
    attn.k_norm.register_forward_hook(keep("k"))
    with torch.no_grad():
        attn(torch.randn(2, 5, 64) * 10)
    assert seen["q"].shape == (2, 4, 5, 16) and seen["k"].shape == (2, 2, 5, 16)
    for t in seen.values():  # each head vector of unit RMS (the gains start at 1)
        torch.testing.assert_close(t.pow(2).mean(-1), torch.ones(t.shape[:-1]), rtol=1e-4, atol=1e-4)
    # the explicit and fused paths still agree
    x = torch.randn(1, 6, 64)
    with torch.no_grad():
        a = attn(x)
        attn.impl = "explicit"
        torch.testing.assert_close(attn(x), a, rtol=1e-5, atol=1e-6)


def test_no_biases_and_untied_head():
    model = GPT(LLAMA)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert model.lm_head.weight is not model.transformer.wte.weight
    tied = GPT(LLAMA.replace(tie_embeddings=True))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert model.num_parameters() - tied.num_parameters() == LLAMA.vocab_size * LLAMA.n_embd


def test_defaults_are_gpt2_exactly():
    cfg = GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32)
    assert (cfg.norm, cfg.mlp, cfg.kv_heads, cfg.qk_norm, cfg.tie_embeddings) == ("layernorm", "gelu", 4, False, True)
    torch.manual_seed(0)
    model = GPT(cfg)
    assert isinstance(model.transformer.ln_f, torch.nn.LayerNorm) and isinstance(model.transformer.h[0].mlp, MLP)
    assert model.transformer.h[0].attn.c_attn.out_features == 3 * 32
    # the same names and random draws as before the options existed: the sha256 of this seed's
    # initial weights, computed with the library as it was then (torch's CPU generator)
    digest = hashlib.sha256()
    for k, v in model.state_dict().items():
        digest.update(k.encode())
        digest.update(v.numpy().tobytes())
    assert digest.hexdigest() == "202fea3dbf9749758cd190ad0983bdaf32e7793037b6e129231ac550cd7104af"
    assert repr(cfg) == ("GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0, "
                         "bias=True, pos_encoding='learned', rope_base=10000.0, layer_norm_eps=1e-05, "
                         "activation_checkpointing=False)")  # as the chapters print it


def test_kv_cache_stores_only_the_kv_heads():
    model = GPT(LLAMA).eval()
    cache = KVCache.for_model(model)
    with torch.no_grad():
        model(torch.randint(0, 65, (3, 7)), kv_cache=cache)
    assert cache.k.shape == (2, 3, 2, 64, 16)  # (n_layer, B, n_kv_head, max_len, hs)
    mha = LLAMA.replace(n_kv_head=None)
    assert KVCache.bytes_per_token(mha) == 2 * KVCache.bytes_per_token(LLAMA) == 2 * 2 * 4 * 16 * 4
    assert KVCache.bytes_per_token(LLAMA, torch.bfloat16) == 2 * 2 * 2 * 16 * 2
    with pytest.raises(TypeError, match="dtype"):
        KVCache.bytes_per_token(LLAMA, "float32")


# ------------------------------------------------------------------ from_llama ≡ transformers


SHAPES = [dict(n_kv_head=2, tie=False), dict(n_kv_head=1, tie=False), dict(n_kv_head=1, tie=True),
          dict(n_kv_head=4, tie=True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"kv{s['n_kv_head']}-{'tied' if s['tie'] else 'untied'}")
def test_from_llama_logits_and_greedy_generation_equal_transformers(shape, tmp_path):
    hf = hf_llama(**shape)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    ours = GPT.from_llama(tmp_path)
    assert ours.config.kv_heads == shape["n_kv_head"] and ours.config.tie_embeddings == shape["tie"]
    assert ours.config.rope_base == 500.0 and ours.config.layer_norm_eps == 1e-5
    assert ours.num_parameters() == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
        ours.set_attention_impl("explicit")
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
        ours.set_attention_impl("sdpa")
    expected = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, idx, 12, do_sample=False), expected)
    assert torch.equal(generate(ours, idx, 12, do_sample=False, use_cache=False), expected)


def test_from_llama_state_dict_with_config_dict():
    hf = hf_llama(n_kv_head=2)
    ours = GPT.from_llama(hf.state_dict(), config=hf.config.to_dict())
    idx = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_from_llama_refuses_what_a_gpt_cannot_hold(tmp_path):
    hf = hf_llama()
    sd = hf.state_dict()
    base = llama_config().to_dict()
    with pytest.raises(ValueError, match="config"):
        GPT.from_llama(sd)  # a state dict needs its config
    for change, word in [(dict(hidden_act="gelu"), "hidden_act"), (dict(head_dim=32), "head_dim"),
                         (dict(attention_bias=True, mlp_bias=False), "attention_bias"),
                         (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
                         (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5}), "rope_parameters")]:
        with pytest.raises(ValueError, match=word):
            gpt_config_from_llama({**base, **change})
    with pytest.raises(ValueError, match="missing"):
        GPT.from_llama({k: v for k, v in sd.items() if "layers.1.mlp.up_proj" not in k}, config=hf.config)
    with pytest.raises(ValueError, match="unexpected"):
        GPT.from_llama({**sd, "model.layers.2.mlp.up_proj.weight": torch.zeros(1)}, config=hf.config)
    with pytest.raises(ValueError, match="lm_head"):
        GPT.from_llama({k: v for k, v in sd.items() if k != "lm_head.weight"}, config=hf.config)
    # only safetensors: a folder with a pickled checkpoint is refused without reading it
    (tmp_path / "config.json").write_text(json.dumps(base))
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        GPT.from_llama(tmp_path)
    with pytest.raises(FileNotFoundError):
        GPT.from_llama(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="source"):
        GPT.from_llama(3)


def test_from_llama_name_offline_is_a_clear_error(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-mini-gpt-cache")
    with pytest.raises((ConnectionError, OSError)):
        GPT.from_llama("someone/not-a-cached-llama")


# ------------------------------------------------------------------ decoding with GQA


@pytest.fixture(scope="module")
def gqa_model():
    torch.manual_seed(0)
    return GPT(small(vocab_size=97, qk_norm=True)).eval()


STRATEGIES = [
    dict(do_sample=False),
    dict(temperature=0.8, top_k=10, seed=3),
    dict(top_p=0.9, seed=4),
    dict(min_p=0.05, repetition_penalty=1.3, seed=5),
    dict(num_beams=3, do_sample=False),
]


@pytest.mark.parametrize("options", STRATEGIES, ids=lambda o: "-".join(map(str, o)))
def test_cache_equals_no_cache_with_gqa(gqa_model, options):
    prompts = [[5, 6, 7, 8, 9], [1, 2], [40, 41, 42]]  # a left-padded batch
    cached = generate(gqa_model, prompts, 10, pad_token_id=0, **options)
    uncached = generate(gqa_model, prompts, 10, pad_token_id=0, use_cache=False, **options)
    assert torch.equal(cached, uncached)
    streamed = list(stream(gqa_model, prompts, 10, pad_token_id=0, **options))
    assert torch.equal(torch.stack(streamed, dim=1), cached[:, -len(streamed):])
    one = generate(gqa_model, [prompts[0]], 10, pad_token_id=0, **options)
    if options.get("do_sample", True) is False:  # greedy/beam: a row alone decodes as in the batch
        assert torch.equal(one[0], cached[0])


def test_gqa_mqa_and_mha_all_decode_cached_equal_uncached():
    for n_kv_head in (1, 2, 4):
        torch.manual_seed(n_kv_head)
        model = GPT(small(n_kv_head=n_kv_head, vocab_size=97)).eval()
        idx = torch.randint(0, 97, (2, 6))
        assert torch.equal(generate(model, idx, 8, do_sample=False),
                           generate(model, idx, 8, do_sample=False, use_cache=False))


# ------------------------------------------------------------------ training machinery


def test_checkpoint_round_trip_keeps_the_untied_head(tmp_path):
    torch.manual_seed(0)
    model = GPT(LLAMA)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 65, (2, 8))).pow(2).mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path, step=1, model=model, model_config=LLAMA, optimizer=opt)
    ck = load_checkpoint(path)
    assert ck.model_config == LLAMA and "lm_head.weight" in ck.model_state
    torch.manual_seed(1)
    fresh = GPT(ck.model_config)
    restore_model(ck, fresh)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight is not fresh.transformer.wte.weight


def test_training_a_llama_style_model_resumes_exactly(tmp_path):
    tiny = ["--preset", "llama-style", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            "--batch-size", "4", "--dropout", "0.1", "--log-interval", "1", "--eval-interval", "4",
            "--eval-iters", "1", "--no-progress", "--dtype", "float32", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "mini_gpt.cli", "train", *args, *tiny],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr

    full, split = tmp_path / "full", tmp_path / "split"
    cli("--out", str(full), "--max-iters", "8")
    cli("--out", str(split), "--max-iters", "4")
    cli("--out", str(split), "--max-iters", "8", "--resume")

    def losses(d):
        return {r["step"]: r["train_loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}

    a, b = losses(full), losses(split)
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bit for bit
    cfg = latest_checkpoint(full).model_config
    assert (cfg.norm, cfg.mlp, cfg.kv_heads, cfg.tie_embeddings) == ("rmsnorm", "swiglu", 2, False)


def test_lora_on_a_llama_style_model(tmp_path):
    torch.manual_seed(0)
    model = GPT(LLAMA)
    idx = torch.randint(0, 65, (2, 10))
    with torch.no_grad():
        before = model(idx)
    add_lora(model, rank=4, alpha=8, targets="all")
    with torch.no_grad():
        torch.testing.assert_close(model(idx), before)  # B = 0: starts as the identity
        for layer in (m for m in model.modules() if hasattr(m, "lora_B")):
            layer.lora_B.normal_(0, 0.05)
        adapted = model(idx)
    assert not torch.allclose(adapted, before)
    save_lora(model, tmp_path / "adapter")
    torch.manual_seed(0)
    other = GPT(LLAMA)
    load_lora(other, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(other(idx), adapted)
        merged = merge_lora(other)
        torch.testing.assert_close(merged(idx), adapted, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ invalid configs


@pytest.mark.parametrize("changes, field", [
    (dict(n_kv_head=3), "n_kv_head"),  # 4 heads do not split into 3 groups
    (dict(n_kv_head=8), "n_kv_head"),  # more kv heads than query heads
    (dict(n_kv_head=0), "n_kv_head"),
    (dict(n_kv_head=2.0), "n_kv_head"),
    (dict(mlp_hidden=0), "mlp_hidden"),
    (dict(mlp_hidden=-4), "mlp_hidden"),
    (dict(mlp_hidden=1.5), "mlp_hidden"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="relu"), "mlp"),
    (dict(qk_norm=1), "qk_norm"),
    (dict(tie_embeddings="yes"), "tie_embeddings"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(bias=None), "bias"),
])
def test_invalid_configs_name_the_field(changes, field):
    with pytest.raises(ValueError, match=f"GPTConfig.{field}"):
        small(**changes)


def test_invalid_rmsnorm_arguments():
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(8, eps=0.0)


def test_config_json_round_trip_and_old_configs_load():
    assert GPTConfig.from_dict(json.loads(json.dumps(LLAMA.to_dict()))) == LLAMA
    old = dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True,
               pos_encoding="learned", rope_base=10000.0, layer_norm_eps=1e-5, activation_checkpointing=False)
    assert GPTConfig.from_dict(old).kv_heads == 4  # a checkpoint from before these options


def test_safetensors_folder_written_by_hand(tmp_path):
    """A folder made without transformers' save_pretrained: just config.json + model.safetensors."""
    hf = hf_llama(n_kv_head=1, tie=True)
    sd = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(llama_config(n_kv_head=1, tie=True).to_dict()))
    ours = GPT.from_llama(tmp_path)
    idx = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
