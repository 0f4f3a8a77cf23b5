"""The full GPT: token ids -> embeddings -> blocks -> final LayerNorm -> logits over the vocabulary.

    idx (B, T) --wte--> (B, T, C) --+ positions--> drop --> h[0] .. h[n_layer-1] --> ln_f
        --> lm_head (the same matrix as wte) --> logits (B, T, vocab_size)

The weight names are GPT-2's (`wte`, `wpe`, `h`, `ln_f`, `c_attn`, `c_proj`, `c_fc`), so OpenAI's
weights load by name (`GPT.from_gpt2`) and give the same logits as Hugging Face `transformers`.
The same class builds a Llama-style model when the config asks for it (RMSNorm for `ln_*`,
SwiGLU, grouped-query attention, an untied head); `GPT.from_llama` loads Llama weights into it
(the renaming is in `llama.py`).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from .attention import ATTENTION_IMPLS, CausalSelfAttention, KVCache
from .block import Block
from .config import GPTConfig
from .linear import Linear
from .norm import make_norm
from .validation import check_choice, check_int

# short names -> Hugging Face repositories holding GPT-2-layout `model.safetensors`
GPT2_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}

# GPT-2's checkpoints store these as Conv1D weights, shaped (in, out): the transpose of nn.Linear
_CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed position vectors of "Attention Is All You Need": (...) positions -> (..., dim).

    pe[pos, 2i] = sin(pos / 10000^(2i/dim)) and pe[pos, 2i+1] = cos(pos / 10000^(2i/dim)): each
    pair of dimensions is a clock turning at its own speed. Computed on the fly for exactly the
    positions asked for, so there is no table and no length limit.
    """
    i2 = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)  # (dim/2,): 2i
    inv_freq = torch.exp(i2 * (-math.log(10000.0) / dim))  # (dim/2,): 1 / 10000^(2i/dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., dim/2)
    # interleave: sin in the even dimensions, cos in the odd ones
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (..., dim)


