import pytest
import torch

import rga_ops
from rga_ops import reference
from rga_ops.triton import relation_project as relation_project_kernels
from tests.conftest import assert_relative
from tests.ops.op_tester import raises_exactly
from tests.triton.support import (
    DTYPES, TRITON_TESTS, assert_matches_with_gradients, compare_with_float64, leaf, ops_of, randn, registrations,
    requires_gpu,
)

pytestmark = TRITON_TESTS

# (B, C', N, K): odd N and K, C' = 1, B = 1, K = 1, and C', K, N above the pinned blocks.
SHAPES = [(2, 4, 37, 5), (1, 1, 5, 1), (3, 19, 40, 17)]


def _project(theta, phi, weight):
    return rga_ops.relation_project(theta, phi, weight, backend="triton")


def _inputs(shape, dtype=torch.float64):
    b, c, n, k = shape
    return [randn(b, c, n, dtype=dtype), randn(b, c, n, dtype=dtype, seed=1), randn(k, 2 * n, dtype=dtype, seed=2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_forward_and_backward(shape, dtype):
    compare_with_float64(_project, reference.relation_project, _inputs(shape, dtype), dtype, "relation_project")


def test_non_contiguous_and_adjacent_inputs():
    b, c, n, k = 2, 5, 24, 7
    emb = randn(b, 3 * c, n)
    weight = randn(2 * n, 2 * k, seed=1).t()[::2]
    transposed = [randn(b, n, c, seed=s).transpose(1, 2) for s in (2, 3)]  # the channel branch's layout
    strided = [randn(b, c, 2 * n, seed=s)[:, :, ::2] for s in (4, 5)]
    for theta, phi in [emb.split(c, 1)[:2], transposed, strided]:
        compare_with_float64(_project, reference.relation_project, [theta, phi, weight], torch.float64,
                             "relation_project")


@pytest.mark.parametrize("programs", [1, 4, 512])
def test_weight_gradient_split_over_the_batch(monkeypatch, programs):
    """The weight gradient summed over the batch in one chunk, in chunks of 3 items (the last one
    shorter) and per item."""
    monkeypatch.setattr(relation_project_kernels, "_WEIGHT_GRAD_PROGRAMS", programs)
    compare_with_float64(_project, reference.relation_project, _inputs((10, 3, 6, 2)), torch.float64,
                         "relation_project")


@pytest.mark.parametrize("registration", registrations())
def test_both_registrations_run_forward_and_backward(registration):
    ops = ops_of(registration)
    inputs = [leaf(t) for t in _inputs((2, 3, 11, 4))]
    out, coefficients = ops._relation_project(*inputs)
    assert coefficients.shape == (2, 6, 4)
    assert_matches_with_gradients(out, reference.relation_project(*inputs), inputs, str(registration))


@pytest.mark.parametrize("registration", registrations())
def test_opcheck(registration):
    if not registration.traceable:
        pytest.skip("a triton_op cannot take fake tensors in the interpreter")
    ops = ops_of(registration)
    inputs = _inputs((2, 3, 11, 4), torch.float32)
    torch.library.opcheck(ops._relation_project.default, [t.requires_grad_() for t in inputs])
    inputs = [t.detach() for t in inputs]
    out, coefficients = ops._relation_project(*inputs)
    torch.library.opcheck(ops.relation_project_backward.default, (torch.randn_like(out), *inputs, coefficients))


def test_compile_fullgraph():
    inputs = [leaf(t) for t in _inputs((2, 3, 13, 4), torch.float32)]
    loss = lambda *a: _project(*a).square().sum()  # noqa: E731
    got = torch.compile(loss, fullgraph=True)(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    expected = loss(*inputs)
    assert_relative(got, expected, 1e-5, "compiled loss")
    for a, b in zip(got_grads, torch.autograd.grad(expected, inputs)):
        assert_relative(a, b, 1e-5, "compiled gradient")


def test_bad_coefficients_raise_with_the_op_and_argument():
    """The backward's checks (the forward's: tests/ops, for every backend)."""
    theta, phi, weight = _inputs((2, 3, 5, 4))
    _, coefficients = torch.ops.rga_ops_triton._relation_project(theta, phi, weight)
    with raises_exactly(ValueError, "rga_ops_triton::relation_project_backward: coefficients must have shape "
                                    "[2, 6, 4], got [1, 6, 4]"):
        torch.ops.rga_ops_triton.relation_project_backward(randn(2, 4, 5), theta, phi, weight, coefficients[:1])


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4, 32, 2048, 256), (4, 256, 512, 64), (4, 16, 2048, 256)], ids=str)
def test_rga_shapes_on_gpu(shape, dtype):
    """RGA-Net's first-stage spatial branch, and channel-branch-like shapes (large C')."""
    compare_with_float64(_project, reference.relation_project, _inputs(shape, dtype), dtype, "relation_project")
