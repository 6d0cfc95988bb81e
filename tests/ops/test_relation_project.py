import pytest
import torch

import rga_ops
from rga_ops import reference
from tests.conftest import COMPILED_BACKEND, DEVICES, assert_relative, fast_backends, requires_cuda
from tests.ops.op_tester import OpTester, raises_exactly

# (B, C', N, K): odd N, C' = 1, B = 1, K = 1, and an RGA-like shape.
SHAPES = [(2, 4, 37, 5), (1, 1, 5, 1), (3, 7, 64, 9), (2, 16, 128, 16), (1, 32, 200, 24)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-3}


def _inputs(shape, dtype, device, requires_grad=False):
    b, c, n, k = shape
    g = torch.Generator().manual_seed(sum(shape))
    make = lambda *s: torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    return [t.requires_grad_(requires_grad) for t in (make(b, c, n), make(b, c, n), make(k, 2 * n))]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_adjacent_inputs(device):
    b, c, n, k = 2, 5, 24, 7
    # theta and phi as adjacent channel blocks of one tensor (the layout RGAModule uses) ...
    emb = torch.randn(b, 3 * c, n, dtype=torch.float64, device=device)
    theta, phi, _ = emb.split(c, 1)
    # ... and as transposed views; weight as a strided view.
    weight = torch.randn(2 * n, 2 * k, dtype=torch.float64, device=device).t()[::2]
    transposed = [torch.randn(b, n, c, dtype=torch.float64, device=device).transpose(1, 2) for _ in range(2)]
    strided = [torch.randn(b, c, 2 * n, dtype=torch.float64, device=device)[:, :, ::2] for _ in range(2)]
    cases = [(theta, phi), transposed, strided, (phi, theta)]
    for th, ph in cases:
        inputs = [t.detach().requires_grad_() for t in (th, ph, weight)]
        inputs64 = [t.detach().clone().requires_grad_() for t in (th, ph, weight)]
        expected = reference.relation_project(*inputs64)
        grad = torch.randn_like(expected)
        expected.backward(grad)
        for backend in fast_backends(device):
            for t in inputs:
                t.grad = None
            out = rga_ops.relation_project(*inputs, backend=backend)
            assert_relative(out, expected, 1e-12, backend)
            out.backward(grad)
            for t, t64 in zip(inputs, inputs64):
                assert_relative(t.grad, t64.grad, 1e-12, f"{backend} grad")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_in_bfloat16_and_the_coefficients(device):
    """bfloat16 (float32 coefficients); relation_project is _relation_project's first output."""
    for shape in [(2, 3, 11, 4), (1, 1, 66, 2)]:
        inputs = _inputs(shape, torch.bfloat16, device, requires_grad=True)
        torch.library.opcheck(torch.ops.rga_ops._relation_project.default, inputs)
        out, coefficients = torch.ops.rga_ops._relation_project(*[t.detach() for t in inputs])
        assert coefficients.shape == (shape[0], 2 * shape[1], shape[3]) and coefficients.dtype == torch.float32
        torch.testing.assert_close(torch.ops.rga_ops.relation_project(*inputs), out)
        torch.library.opcheck(torch.ops.rga_ops.relation_project_backward.default,
                              (torch.randn_like(out), *[t.detach() for t in inputs], coefficients))


