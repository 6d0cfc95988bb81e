import pytest
import torch

import rga_ops
from rga_ops import reference
from tests.conftest import DEVICES, assert_relative, fast_backends, requires_cuda
from tests.ops.op_tester import OpTester, raises_exactly

# (B, C', N): odd N, C' = 1, B = 1, and sizes that straddle the kernels' 64-wide tiles
# (and the CUDA kernel's 16-channel chunks).
SHAPES = [(2, 4, 37), (1, 1, 5), (3, 7, 64), (2, 3, 130), (1, 17, 65)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-3}


def _inputs(shape, dtype, device, requires_grad=False):
    g = torch.Generator().manual_seed(sum(shape))
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad)
            for _ in range(2)]


def _expected(theta, phi):
    """J in float64 from G = theta^T phi computed directly."""
    g = theta.double().transpose(1, 2) @ phi.double()
    return torch.cat((g.transpose(1, 2), g), 1)


class TestRelationStack(OpTester):
    name = operator = "relation_stack"
    reference = staticmethod(reference.relation_stack)
    shapes = SHAPES
    gradcheck_shapes = [(2, 3, 11), (1, 1, 3), (1, 17, 5), (1, 1, 66)]
    tolerance = TOLERANCE
    differentiable = (0, 1)

    def inputs(self, shape, dtype, device):
        return _inputs(shape, dtype, device)

    def bad_inputs(self, device):
        t = torch.randn(2, 3, 5, device=device)
        yield [t[0], t[0]], ValueError, "theta must have 3 dimensions [B, C', N], got shape [3, 5]"
        yield [t, t[:, :2]], ValueError, "phi must have the shape of theta [B, C', N] = [2, 3, 5], got [2, 2, 5]"
        yield [t.long(), t.long()], TypeError, "theta must be a floating-point tensor, got dtype torch.int64"
        yield [t, t.double()], TypeError, "phi must have the dtype of theta (torch.float32), got torch.float64"
        yield [t, t.to("meta")], ValueError, f"phi must be on the device of theta ({t.device}), got meta"
        yield [t[:, :0], t[:, :0]], ValueError, "theta must have C' > 0 and N > 0, got shape [2, 0, 5]"


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_backward_checks_its_gradient(device):
    t = torch.randn(2, 3, 5, device=device)
    with raises_exactly(ValueError, "rga_ops::relation_stack_backward: grad must have shape [2, 10, 5], got [2, 5, 5]"):
        torch.ops.rga_ops.relation_stack_backward(torch.randn(2, 5, 5, device=device), t, t)


@pytest.mark.parametrize("device", DEVICES)
def test_layout_of_the_two_halves(device):
    theta, phi = _inputs((2, 3, 9), torch.float64, device)
    g = theta.transpose(1, 2) @ phi  # G[p, i] = theta_p . phi_i
    p = 4
    for backend in fast_backends(device):
        out = rga_ops.relation_stack(theta, phi, backend=backend)
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


@requires_cuda
def test_cuda_kernel_rejects_a_cpu_argument_by_name():
    t = torch.randn(2, 3, 5, device="cuda")
    with pytest.raises(ValueError, match=r"relation_stack: phi must be on the device of theta \(cuda:0\), got cpu"):
        torch.ops.rga_ops.relation_stack(t, t.cpu())


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_large_n_and_batch_one(dtype):
    """N = 4096 (64 x 64 tiles of 64), C' = 32, B = 1: forward and both gradients."""
    theta, phi = _inputs((1, 32, 4096), dtype, "cuda", requires_grad=True)
    out = rga_ops.relation_stack(theta, phi, backend="cuda")
    assert_relative(out, _expected(theta, phi), TOLERANCE[dtype], "J")
    grad = torch.randn_like(out)
    out.backward(grad)
    g64 = grad.double()
    dg = g64[:, :4096].transpose(1, 2) + g64[:, 4096:]  # dL/dG
    assert_relative(theta.grad, phi.detach().double() @ dg.transpose(1, 2), TOLERANCE[dtype], "dtheta")
    assert_relative(phi.grad, theta.detach().double() @ dg, TOLERANCE[dtype], "dphi")


@requires_cuda
@pytest.mark.slow
def test_cuda_offsets_beyond_int32():
    """B * 2N * N = 17 * 2 * 8192^2 > 2^31 elements (4.6 GB in float16): the last item is right."""
    b, c, n = 17, 2, 8192
    theta, phi = _inputs((b, c, n), torch.float16, "cuda")
    out = torch.ops.rga_ops.relation_stack(theta, phi)
    assert out.numel() > 2**31
    last = _expected(theta[-1:], phi[-1:])
    assert_relative(out[-1:], last, TOLERANCE[torch.float16], "last item")
    assert_relative(out[:1], _expected(theta[:1], phi[:1]), TOLERANCE[torch.float16], "first item")


@requires_cuda
def test_cuda_graphs_on_a_side_stream():
    """torch.compile(mode="reduce-overhead") records the op into a CUDA graph, run here on a
    stream other than the default one: the same results as eager, run after run."""
    theta, phi = _inputs((2, 8, 96), torch.float32, "cuda")
    compiled = torch.compile(lambda a, b: rga_ops.relation_stack(a, b, backend="cuda"), mode="reduce-overhead",
                             fullgraph=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        results = [compiled(theta * (1 + i), phi).clone() for i in range(4)]
        expected = [rga_ops.relation_stack(theta * (1 + i), phi, backend="cuda") for i in range(4)]
    torch.cuda.current_stream().wait_stream(stream)
    for got, want in zip(results, expected):
        assert_relative(got, want, 1e-6, "compiled")
