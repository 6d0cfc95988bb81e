import pytest
import torch

from rga_ops.ops.affine_relu_conv1x1 import affine_relu_conv1x1
from tests.conftest import DEVICES, assert_relative


def _composed(x, scale, shift, conv_weight):
    return torch.matmul(conv_weight, torch.relu(x * scale[:, None] + shift[:, None]))


def _inputs(b, k, n, h, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(b * k * n * h)
    make = lambda *s: torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    return [t.requires_grad_() for t in (make(b, k, n), make(k), make(k), make(h, k))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(2, 5, 17, 3), (1, 1, 4, 1), (3, 32, 128, 33)])
def test_matches_composed_ops(device, dtype, tol, shape):
    inputs = _inputs(*shape, dtype=dtype, device=device)
    inputs_ref = [t.detach().clone().requires_grad_() for t in inputs]
    out, expected = affine_relu_conv1x1(*inputs), _composed(*inputs_ref)
    assert_relative(out, expected, tol, "out")
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for name, t, r in zip(("x", "scale", "shift", "conv_weight"), inputs, inputs_ref):
        assert_relative(t.grad, r.grad, tol, f"grad {name}")


def test_keeps_only_its_inputs_for_backward():
    inputs = _inputs(2, 8, 64, 4, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        affine_relu_conv1x1(*inputs)
    assert {t.untyped_storage().data_ptr() for t in saved} == {t.untyped_storage().data_ptr() for t in inputs}


def test_gradcheck_and_opcheck():
    inputs = _inputs(2, 3, 7, 2)
    assert torch.autograd.gradcheck(affine_relu_conv1x1, inputs)
    torch.library.opcheck(affine_relu_conv1x1, [t.float().detach().requires_grad_() for t in inputs])


def test_bad_input():
    x, scale, shift, w = _inputs(2, 3, 7, 2)
    with pytest.raises(ValueError, match="conv_weight must be .H, K. with K = 3"):
        affine_relu_conv1x1(x, scale, shift, w[:, :2])
    with pytest.raises(ValueError, match="scale must be .K. = .3."):
        affine_relu_conv1x1(x, scale[:2], shift, w)
    with pytest.raises(TypeError, match="shift must have the dtype of x"):
        affine_relu_conv1x1(x, scale, shift.float(), w)