@pytest.mark.parametrize("device", DEVICES)
def test_no_n_by_n_tensor_is_saved_for_backward(device):
    """Only theta, phi, weight and the [B, 2C', K] coefficients are kept (no [N, N] or [2N, N] intermediate)."""
    b, c, n, k = 2, 4, 256, 8
    inputs = _inputs((b, c, n, k), torch.float32, device, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        rga_ops.relation_project(*inputs, backend=COMPILED_BACKEND[device])
    assert sorted(t.numel() for t in saved) == sorted([t.numel() for t in inputs] + [b * 2 * c * k])


_GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::baddbmm_", "aten::addbmm", "aten::matmul")


@pytest.mark.parametrize("device", DEVICES)
def test_backward_gemms_do_not_grow_with_the_batch(device):
    """The compiled backward is a fixed number of GEMM calls whatever the batch size (the weight
    gradient is one GEMM over the batch, not one per item as addbmm is on CUDA), also for
    RGAModule's embeddings, channel slices of one tensor that do not fold into a matrix."""
    if COMPILED_BACKEND[device] not in fast_backends(device):
        pytest.skip(f"the {COMPILED_BACKEND[device]} backend is not usable here")
    counts = []
    for b in (2, 9):
        emb = torch.randn(b, 12, 37, device=device)
        theta, phi, weight = emb[:, :4], emb[:, 4:8], torch.randn(5, 74, device=device)
        _, coefficients = torch.ops.rga_ops._relation_project(theta, phi, weight)
        grad = torch.randn(b, 5, 37, device=device)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            torch.ops.rga_ops.relation_project_backward(grad, theta, phi, weight, coefficients)
        names = [event.name for event in profile.events()]
        counts.append({name: names.count(name) for name in _GEMMS if name in names})
    assert counts[0] == counts[1], counts
    assert "aten::addbmm" not in counts[0], counts[0]


class TestRelationProject(OpTester):
    name, operator = "relation_project", "_relation_project"
    reference = staticmethod(reference.relation_project)
    shapes = SHAPES
    gradcheck_shapes = [(2, 3, 11, 4), (1, 1, 3, 1), (1, 1, 66, 2)]
    tolerance = TOLERANCE
    differentiable = (0, 1, 2)

    def inputs(self, shape, dtype, device):
        return _inputs(shape, dtype, device)

    def bad_inputs(self, device):
        t = torch.randn(2, 3, 5, device=device)
        w = torch.randn(4, 10, device=device)
        yield [t[0], t, w], ValueError, "theta must have 3 dimensions [B, C', N], got shape [3, 5]"
        yield [t, t[:1], w], ValueError, "phi must have the shape of theta [B, C', N] = [2, 3, 5], got [1, 3, 5]"
        yield [t, torch.randn(2, 4, 5, device=device), w], ValueError, (
            "phi must have the shape of theta [B, C', N] = [2, 3, 5], got [2, 4, 5]")
        yield [t, t, w[:, :9]], ValueError, "weight must be [K, 2N] = [K, 10] for N = 5, got shape [4, 9]"
        yield [t, t, w[None]], ValueError, "weight must have 2 dimensions [K, 2N], got shape [1, 4, 10]"
        yield [t, t, w[:0]], ValueError, "weight must have K > 0 rows, got shape [0, 10]"
        yield [t.int(), t.int(), w.int()], TypeError, "theta must be a floating-point tensor, got dtype torch.int32"
        yield [t, t.double(), w], TypeError, "phi must have the dtype of theta (torch.float32), got torch.float64"
        yield [t, t, w.double()], TypeError, "weight must have the dtype of theta (torch.float32), got torch.float64"
        yield [t, t.to("meta"), w], ValueError, f"phi must be on the device of theta ({t.device}), got meta"
        yield [t, t, w.to("meta")], ValueError, f"weight must be on the device of theta ({t.device}), got meta"


@pytest.mark.parametrize("device", DEVICES)
def test_bad_grad_raises(device):
    theta, phi, weight = _inputs((2, 3, 5, 4), torch.float32, device)
    _, coefficients = torch.ops.rga_ops._relation_project(theta, phi, weight)
    with raises_exactly(ValueError, "rga_ops::relation_project_backward: grad must have shape [2, 4, 5], got [2, 4, 6]"):
        torch.ops.rga_ops.relation_project_backward(torch.randn(2, 4, 6, device=device), theta, phi, weight,
                                                    coefficients)
    with raises_exactly(ValueError, "rga_ops::relation_project_backward: coefficients must have shape [2, 6, 4], "
                                    "got [1, 6, 4]"):
        torch.ops.rga_ops.relation_project_backward(torch.randn(2, 4, 5, device=device), theta, phi, weight,
                                                    coefficients[:1])


def test_unknown_or_unavailable_backend():
    theta, phi, weight = _inputs((2, 3, 5, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        rga_ops.relation_project(theta, phi, weight, backend="fast")
    with pytest.raises(rga_ops.BackendUnavailableError, match="backend 'cuda' cannot run on cpu tensors"):
        rga_ops.relation_project(theta, phi, weight, backend="cuda")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_large_n_and_batch_one(dtype):
    """N = 4096, C' = 32, K = 512, B = 1: forward and every gradient against the float64 reference."""
    inputs = _inputs((1, 32, 4096, 512), dtype, "cuda", requires_grad=True)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    expected = reference.relation_project(*inputs64)
    grad = torch.randn_like(expected).to(dtype)
    expected.backward(grad.double())
    out = rga_ops.relation_project(*inputs, backend="cuda")
    assert_relative(out, expected, TOLERANCE[dtype], "out")
    out.backward(grad)
    for name, t, t64 in zip(("dtheta", "dphi", "dweight"), inputs, inputs64):
        assert_relative(t.grad, t64.grad, TOLERANCE[dtype], name)


@requires_cuda
def test_cuda_graphs_on_a_side_stream():
    """torch.compile(mode="reduce-overhead") records forward and backward into CUDA graphs, run
    here on a stream other than the default one: the same results as eager, run after run."""
    base = _inputs((2, 8, 96, 12), torch.float32, "cuda")
    compiled = torch.compile(lambda *a: rga_ops.relation_project(*a, backend="cuda"), mode="reduce-overhead")

    def step(fn, i):
        inputs = [(t * (1 + i)).requires_grad_() for t in base]
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        return [out.detach().clone()] + [t.grad for t in inputs]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        results = [step(compiled, i) for i in range(4)]
        expected = [step(lambda *a: rga_ops.relation_project(*a, backend="cuda"), i) for i in range(4)]
    torch.cuda.current_stream().wait_stream(stream)
    for got, want in zip(results, expected):
        for g, w in zip(got, want):
            assert_relative(g, w, 1e-5, "compiled")
