"""Hugging Face Llama weights in a `GPT`: the config and the weight names translated.

A `LlamaForCausalLM` is the modern block in full: RMSNorm before attention and MLP, RoPE in the
rotate-half layout, grouped-query attention, SwiGLU, no biases, and usually an untied head. Each
of those is a `GPTConfig` option, so a Llama is a `GPT` with other settings and other names:

    model.embed_tokens                     -> transformer.wte
    model.layers.i.input_layernorm         -> transformer.h.i.ln_1          (RMSNorm)
    model.layers.i.self_attn.{q,k,v}_proj  -> transformer.h.i.attn.c_attn  (stacked: [q | k | v])
    model.layers.i.self_attn.o_proj        -> transformer.h.i.attn.c_proj
    model.layers.i.post_attention_layernorm-> transformer.h.i.ln_2
    model.layers.i.mlp.{gate,up}_proj      -> transformer.h.i.mlp.c_fc     (stacked: [gate | up])
    model.layers.i.mlp.down_proj           -> transformer.h.i.mlp.c_proj
    model.norm                             -> transformer.ln_f
    lm_head                                -> lm_head (absent when tied to embed_tokens)

Hugging Face stores Llama's q and k rows already permuted for rotate-half RoPE, the layout
`rope.py` uses, so they load as they are. What a GPT cannot hold (RoPE scaling, a head size other
than hidden_size / heads, biases on attention but not on the MLP, another activation) is refused
with a ValueError naming the config key, rather than loaded into a model that would be wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import GPTConfig
from .model import GPT, check_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def gpt_config_from_llama(hf_config: Mapping[str, Any] | Any) -> GPTConfig:
    """The `GPTConfig` of a Llama config (the dict of config.json, or a `transformers.LlamaConfig`)."""
    c = _config_dict(hf_config)
    need = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]
    missing = [k for k in need if k not in c]
    if missing:
        raise ValueError(f"not a Llama config: missing {missing} (found keys such as {sorted(c)[:8]})")
    act = c.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"Llama config hidden_act must be 'silu' (SwiGLU), got {act!r}")
    # Llama 3.1+ stretch RoPE's slow frequencies ("llama3" scaling): refused, not loaded wrong
    for key in ("rope_scaling", "rope_parameters"):
        scaling = c.get(key) or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind != "default":
            raise ValueError(f"Llama config {key} of type {kind!r} is not supported: only plain RoPE ('default')")
    n_embd, n_head = c["hidden_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or n_embd // n_head
    if n_embd % n_head or head_dim != n_embd // n_head:
        raise ValueError(
            f"Llama config head_dim ({head_dim}) must be hidden_size / num_attention_heads "
            f"({n_embd} / {n_head}): a GPT's heads split n_embd evenly"
        )
    attention_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        raise ValueError(
            f"Llama config attention_bias ({attention_bias}) and mlp_bias ({mlp_bias}) must be equal: "
            f"GPTConfig.bias turns the biases of every Linear on or off together"
        )
    return GPTConfig(
        vocab_size=c["vocab_size"],
        block_size=c.get("max_position_embeddings", 2048),
        n_layer=c["num_hidden_layers"],
        n_head=n_head,
        n_embd=n_embd,
        n_kv_head=c.get("num_key_value_heads") or n_head,
        mlp="swiglu",
        mlp_hidden=c["intermediate_size"],
        norm="rmsnorm",
        layer_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        pos_encoding="rope",
        rope_base=float(_rope_theta(c)),
        bias=attention_bias,
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
    )


def _config_dict(hf_config: Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):  # a transformers PretrainedConfig
        return hf_config.to_dict()
    raise TypeError(f"config must be a dict (config.json) or a transformers LlamaConfig, got {type(hf_config).__name__}")


def _rope_theta(c: Mapping[str, Any]) -> float:
    # older configs say rope_theta; newer transformers keep it inside rope_parameters
    params = c.get("rope_parameters") or {}
    return c.get("rope_theta") or params.get("rope_theta") or 10000.0


def gpt_state_dict_from_llama(weights: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Llama's weights under the GPT's names (see the module's table), q/k/v and gate/up stacked."""
    sd = {k.removeprefix("model."): v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        if name not in sd:
            raise ValueError(f"not the Llama weights its config describes: missing {name!r}")
        return sd.pop(name)

    out["transformer.wte.weight"] = take("embed_tokens.weight")
    out["transformer.ln_f.weight"] = take("norm.weight")
    kinds = ("weight", "bias") if config.bias else ("weight",)
    for i in range(config.n_layer):
        src, dst = f"layers.{i}.", f"transformer.h.{i}."
        out[dst + "ln_1.weight"] = take(src + "input_layernorm.weight")
        out[dst + "ln_2.weight"] = take(src + "post_attention_layernorm.weight")
        for kind in kinds:
            out[dst + f"attn.c_attn.{kind}"] = torch.cat([take(src + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            out[dst + f"attn.c_proj.{kind}"] = take(src + f"self_attn.o_proj.{kind}")
            out[dst + f"mlp.c_fc.{kind}"] = torch.cat([take(src + f"mlp.{p}_proj.{kind}") for p in ("gate", "up")])
            out[dst + f"mlp.c_proj.{kind}"] = take(src + f"mlp.down_proj.{kind}")
    head = sd.pop("lm_head.weight", None)
    if config.tie_embeddings:
        if head is not None and not torch.equal(head, out["transformer.wte.weight"]):
            raise ValueError("lm_head.weight differs from embed_tokens.weight, but the config says tie_word_embeddings")
        out["lm_head.weight"] = out["transformer.wte.weight"]
    else:
        if head is None:
            raise ValueError("not the Llama weights its config describes: missing 'lm_head.weight' (the head is untied)")
        out["lm_head.weight"] = head
    if sd:
        extra = sorted(sd)
        raise ValueError(f"unexpected Llama weights for a {config.n_layer}-layer model: {extra[:8]}"
                         + (f" and {len(extra) - 8} more" if len(extra) > 8 else ""))
    return out


def load_llama(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    config: Mapping[str, Any] | Any | None = None,
    device: torch.device | str | None = None,
) -> GPT:
    """`GPT.from_llama` (see there): a GPT in eval mode holding a Llama's weights."""
    weights, hf_config = _read_source(source, config)
    gpt_config = gpt_config_from_llama(hf_config)
    state = gpt_state_dict_from_llama(weights, gpt_config)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = GPT(gpt_config)
    expected = model.state_dict()
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"Llama weights do not match their config: {wrong[:4]}")
    state = {k: v.to(device=device, dtype=torch.float32).contiguous() for k, v in state.items()}
    if gpt_config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if gpt_config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # tie again: assign made two Parameters
    # RoPE's cos/sin tables are derived buffers that the meta device left empty: rebuild them
    for module in model.modules():
        rotary = getattr(module, "rotary", None)
        if rotary is not None:
            module.rotary = type(rotary)(rotary.head_dim, gpt_config.block_size, base=rotary.base).to(device or "cpu")
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} was not initialised")
    return model.eval()


def _read_source(
    source: str | os.PathLike | Mapping[str, torch.Tensor], config: Mapping[str, Any] | Any | None
) -> tuple[Mapping[str, torch.Tensor], Any]:
    """(weights, config) from a state dict and its config, a folder, or a Hub model name."""
    if isinstance(source, Mapping):
        if config is None:
            raise ValueError("a Llama state dict needs its config: pass config= (config.json's dict or a LlamaConfig)")
        return check_state_dict(source), config
    if not isinstance(source, (str, os.PathLike)):
        allowed = f"a folder with {CONFIG_FILE} and {WEIGHTS_FILE}, a state dict (with config=) or a Hugging Face name"
        raise TypeError(f"source must be {allowed}, got {type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path
    elif isinstance(source, str) and not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        folder = _download(source)
    else:
        raise FileNotFoundError(
            f"{str(source)!r} is not a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, nor a Hugging Face "
            f"model name such as 'TinyLlama/TinyLlama-1.1B-Chat-v1.0'"
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise FileNotFoundError(
                f"{folder} holds no {name} (found {found}); a Llama folder needs {CONFIG_FILE} and "
                f"{WEIGHTS_FILE} (only safetensors weights are loaded: pickled .bin files can execute code)"
            )
    hf_config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if config is not None:
        hf_config = {**hf_config, **_config_dict(config)}
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS_FILE), device="cpu"), hf_config


def _download(repo_id: str) -> Path:
    """The folder of a Hub model's config.json and model.safetensors, from the cache or downloaded."""
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ImportError(f"downloading {repo_id!r} needs huggingface_hub; or pass a local folder") from None
    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        hf_hub_download(repo_id, CONFIG_FILE, local_files_only=offline)
        return Path(hf_hub_download(repo_id, WEIGHTS_FILE, local_files_only=offline)).parent
    except LocalEntryNotFoundError as e:
        raise ConnectionError(
            f"cannot get {repo_id}/{WEIGHTS_FILE}: {'offline mode is on (HF_HUB_OFFLINE)' if offline else 'the download failed'} "
            f"and it is not in the local Hugging Face cache; pass a local folder to GPT.from_llama"
        ) from e
