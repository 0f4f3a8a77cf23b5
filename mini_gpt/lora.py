"""LoRA: fine-tune a big frozen matrix W by learning a small low-rank correction B A.

A fine-tuning update to a weight matrix W (out, in) tends to have low "intrinsic rank", so LoRA
(Hu et al. 2021, https://arxiv.org/abs/2106.09685) learns it as a product of two thin matrices:

    y = W x + b + (alpha / r) * B A x        A: (r, in), B: (out, r), r << min(in, out)

W and b stay frozen; only A and B train: r * (in + out) numbers instead of in * out. B starts at
zero, so at step 0 the adapted model computes exactly what the base model does. After training,
B A can be added into W once (`merge_lora`): the model is a plain GPT again, with no extra cost
per token. Or the adapters alone (a few hundred KB) can be saved and loaded onto another copy of
the same base model (`save_lora`, `load_lora`).

    model = add_lora(GPT(config), rank=8, alpha=16)   # attention projections by default
    ...train...                                       # only lora_A / lora_B have gradients
    save_lora(model, "adapters/")                     # adapter.json + adapter-<hash>.safetensors
    merge_lora(model)                                 # plain nn.Linear layers again
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import atomic
from .linear import Linear

# named shortcuts for `targets`: module-name suffixes inside each transformer block
TARGET_SHORTCUTS: dict[str, tuple[str, ...]] = {
    "attn": ("attn.c_attn", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "all": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}
DEFAULT_TARGETS = TARGET_SHORTCUTS["attn"]

FORMAT = "mini_gpt-lora"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter.json"


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank correction: W x + b + (alpha/r) B A x.

    base:    the layer to adapt; its weight and bias are frozen (requires_grad=False) and kept
             as they are, under `self.base`
    rank:    r, the inner size of B A
    alpha:   the scale numerator; the correction is multiplied by alpha / r, so changing r
             does not change how big the update is at a given learning rate
    dropout: dropout on the input of the LoRA branch only (the frozen path sees x unchanged)
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        _check_hyperparameters(rank, alpha, dropout)
        self.base = base
        self.base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, float(alpha), alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        # A random, B zero: B A = 0, so the layer starts as exactly the base layer, yet the
        # gradient of B (which depends on A x) is not zero and training can move away from it.
        # kaiming_uniform with a=sqrt(5) is nn.Linear's own default init (also the LoRA paper's code)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # the frozen layer's tensors, under the names an nn.Linear has
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out): W x + b, frozen
        # the low-rank path goes through r numbers: x -> A x (..., r) -> B A x (..., out);
        # never forming the (out, in) matrix B A keeps it cheap
        z = F.linear(self.dropout(x), self.lora_A)  # (..., r)
        return y + F.linear(z, self.lora_B) * self.scaling  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B A, shape (out, in): what merging adds to W (computed in float32)."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain linear layer of the base layer's class (nn.Linear, or mini_gpt's Linear inside a
        GPT) computing the same function: W + (alpha/r) B A, same bias."""
        w = self.base.weight
        cls = Linear if isinstance(self.base, Linear) else nn.Linear  # a subclass's own __init__ may differ
        layer = cls(
            self.in_features, self.out_features, bias=self.base.bias is not None, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            layer.weight.copy_((w.float() + self.delta_weight()).to(w.dtype))
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        layer.requires_grad_(False)  # the rest of an adapted model is frozen too
        return layer.train(self.training)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


def _check_hyperparameters(rank: Any, alpha: Any, dropout: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")


# ---------------------------------------------------------------------------------------------
# adding, counting and merging


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 16,
    targets: str | Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
    *,
    verbose: bool = False,
) -> nn.Module:
    """Freeze all of `model` and wrap the nn.Linear layers named by `targets` in `LoRALinear`.

    targets: module names, each matched as a dotted suffix ("attn.c_attn" matches
        "transformer.h.3.attn.c_attn") or as a regular expression over the whole name
        (r"transformer\\.h\\.[01]\\.attn\\.c_attn"); or a shortcut: "attn" (the default: c_attn and
        c_proj of attention), "mlp" (c_fc and c_proj of the MLP), "all" (both).
    Everything else is frozen, embeddings and LayerNorms included: afterwards only the
    adapters' A and B have requires_grad. The model is changed in place and returned. (A new
    module added afterwards, such as a GPTClassifier's head, is not frozen: it trains too.)
    verbose: print how many layers were adapted and how many parameters now train.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_hyperparameters(rank, alpha, dropout)
    if lora_layers(model):
        raise ValueError(
            "model already has LoRA adapters; add_lora can be applied once (merge_lora(model) first "
            "to fold them in, then add new ones)"
        )
    patterns = _expand_targets(targets)
    names = _match_targets(model, patterns)
    model.requires_grad_(False)
    _wrap(model, names, rank, alpha, dropout)
    model._lora_targets = patterns  # remembered for save_lora (a plain attribute, not state)
    if verbose:
        trainable, total = trainable_parameters(model)
        print(
            f"LoRA rank {rank}, alpha {alpha:g} on {len(names)} layers: "
            f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
        )
    return model


def _expand_targets(targets: Any) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = TARGET_SHORTCUTS.get(targets, (targets,))
    if not isinstance(targets, Sequence) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(
            f"targets must be a non-empty str or sequence of str (module names, regexes, or one of "
            f"{', '.join(map(repr, TARGET_SHORTCUTS))}), got {targets!r}"
        )
    out: list[str] = []
    for t in targets:
        for p in TARGET_SHORTCUTS.get(t, (t,)):
            if p not in out:
                out.append(p)
    for p in out:
        try:
            re.compile(p)
        except re.error as exc:
            raise ValueError(
                f"targets: {p!r} is neither a module name nor a valid regular expression ({exc})"
            ) from None
    return tuple(out)


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name) is not None


def _match_targets(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nn.Linear modules that some pattern matches (in model order)."""
    # a weight used in two places (lm_head is wte: weight tying) cannot take a merge: B A would
    # change the embedding too. Count how often each parameter appears.
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    names, not_linear, tied = [], [], []
    for name, module in model.named_modules():
        if not name or not any(_matches(name, p) for p in patterns):
            continue
        if not isinstance(module, nn.Linear):
            not_linear.append(f"{name} ({type(module).__name__})")
        elif uses[id(module.weight)] > 1:
            tied.append(name)
        else:
            names.append(name)
    if tied:
        raise ValueError(
            f"targets match {tied}, whose weight is shared with another layer (weight tying: lm_head "
            f"is the token embedding); LoRA there cannot be merged without changing both"
        )
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        hint = f"; it matched only non-Linear modules: {not_linear[:4]}" if not_linear else ""
        raise ValueError(
            f"targets {list(patterns)} match no nn.Linear layer of the model{hint}. "
            f"Linear layers are named like {linear[:4]}"
        )
    return names


def _wrap(model: nn.Module, names: Sequence[str], rank: int, alpha: float, dropout: float) -> None:
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        base = getattr(owner, child)
        layer = LoRALinear(base, rank, alpha, dropout)
        layer.train(base.training)  # a new module starts in training mode; keep the model's mode
        setattr(owner, child, layer)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRA layers by module name (empty for a model without adapters)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(parameters with requires_grad, all parameters); a tied weight counts once."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer: each LoRALinear becomes a plain nn.Linear holding
    W + (alpha/r) B A. Same outputs (up to float rounding), no extra cost per token; the
    adapters are gone afterwards (save_lora first, or merge a copy.deepcopy, to keep them).
    The merged layers stay frozen like the rest; model.requires_grad_(True) unfreezes all."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters to merge (add_lora or load_lora first)")
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, layer.merged())
    if hasattr(model, "_lora_targets"):
        del model._lora_targets
    return model


