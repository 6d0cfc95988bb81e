import pytest
import torch

import rga_ops
from rga_ops import reference
from rga_ops.ops.batch_norm_relu_conv1x1 import batch_norm_relu_conv1x1
from tests.conftest import DEVICES, assert_relative, requires_cuda
from tests.ops.op_tester import OpTester, raises_exactly


def _composed(x, bn_weight, bn_bias, conv_weight, training, running):
    """The op's reference: BatchNorm (batch statistics in training) -> ReLU -> 1x1 conv, as separate ops."""
    mean, var = running
    return reference.batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight, training, 1e-5)


def _inputs(b, k, n, h, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(b * k * n * h)
    make = lambda *s: torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    x, bn_weight, bn_bias, conv_weight = make(b, k, n), make(k).abs() + 0.5, make(k), make(h, k)
    running = (make(k) * 0.1, make(k).abs() + 0.5)
    return [t.requires_grad_() for t in (x, bn_weight, bn_bias, conv_weight)], running


def _ours(x, bn_weight, bn_bias, conv_weight, training, running):
    if training:  # batch statistics in float32 for reduced-precision x, as torch.batch_norm_update_stats gives them
        stats_x = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
        var, mean = torch.var_mean(stats_x, dim=(0, 2), correction=0)
    else:
        mean, var = running
    return batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight, training, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4), (torch.float16, 2e-3),
                                       (torch.bfloat16, 5e-3)], ids=["f64", "f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(2, 5, 17, 3), (1, 1, 4, 1), (3, 32, 128, 33)], ids=str)
def test_matches_composed_ops(device, training, dtype, tol, shape):
    """Against BatchNorm -> ReLU -> conv composed in float64 on the same (rounded) inputs."""
    inputs, running = _inputs(*shape, dtype=dtype, device=device)
    if dtype in (torch.float16, torch.bfloat16):
        running = tuple(t.float() for t in running)
    inputs_ref = [t.detach().double().requires_grad_() for t in inputs]
    out = _ours(*inputs, training, running)
    expected = _composed(*inputs_ref, training, tuple(t.double() for t in running))
    assert out.dtype == dtype
    assert_relative(out, expected, tol, "out")
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad.double())
    for name, t, r in zip(("x", "bn_weight", "bn_bias", "conv_weight"), inputs, inputs_ref):
        assert_relative(t.grad, r.grad, tol, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_keeps_only_x_and_small_tensors_for_backward(device):
    inputs, running = _inputs(2, 8, 64, 4, dtype=torch.float32, device=device)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _ours(*inputs, True, running)
    large = [t for t in saved if t.numel() > 64]
    assert len(large) == 1 and large[0].data_ptr() == inputs[0].data_ptr()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_and_opcheck(device, training):
    inputs, running = _inputs(2, 3, 7, 2, device=device)
    assert torch.autograd.gradcheck(lambda *a: _ours(*a, training, running), inputs)
    x, bn_weight, bn_bias, conv_weight = [t.detach().float().requires_grad_() for t in inputs]
    var, mean = torch.var_mean(x.detach(), dim=(0, 2), correction=0)
    args = (x, mean, var, bn_weight, bn_bias, conv_weight, training, 1e-5)
    torch.library.opcheck(torch.ops.rga_ops.batch_norm_relu_conv1x1.default, args)
    grad = torch.randn(2, 2, 7, device=device)
    torch.library.opcheck(torch.ops.rga_ops.batch_norm_relu_conv1x1_backward.default,
                          (grad, *[a.detach() if isinstance(a, torch.Tensor) else a for a in args]))


class TestBatchNormReluConv1x1(OpTester):
    """The bad inputs and double backward of OpTester; parity, gradcheck and opcheck in both
    modes are this module's own."""

    name = operator = "batch_norm_relu_conv1x1"
    gradcheck_shapes = [(2, 3, 7, 2)]
    differentiable = (0, 3, 4, 5)
    test_matches_reference_forward_and_backward = test_gradcheck = test_opcheck = None

    def inputs(self, shape, dtype, device):
        (x, bn_weight, bn_bias, conv_weight), _ = _inputs(*shape, dtype=dtype, device=device)
        var, mean = torch.var_mean(x.detach(), dim=(0, 2), correction=0)
        return [x.detach(), mean, var, bn_weight.detach(), bn_bias.detach(), conv_weight.detach(), True, 1e-5]

    def bad_inputs(self, device):
        x, mean, var, bn_weight, bn_bias, conv_weight, *flags = self.inputs((2, 3, 7, 2), torch.float64, device)
        yield [x, mean, var, bn_weight, bn_bias, conv_weight[:, :2], *flags], ValueError, (
            "conv_weight must be [H, K] with K = 3, got shape [2, 2]")
        yield [x, mean[:2], var, bn_weight, bn_bias, conv_weight, *flags], ValueError, (
            "mean must be [K] = [3], got shape [2]")
        yield [x, mean, var, bn_weight[None], bn_bias, conv_weight, *flags], ValueError, (
            "bn_weight must be [K] = [3], got shape [1, 3]")
        yield [x, mean, var, bn_weight, bn_bias, conv_weight.float(), *flags], TypeError, (
            "conv_weight must have the dtype of x (torch.float64), got torch.float32")
        yield [x[0], mean, var, bn_weight, bn_bias, conv_weight, *flags], ValueError, (
            "x must have 3 dimensions [B, K, N], got shape [3, 7]")
        yield [x.long(), mean, var, bn_weight, bn_bias, conv_weight.long(), *flags], TypeError, (
            "x must be a floating-point tensor, got dtype torch.int64")
        yield [x, mean, var.to("meta"), bn_weight, bn_bias, conv_weight, *flags], ValueError, (
            f"var must be on the device of x ({x.device}), got meta")


@pytest.mark.skipif("cpu" not in rga_ops.triton.STATUS.devices, reason="needs the triton backend on CPU tensors")
def test_the_triton_backend_has_no_kernel_for_it():
    args = TestBatchNormReluConv1x1().inputs((2, 3, 7, 2), torch.float32, "cpu")
    with raises_exactly(rga_ops.BackendUnavailableError, "rga_ops backend 'triton' has no kernel for "
                        "batch_norm_relu_conv1x1; it has: reference, torch, cpp, cuda"):
        batch_norm_relu_conv1x1(*args, backend="triton")


@requires_cuda
def test_cuda_kernel_rejects_a_cpu_argument_by_name():
    (x, bn_weight, bn_bias, conv_weight), (mean, var) = _inputs(2, 3, 7, 2, device="cuda")
    with pytest.raises(ValueError, match=r"conv_weight must be on the device of x \(cuda:0\), got cpu"):
        batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight.cpu(), True, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_under_inference_mode(device):
    """Evaluation under torch.inference_mode(): the CPU kernel's worker threads write into
    tensors the caller made there (InferenceMode is thread-local)."""
    inputs, running = _inputs(4, 16, 256, 8, dtype=torch.float32, device=device)
    with torch.no_grad():
        expected = _ours(*inputs, False, running)
    with torch.inference_mode():
        got = _ours(*inputs, False, running)
    assert torch.equal(got, expected)
