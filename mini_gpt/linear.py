"""`Linear`: `nn.Linear` whose float32 inference on a CPU runs through oneDNN's matrix product.

Every weight matrix of the GPT is a `Linear` (`c_attn`, `c_proj`, `c_fc`, `lm_head`). It is an
`nn.Linear` in every way — same parameters, state-dict keys, initialisation and gradients — and
only its forward pass picks a kernel:

- with autograd recording (training), on a GPU, or in another dtype: `F.linear`, as always;
- without autograd (`torch.no_grad()` / `inference_mode()`: evaluation and generation), on a CPU,
  in float32 and outside autocast: oneDNN's `_linear_pointwise`.

Why: `F.linear` in float32 on a CPU calls MKL, whose matrix-vector product streams a decoding
step's weights from memory at about 12 GB/s on the 2-core machine the course is built on, while
oneDNN reaches 20-24 GB/s (measured with 2 threads, weights larger than the caches; see
`benchmarks/bench_generate.py`). Decoding one token reads every weight once, so this is most of
a CPU's decoding speed. oneDNN also wins for larger row counts without autograd (about 1.3-2x up
to 1024 rows here). The math is the same; only the order of the float32 sums differs, so
results agree to float32 rounding (about 1e-6 relative), not bit for bit.

`set_cpu_inference_kernel("torch")` turns the oneDNN path off (the benchmark compares both),
and it is off by itself where the PyTorch build has no oneDNN.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("onednn", "torch")


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_kernel = "onednn" if _onednn_available() else "torch"


def cpu_inference_kernel() -> str:
    """Which kernel float32 CPU inference uses now: "onednn" or "torch" (F.linear)."""
    return _kernel


def set_cpu_inference_kernel(kernel: str) -> None:
    """Choose the kernel of `Linear`'s float32 CPU inference: "onednn" (default where available) or "torch"."""
    global _kernel
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "onednn" and not _onednn_available():
        raise ValueError("kernel 'onednn' is not available: this PyTorch build has no oneDNN (mkldnn)")
    _kernel = kernel


@contextlib.contextmanager
def cpu_inference_kernel_as(kernel: str):
    """Use `kernel` inside a `with` block, then restore the previous choice."""
    before = _kernel
    set_cpu_inference_kernel(kernel)
    try:
        yield
    finally:
        set_cpu_inference_kernel(before)


class Linear(nn.Linear):
    """`nn.Linear` with a faster kernel for float32 inference on a CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            _kernel == "onednn"
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu")  # autocast runs F.linear in bf16; keep that
            and x.dtype == torch.float32
            and w.dtype == torch.float32
            and w.is_contiguous()
            and x.dim() >= 2
            and not torch.compiler.is_compiling()  # compiled graphs pick their own kernels
        ):
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, "none", [], "")  # (..., out)
        return F.linear(x, w, self.bias)