# ---------------------------------------------------------------------------------------------
# which base model: a fingerprint


def _base_tensors(model: nn.Module, exclude: Sequence[str] = ()) -> Iterator[tuple[str, torch.Tensor]]:
    """The frozen base model's parameters under their names *without* LoRA: the adapters are left
    out and "x.c_attn.base.weight" is called "x.c_attn.weight", as in the plain model. Modules
    named in `exclude` (and their children) are left out too."""
    renames = {f"{name}.base.": f"{name}." for name in lora_layers(model)}
    for name, p in model.named_parameters():  # a tied weight comes once, under its first name
        if name.endswith((".lora_A", ".lora_B")):
            continue
        if any(name.startswith(e + ".") for e in exclude):
            continue
        for old, new in renames.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        yield name, p


def base_architecture(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, list[int]]:
    """Name -> shape of every base parameter (what must match for adapters to fit)."""
    return {name: list(p.shape) for name, p in _base_tensors(model, exclude)}


def base_fingerprint(model: nn.Module, exclude: Sequence[str] = ()) -> str:
    """sha256 over the base weights' names, shapes, dtypes and values, in a fixed order.

    Computed on CPU from the raw bytes, so it is the same on every machine for the same weights,
    and the same before and after add_lora (the adapters are not part of it). Merging changes W,
    and so the fingerprint.
    """
    h = hashlib.sha256()
    for name, p in sorted(_base_tensors(model, exclude), key=lambda item: item[0]):
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# saving and loading the adapters alone


