"""mini_gpt.linear.Linear: an nn.Linear whose float32 CPU inference runs through oneDNN.

It must compute what F.linear computes (to float32 rounding) for every shape the model feeds it,
keep autograd and every other dtype on F.linear unchanged, and really take the oneDNN kernel
where it says it does.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mini_gpt import GPT, GPTConfig, generate
from mini_gpt import linear as lin
from mini_gpt.linear import Linear, cpu_inference_kernel, cpu_inference_kernel_as, set_cpu_inference_kernel

needs_onednn = pytest.mark.skipif(not lin._onednn_available(), reason="this PyTorch build has no oneDNN")


def _layer(n_in=48, n_out=80, bias=True, seed=0):
    torch.manual_seed(seed)
    return Linear(n_in, n_out, bias=bias)


def _ops_called(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_it_is_an_nn_linear_with_the_same_parameters():
    layer = _layer()
    ref = nn.Linear(48, 80)
    assert isinstance(layer, nn.Linear)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    assert layer.weight.shape == ref.weight.shape


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 48), (1, 1, 48), (8, 48), (3, 17, 48), (2, 0, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_inference_equals_f_linear(shape, bias):
    layer = _layer(bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        out = layer(x)
        ref = F.linear(x, layer.weight, layer.bias)
    assert out.shape == ref.shape == (*shape[:-1], 80)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_non_contiguous_input():
    layer = _layer()
    x = torch.randn(4, 6, 48)[:, ::2]  # (4, 3, 48), strided
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_the_onednn_kernel_is_taken_only_for_float32_cpu_inference():
    layer = _layer()
    x = torch.randn(2, 48)
    assert cpu_inference_kernel() == "onednn"
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" in _ops_called(lambda: layer(x))
        with cpu_inference_kernel_as("torch"):
            assert "mkldnn::_linear_pointwise" not in _ops_called(lambda: layer(x))
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's bf16 matmul, as F.linear gives
            assert "mkldnn::_linear_pointwise" not in _ops_called(lambda: layer(x))
            assert layer(x).dtype == torch.bfloat16
        bf = _layer().to(torch.bfloat16)
        assert "mkldnn::_linear_pointwise" not in _ops_called(lambda: bf(x.bfloat16()))
    # autograd on: F.linear exactly, and gradients reach the weights
    assert "mkldnn::_linear_pointwise" not in _ops_called(lambda: layer(x))
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_kernel_choice_is_validated_and_restored():
    before = cpu_inference_kernel()
    with pytest.raises(ValueError, match="kernel must be one of"):
        set_cpu_inference_kernel("mkl")
    with cpu_inference_kernel_as("torch"):
        assert cpu_inference_kernel() == "torch"
    assert cpu_inference_kernel() == before


@needs_onednn
def test_every_weight_matrix_of_the_gpt_is_a_linear_and_generation_agrees_across_kernels():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4 + 1 and all(isinstance(m, Linear) for m in linears)
    idx = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with cpu_inference_kernel_as("torch"):
            ref_logits, ref_tokens = model(idx), generate(model, idx, 20, do_sample=False)
        logits, tokens = model(idx), generate(model, idx, 20, do_sample=False)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, ref_tokens)
