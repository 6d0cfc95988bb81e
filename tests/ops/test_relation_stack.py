import pytest
import torch

import rga_ops
from rga_ops import reference
from tests.conftest import DEVICES, assert_relative, fast_backends

# (B, C', N): odd N, C' = 1, B = 1, and sizes that straddle the CPU kernel's 64-wide tiles.
SHAPES = [(2, 4, 37), (1, 1, 5), (3, 7, 64), (2, 3, 130), (1, 16, 128)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _inputs(shape, dtype, device, requires_grad=False):
    g = torch.Generator().manual_seed(sum(shape))
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)
            for _ in range(2)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_forward_and_backward(device, dtype, shape):
    theta, phi = _inputs(shape, dtype, device, requires_grad=True)
    t64, p64 = (t.detach().double().requires_grad_() for t in (theta, phi))
    expected = reference.relation_stack(t64, p64)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    for backend in fast_backends(device):
        theta.grad = phi.grad = None
        out = rga_ops.relation_stack(theta, phi, backend=backend)
        assert out.dtype == dtype and out.shape == (shape[0], 2 * shape[2], shape[2])
        assert_relative(out, expected, TOLERANCE[dtype], f"{backend} J")
        out.backward(grad.to(dtype))
        assert_relative(theta.grad, t64.grad, TOLERANCE[dtype], f"{backend} dtheta")
        assert_relative(phi.grad, p64.grad, TOLERANCE[dtype], f"{backend} dphi")


def test_layout_of_the_two_halves():
    theta, phi = _inputs((2, 3, 9), torch.float64, "cpu")
    g = theta.transpose(1, 2) @ phi  # G[p, i] = theta_p . phi_i
    out = rga_ops.relation_stack(theta, phi, backend="cpp")
    p = 4
    torch.testing.assert_close(out[:, :9, p], g[:, p, :])
    torch.testing.assert_close(out[:, 9:, p], g[:, :, p])


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(2, 40, 10, dtype=torch.float64, device=device)
    theta = base.transpose(1, 2)[:, :, ::2]  # [2, 10, 20], strided in both dims
    phi = torch.randn(2, 20, 10, dtype=torch.float64, device=device).transpose(1, 2)
    expected = reference.relation_stack(theta, phi)
    for backend in fast_backends(device):
        assert_relative(rga_ops.relation_stack(theta, phi, backend=backend), expected, 1e-12, backend)


@pytest.mark.parametrize("shape", [(2, 3, 11), (1, 1, 3)])
def test_gradcheck_cpp(shape):
    theta, phi = _inputs(shape, torch.float64, "cpu", requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: rga_ops.relation_stack(a, b, backend="cpp"), (theta, phi))


def test_opcheck():
    for shape in [(2, 3, 11), (1, 1, 66)]:
        theta, phi = _inputs(shape, torch.float32, "cpu", requires_grad=True)
        torch.library.opcheck(torch.ops.rga_ops.relation_stack.default, (theta, phi))
        grad = torch.randn(shape[0], 2 * shape[2], shape[2])
        torch.library.opcheck(torch.ops.rga_ops.relation_stack_backward.default,
                              (grad, theta.detach(), phi.detach()))


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_bad_input_raises_with_the_op_and_argument(backend):
    t = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="rga_ops::relation_stack: phi must have the shape of theta"):
        rga_ops.relation_stack(t, t[:, :2], backend=backend)
    with pytest.raises(TypeError, match="rga_ops::relation_stack: theta must be a floating-point tensor"):
        rga_ops.relation_stack(t.long(), t.long(), backend=backend)
    with pytest.raises(ValueError, match="rga_ops::relation_stack: theta must have 3 dimensions"):
        rga_ops.relation_stack(t[0], t[0], backend=backend)


def test_cpp_kernel_checks_its_inputs():
    t = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="rga_ops::relation_stack: phi must have the shape of theta"):
        torch.ops.rga_ops.relation_stack(t, t[:, :2])
    with pytest.raises(ValueError, match=r"relation_stack_backward: grad must have shape \[2, 10, 5\]"):
        torch.ops.rga_ops.relation_stack_backward(torch.randn(2, 5, 5), t, t)