def save_lora(model: nn.Module, path: str | os.PathLike, *, include: Sequence[str] = ()) -> Path:
    """Write the adapters (not the base weights) to the folder `path`:

        adapter.json                     rank, alpha, dropout, targets, the adapted layers and
                                         their shapes, the base model's fingerprint
        adapter-<sha256[:16]>.safetensors  lora_A and lora_B of every adapted layer

    include: names of other submodules to save with the adapters, e.g. a classifier's new head
        (include=("head",)); they are left out of the base fingerprint.

    Crash-safe: the tensors go to a new file named by its content, then adapter.json is replaced
    in one atomic rename to point at it, then older tensor files are removed. At every moment the
    folder holds a complete, loadable set: the previous one or the new one.
    """
    from safetensors.torch import save

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters to save (add_lora first)")
    include = _check_include(model, include)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path must be a folder (it gets adapter.json and a .safetensors file), but {path} is a file")
    path.mkdir(parents=True, exist_ok=True)
    atomic.remove_leftovers(path)  # left by a save that crashed (one writer at a time)

    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().to("cpu").contiguous()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().to("cpu").contiguous()
    for module_name in include:
        for pname, p in model.get_submodule(module_name).named_parameters():
            tensors[f"{module_name}.{pname}"] = p.detach().to("cpu").contiguous()
    first = next(iter(layers.values()))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rank": first.rank,
        "alpha": first.alpha,
        "dropout": first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0,
        "targets": list(getattr(model, "_lora_targets", ())),
        "layers": {name: [layer.in_features, layer.out_features] for name, layer in layers.items()},
        "include": list(include),
        "base_architecture": base_architecture(model, include),
        "base_fingerprint": base_fingerprint(model, include),
    }
    if any((m.rank, m.alpha) != (first.rank, first.alpha) for m in layers.values()):
        raise ValueError("save_lora: all adapters must share one rank and alpha (as add_lora makes them)")

    # 1. the tensors, under a name that depends on their content
    data = save(tensors, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    tensor_file = atomic.write_bytes(path / f"adapter-{digest[:16]}.safetensors", data)
    config["tensors"] = {"file": tensor_file.name, "sha256": digest}
    # 2. the JSON that names them: the atomic switch from the old set to the new one
    atomic.write_text(path / CONFIG_FILE, json.dumps(config, indent=1))
    # 3. tensor files no JSON points at any more
    for old in path.glob("adapter-*.safetensors"):
        if old.name != tensor_file.name:
            old.unlink(missing_ok=True)
    return path


def load_lora(model: nn.Module, path: str | os.PathLike, *, check_base: bool = True) -> nn.Module:
    """Put the adapters saved in `path` onto `model` and return it.

    `model` is either the plain base model (adapters are added to the saved layers, with the saved
    rank, alpha and dropout; the model is frozen as add_lora does) or one that already has
    matching adapters (their values are replaced). The base must be the one the adapters were
    trained on: a different architecture, or the same architecture with different weights
    (checked by the sha256 fingerprint; check_base=False skips only the weights check), raises
    ValueError. Only JSON and safetensors are read: nothing in the folder can execute code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = _read_config(path)
    include = _check_include(model, config["include"])
    saved_layers = {name: tuple(shape) for name, shape in config["layers"].items()}
    existing = lora_layers(model)

    # 1. does the model have the saved architecture?
    arch = base_architecture(model, include)
    saved_arch = {k: tuple(v) for k, v in config["base_architecture"].items()}
    if {k: tuple(v) for k, v in arch.items()} != saved_arch:
        missing = sorted(set(saved_arch) - set(arch))
        extra = sorted(set(arch) - set(saved_arch))
        shapes = [f"{k}: saved {list(saved_arch[k])}, model {arch[k]}" for k in sorted(set(arch) & set(saved_arch))
                  if tuple(arch[k]) != saved_arch[k]]
        detail = "; ".join(
            part for part in (
                f"missing in the model: {missing[:4]}" if missing else "",
                f"not in the saved base: {extra[:4]}" if extra else "",
                f"different shapes: {shapes[:4]}" if shapes else "",
            ) if part
        )
        raise ValueError(f"the adapters in {path} were made for a different model architecture ({detail})")
    # 2. the same weights?
    if check_base:
        fp = base_fingerprint(model, include)
        if fp != config["base_fingerprint"]:
            raise ValueError(
                f"the adapters in {path} were trained on different base weights: the model's fingerprint is "
                f"{fp[:16]}…, the adapters expect {config['base_fingerprint'][:16]}… (same architecture; load the "
                f"base model they were made for, or pass check_base=False to load anyway)"
            )
    # 3. the adapters themselves
    if existing:
        have = {name: (m.in_features, m.out_features) for name, m in existing.items()}
        if have != saved_layers or any(m.rank != config["rank"] for m in existing.values()):
            raise ValueError(
                f"model already has LoRA adapters that differ from those in {path} (layers or rank); "
                f"load onto the plain base model instead"
            )
    else:
        for name, (n_in, n_out) in saved_layers.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                module = None
            if not isinstance(module, nn.Linear) or (module.in_features, module.out_features) != (n_in, n_out):
                raise ValueError(
                    f"the adapters in {path} need an nn.Linear({n_in}, {n_out}) at {name!r}; the model has {module!r}"
                )
    tensor_file = path / config["tensors"]["file"]
    try:
        if atomic.sha256_file(tensor_file) != config["tensors"]["sha256"]:
            raise ValueError("its sha256 does not match adapter.json")
        tensors = load_file(str(tensor_file))
    except (OSError, SafetensorError, ValueError) as exc:
        raise ValueError(f"cannot read the adapter tensors {tensor_file}: {exc}") from exc
    expected = {f"{n}.lora_{ab}": (s[1], config["rank"]) if ab == "B" else (config["rank"], s[0])
                for n, s in saved_layers.items() for ab in "AB"}
    for module_name in include:
        for pname, p in model.get_submodule(module_name).named_parameters():
            expected[f"{module_name}.{pname}"] = tuple(p.shape)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        raise ValueError(f"the adapter tensors in {tensor_file} do not match adapter.json (names or shapes)")

    if not existing:
        model.requires_grad_(False)
        _wrap(model, list(saved_layers), config["rank"], config["alpha"], config["dropout"])
        model._lora_targets = tuple(config["targets"])
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.alpha, layer.scaling = float(config["alpha"]), config["alpha"] / config["rank"]
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])
        for module_name in include:
            for pname, p in model.get_submodule(module_name).named_parameters():
                p.copy_(tensors[f"{module_name}.{pname}"])
                p.requires_grad_(True)  # it was trained with the adapters, and can go on training
    return model


def _check_include(model: nn.Module, include: Any) -> tuple[str, ...]:
    if isinstance(include, str) or not isinstance(include, Sequence) or not all(isinstance(n, str) for n in include):
        raise ValueError(f"include must be a sequence of module names, e.g. ('head',), got {include!r}")
    for name in include:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"include: the model has no submodule {name!r}") from None
    return tuple(include)


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}; is it a folder written by save_lora?")
    try:
        config = json.loads(file.read_text("utf-8"))
        ok = isinstance(config, dict) and config.get("format") == FORMAT
        if ok and config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {config.get('format_version')!r}, this library reads {FORMAT_VERSION}")
        if not ok:
            raise ValueError("not a mini_gpt LoRA adapter file")
        _check_hyperparameters(config["rank"], config["alpha"], config["dropout"])
        tensors = config["tensors"]
        # the tensor file must be a plain name inside this folder
        if not re.fullmatch(r"adapter-[0-9a-f]{16}\.safetensors", tensors["file"]):
            raise ValueError(f"bad tensor file name {tensors['file']!r}")
        for key in ("layers", "base_architecture"):
            if not isinstance(config[key], dict):
                raise TypeError(f"{key} must be an object")
        for key in ("targets", "include"):
            if not isinstance(config[key], list):
                raise TypeError(f"{key} must be a list")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file} is not a valid LoRA adapter config ({type(exc).__name__}: {exc})") from None
    return config