class GPT(nn.Module):
    """A GPT-2-style decoder-only transformer; `model(idx)` returns logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        modules = {"wte": nn.Embedding(config.vocab_size, config.n_embd)}  # token embeddings
        if config.pos_encoding == "learned":
            # one trained vector per position: this is what limits the context to block_size
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        # "sinusoidal" adds fixed vectors (no parameters); "rope" rotates q and k in every layer
        modules["drop"] = nn.Dropout(config.dropout)
        modules["h"] = nn.ModuleList(Block(config, layer_idx=i) for i in range(config.n_layer))
        modules["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying: reading a token (wte) and writing it (lm_head) share one matrix, as in
            # GPT-2; it saves vocab_size * n_embd parameters and trains the rows of rare tokens
            self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two projections onto the residual stream, so its
        # variance would grow with depth; scaling them by 1/sqrt(2 * n_layer) keeps it ~constant
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # LayerNorm and RMSNorm keep their defaults: weight 1 (and bias 0)

    # ------------------------------------------------------------------ sizes and settings

    def num_parameters(self, *, include_position_embeddings: bool = True) -> int:
        """Number of parameters; a tied head is counted once (it *is* wte), an untied one apart.

        include_position_embeddings=False leaves out the learned position table `wpe` (a lookup,
        no compute), as nanoGPT's `get_num_params(non_embedding=True)` does; wte stays, because
        as the output layer it does real work. This is the N of the 6N FLOPs-per-token estimate.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if not include_position_embeddings and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def set_attention_impl(self, impl: str) -> None:
        """Use "sdpa" (fused, default) or "explicit" (the written-out formula) in every layer."""
        check_choice("impl", impl, ATTENTION_IMPLS)
        for module in self.modules():
            if isinstance(module, CausalSelfAttention):
                module.impl = impl

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context to `block_size` (e.g. GPT-2's 1024 -> 256 to fine-tune cheaply)."""
        block_size = check_int("block_size", block_size, min=1, max=self.config.block_size)
        self.config = self.config.replace(block_size=block_size)
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight.detach()[:block_size].clone())
            self.transformer.wpe.num_embeddings = block_size

    # ------------------------------------------------------------------ forward

    def forward(
        self, idx: torch.Tensor, *, return_attention: bool = False, **inputs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T): `hidden_states`, then the head.

        return_attention: also return every layer's attention weights, each (B, H, T, S).
        inputs: `kv_cache`, `position_ids`, `attention_mask`, as `hidden_states` takes them.
        """
        out = self.hidden_states(idx, return_attention=return_attention, **inputs)
        if return_attention:
            x, attentions = out
            return self.lm_head(x), attentions  # (B, T, vocab_size), n_layer x (B, H, T, S)
        return self.lm_head(out)  # (B, T, vocab_size)

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        return_attention: bool = False,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The final hidden states (B, T, n_embd) for token ids `idx` (B, T): ln_f's output, the
        vectors the head turns into logits (`forward`) and a classifier reads (`finetune`).

        return_attention: also return every layer's attention weights, each (B, H, T, S).
        kv_cache: a `KVCache` holding the earlier tokens; idx then holds only the new ones, and
            the cache grows by T.
        position_ids: (B, T) position of every token (default: cached length + 0..T-1);
            left-padded batches use it so each sequence starts at position 0.
        attention_mask: bool (B, S), S = cached + T; False marks padding keys to ignore.
        """
        _, T = self._check_input(idx, kv_cache, position_ids, attention_mask)
        past = kv_cache.length if kv_cache is not None else 0
        if idx.dtype not in (torch.int64, torch.int32):
            idx = idx.long()  # nn.Embedding takes int32 or int64 indices

        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pos_encoding != "rope":
            if position_ids is None:
                pos = torch.arange(past, past + T, device=idx.device)  # (T,): broadcasts over B
            else:
                pos = position_ids.long()  # (B, T)
            if self.config.pos_encoding == "learned":
                x = x + self.transformer.wpe(pos)  # (B, T, C)
            else:
                x = x + sinusoidal_positions(pos, self.config.n_embd).to(x.dtype)  # (B, T, C)
        x = self.transformer.drop(x)

        kwargs = {"kv_cache": kv_cache, "attention_mask": attention_mask}
        if self.config.pos_encoding == "rope":
            kwargs["position_ids"] = position_ids  # only RoPE uses positions inside the blocks
        attentions = []
        for block in self.transformer.h:
            if return_attention:
                x, att = block(x, return_attention=True, **kwargs)  # att (B, H, T, S)
                attentions.append(att)
            else:
                x = block(x, **kwargs)  # (B, T, C)
        x = self.transformer.ln_f(x)  # (B, T, C)
        return (x, attentions) if return_attention else x

    def _check_input(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[int, int]:
        """Raise a clear error here, where the user called, instead of deep inside torch."""
        cfg = self.config
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}")
        if idx.dtype not in _INT_DTYPES:
            raise TypeError(f"idx must hold integer token ids (e.g. torch.long), got dtype {idx.dtype}")
        if idx.dim() != 2:
            hint = "; for one sequence use idx[None] (or idx.unsqueeze(0))" if idx.dim() == 1 else ""
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}{hint}")
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"idx must hold at least one token, got shape {tuple(idx.shape)}")
        param_device = self.lm_head.weight.device
        if idx.device != param_device and param_device.type != "meta":
            raise ValueError(
                f"idx is on {idx.device} but the model is on {param_device}; use idx.to({str(param_device)!r})"
            )
        if not torch.compiler.is_compiling():
            # data-dependent (it reads the values), so it is skipped inside torch.compile
            lo, hi = torch.stack(torch.aminmax(idx)).tolist()  # one device -> host copy
            if lo < 0 or hi >= cfg.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"idx holds token id {bad}, outside the allowed range [0, {cfg.vocab_size - 1}] "
                    f"(vocab_size={cfg.vocab_size}); was it encoded with a different tokenizer?"
                )

        past = 0
        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(f"kv_cache must be a KVCache, got {type(kv_cache).__name__}")
            if kv_cache.n_layer != cfg.n_layer:
                raise ValueError(f"kv_cache has {kv_cache.n_layer} layers but the model has n_layer={cfg.n_layer}")
            if kv_cache.batch_size is not None and kv_cache.batch_size != B and kv_cache.length > 0:
                raise ValueError(f"kv_cache holds a batch of {kv_cache.batch_size} sequences but idx has B={B}")
            past = kv_cache.length
            if past + T > kv_cache.max_len:
                raise ValueError(
                    f"kv_cache is full: it holds {past} positions of max_len={kv_cache.max_len} and "
                    f"cannot take T={T} more; make a larger cache or reset() it"
                )

        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.dtype not in _INT_DTYPES:
                got = position_ids.dtype if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
                raise TypeError(f"position_ids must be an integer tensor of shape (B, T), got {got}")
            if tuple(position_ids.shape) != (B, T):
                raise ValueError(f"position_ids must have shape (B, T) = ({B}, {T}), got {tuple(position_ids.shape)}")
            if not torch.compiler.is_compiling():
                lo, hi = torch.stack(torch.aminmax(position_ids)).tolist()
                limit = cfg.block_size if cfg.pos_encoding == "learned" else None
                if lo < 0 or (limit is not None and hi >= limit):
                    allowed = f"[0, {limit - 1}]" if limit is not None else ">= 0"
                    raise ValueError(
                        f"position_ids must be in {allowed}, got values from {lo} to {hi}"
                        + (f" (learned positions stop at block_size={limit})" if limit is not None else "")
                    )
        elif cfg.pos_encoding == "learned" and past + T > cfg.block_size:
            what = f"{T}" if past == 0 else f"{past + T} ({past} cached + {T} new)"
            raise ValueError(
                f"sequence length {what} exceeds block_size={cfg.block_size}, the longest context "
                f"learned position embeddings cover; crop the input to the last {cfg.block_size} "
                f"tokens, e.g. idx[:, -{cfg.block_size}:]"
            )

        if attention_mask is not None:
            S = past + T
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool:
                got = (
                    attention_mask.dtype if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
                )
                raise TypeError(f"attention_mask must be a bool tensor (True = real token), got {got}")
            if tuple(attention_mask.shape) != (B, S):
                raise ValueError(
                    f"attention_mask must have shape (B, S) = ({B}, {S}) (S = cached + new tokens), "
                    f"got {tuple(attention_mask.shape)}"
                )
        return B, T

    # ------------------------------------------------------------------ GPT-2 and Llama weights

    @classmethod
    def from_llama(
        cls,
        source: str | os.PathLike | Mapping[str, torch.Tensor],
        *,
        config: Mapping[str, Any] | Any | None = None,
        device: torch.device | str | None = None,
    ) -> GPT:
        """A GPT holding the weights of a Hugging Face `LlamaForCausalLM`, in eval mode; its
        logits equal `transformers`' on the same weights, and so does greedy generation.

        source: a folder holding `config.json` and `model.safetensors`; a state dict in Hugging
            Face's layout (`model.layers.0.self_attn.q_proj.weight`, ...), with its `config`
            (the dict of config.json or a `transformers.LlamaConfig`); or a Hub model name
            (e.g. "TinyLlama/TinyLlama-1.1B-Chat-v1.0"), downloaded only when online. Only
            safetensors files are read: loading them cannot execute code.
        """
        from .llama import load_llama  # llama.py builds on this module, so it is imported late

        return load_llama(source, config=config, device=device)

    @classmethod
    def from_gpt2(
        cls,
        source: str | os.PathLike | Mapping[str, torch.Tensor],
        *,
        device: torch.device | str | None = None,
        n_head: int | None = None,
    ) -> GPT:
        """A GPT holding GPT-2 weights, in eval mode; its logits equal `transformers`' GPT2LMHeadModel.

        source: a Hugging Face-layout state dict (keys with or without "transformer."), a
            `model.safetensors` file or a folder holding one, or a model name ("gpt2",
            "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-community/gpt2", ...) downloaded
            from the Hugging Face Hub when online. Only safetensors files are read: unlike
            pickled `.bin` checkpoints, loading them cannot execute code.
        n_head: heads per layer; by default the `n_head` of a folder's `config.json` (as
            `export.to_hf` writes it), else n_embd // 64, since GPT-2's head size is 64 (the
            weights do not record it).
        """
        weights = _read_gpt2_weights(source)
        # sizes are read off the weights themselves
        sd: dict[str, torch.Tensor] = {}
        for key, tensor in weights.items():
            name = key.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # old transformers versions saved the causal mask as a buffer: not a weight
            sd[name] = tensor
        head = sd.pop("lm_head.weight", None)
        needed = [k for k in ("wte.weight", "wpe.weight") if k not in sd]
        if needed:
            raise ValueError(f"not GPT-2 weights: missing {needed} (found keys such as {sorted(sd)[:5]})")
        vocab_size, n_embd = sd["wte.weight"].shape
        block_size = sd["wpe.weight"].shape[0]
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"h\.(\d+)\.", k))}
        if not layers:
            raise ValueError("not GPT-2 weights: no transformer blocks (keys 'h.0.*', 'h.1.*', ...)")
        if n_head is None:
            n_head = _n_head_of_folder(source)
        if n_head is None:
            if n_embd % 64:
                raise ValueError(f"n_embd={n_embd} is not a multiple of GPT-2's head size 64; pass n_head=")
            n_head = n_embd // 64
        config = GPTConfig(
            vocab_size=vocab_size,
            block_size=block_size,
            n_layer=max(layers) + 1,
            n_head=n_head,
            n_embd=n_embd,
            bias=True,
            pos_encoding="learned",
        )
        # build on the meta device: no memory and no random init for weights about to be replaced
        with torch.device("meta"):
            model = cls(config)
        expected = {k: p.shape for k, p in model.state_dict().items() if k != "lm_head.weight"}

        state: dict[str, torch.Tensor] = {}
        unexpected, wrong_shapes, wrong_keys = [], [], set()
        for name, tensor in sd.items():
            key = name if name.startswith("lm_head.") else f"transformer.{name}"
            if key not in expected:
                unexpected.append(key)
                continue
            conv1d = name.endswith(_CONV1D_WEIGHTS)
            if conv1d:
                tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
            if tensor.shape != expected[key]:
                want = tuple(reversed(expected[key])) if conv1d else tuple(expected[key])
                got = tuple(reversed(tensor.shape)) if conv1d else tuple(tensor.shape)
                wrong_shapes.append(f"{name}: expected {want}, got {got}")
                wrong_keys.add(key)
                continue
            state[key] = tensor.to(device=device, dtype=torch.float32).contiguous()
        missing = sorted(k.removeprefix("transformer.") for k in set(expected) - set(state) - wrong_keys)
        problems = []
        if missing:
            problems.append(f"missing keys: {missing}")
        if unexpected:
            problems.append(f"unexpected keys: {sorted(unexpected)}")
        if wrong_shapes:
            problems.append(f"wrong shapes: {wrong_shapes}")
        if (
            head is not None
            and "transformer.wte.weight" in state
            and not torch.equal(head.to(device=device, dtype=torch.float32), state["transformer.wte.weight"])
        ):
            problems.append("lm_head.weight differs from wte.weight, but GPT ties them (GPT-2 does)")
        if problems:
            raise ValueError(
                f"cannot load GPT-2 weights ({config.n_layer} layers, n_embd={n_embd}): " + "; ".join(problems)
            )

        state["lm_head.weight"] = state["transformer.wte.weight"]
        # assign=True makes these tensors the parameters (no second copy of the weights)
        model.load_state_dict(state, strict=True, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # tie again: assign made two Parameters
        for name, buf in model.named_buffers():
            if buf.is_meta:  # none for GPT-2 today; a derived buffer would need recomputing
                raise RuntimeError(f"buffer {name} was not initialised")
        return model.eval()


def check_state_dict(source: Mapping[str, Any]) -> Mapping[str, Any]:
    """`source` if it maps every name to a tensor; else a TypeError naming the first few that do not."""
    bad = [k for k, v in source.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"source state dict must map names to tensors; not tensors: {bad[:5]}")
    return source


def _n_head_of_folder(source: object) -> int | None:
    """The head count a Hugging Face GPT-2 folder's config.json records, if `source` is one."""
    if not isinstance(source, (str, os.PathLike)) or not (Path(source).expanduser() / "config.json").is_file():
        return None
    try:
        config = json.loads((Path(source).expanduser() / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    n_head = config.get("n_head") if isinstance(config, dict) and config.get("model_type") == "gpt2" else None
    return n_head if isinstance(n_head, int) and not isinstance(n_head, bool) and n_head > 0 else None


def _read_gpt2_weights(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A state dict from a mapping, a safetensors file or folder, or a Hub model name."""
    if isinstance(source, Mapping):
        return check_state_dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a state dict, a path to model.safetensors (or its folder) or a model "
            f"name such as 'gpt2', got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / "model.safetensors"
        if not file.is_file():
            found = sorted(p.name for p in path.iterdir())[:10]
            raise FileNotFoundError(
                f"{path} holds no model.safetensors (found {found}); only safetensors weights are "
                f"loaded, since pickled .bin/.pt checkpoints can execute code"
            )
    elif path.is_file():
        file = path
    elif isinstance(source, str) and (source in GPT2_MODELS or re.fullmatch(r"[\w.-]+/[\w.-]+", source)):
        file = Path(_download_gpt2(source))
    else:
        raise FileNotFoundError(
            f"{str(source)!r} is not a file, a folder or a known model name "
            f"({', '.join(GPT2_MODELS)}, or a Hugging Face repo id such as 'openai-community/gpt2')"
        )
    if file.suffix != ".safetensors":
        raise ValueError(
            f"{file} is not a .safetensors file; only safetensors weights are loaded, since pickled "
            f"checkpoints (.bin, .pt) can execute code when loaded"
        )
    from safetensors.torch import load_file

    return load_file(str(file), device="cpu")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the Hub, so an offline machine fails in seconds, not after retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; let huggingface_hub try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_gpt2(name: str) -> str:
    """Path of `model.safetensors` for a Hub model, from the local cache or downloaded."""
    repo_id = GPT2_MODELS.get(name, name)
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ImportError(
            f"downloading {name!r} needs huggingface_hub (pip install huggingface_hub); or pass "
            f"the path of a local model.safetensors"
        ) from None
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)
    reason = "offline mode is on (HF_HUB_OFFLINE)" if offline else None
    if not offline and not _hub_reachable():
        offline, reason = True, "the Hugging Face Hub cannot be reached (offline?)"
    try:
        # offline, a copy already in the Hugging Face cache still works
        return hf_hub_download(repo_id, "model.safetensors", local_files_only=offline)
    except LocalEntryNotFoundError as e:
        raise ConnectionError(
            f"cannot download the weights of {name!r} ({repo_id}/model.safetensors): "
            f"{reason or 'the download failed'}, and they are not in the local Hugging Face cache. "
            f"Run once while online, or pass the path of a local model.safetensors (or its folder) "
            f"to GPT.from_gpt2"
        ) from e
