import pytest
import torch

import rga_ops
from rga_ops import reference
from tests.conftest import assert_relative
from tests.ops.op_tester import raises_exactly
from tests.triton.support import (
    DEVICE, DTYPES, TRITON_TESTS, assert_matches_with_gradients, compare_with_float64, leaf, ops_of, randn,
    registrations, requires_gpu,
)

pytestmark = TRITON_TESTS

# (B, C', N): N not a multiple of any block, C' = 1, B = 1, C' above the pinned block.
SHAPES = [(2, 3, 37), (1, 1, 5), (2, 20, 33)]


def _stack(theta, phi):
    return rga_ops.relation_stack(theta, phi, backend="triton")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_forward_and_backward(shape, dtype):
    inputs = [randn(*shape, dtype=dtype, seed=s) for s in (0, 1)]
    compare_with_float64(_stack, reference.relation_stack, inputs, dtype, "relation_stack")


def test_non_contiguous_inputs():
    b, c, n = 2, 3, 21
    emb = randn(b, 3 * c, n)
    transposed = [randn(b, n, c, seed=s).transpose(1, 2) for s in (1, 2)]
    strided = [randn(b, c, 2 * n, seed=s)[:, :, ::2] for s in (3, 4)]
    for theta, phi in [emb.split(c, 1)[:2], transposed, strided]:
        compare_with_float64(_stack, reference.relation_stack, [theta, phi], torch.float64, "relation_stack")


@pytest.mark.parametrize("registration", registrations())
def test_both_registrations_run_forward_and_backward(registration):
    ops = ops_of(registration)
    theta, phi = leaf(randn(2, 3, 19)), leaf(randn(2, 3, 19, seed=1))
    out = ops.relation_stack(theta, phi)
    assert_matches_with_gradients(out, reference.relation_stack(theta, phi), (theta, phi), str(registration))


@pytest.mark.parametrize("registration", registrations())
def test_opcheck(registration):
    if not registration.traceable:
        pytest.skip("a triton_op cannot take fake tensors in the interpreter")
    ops = ops_of(registration)
    theta, phi = randn(2, 3, 11, dtype=torch.float32), randn(2, 3, 11, dtype=torch.float32, seed=1)
    torch.library.opcheck(ops.relation_stack.default, (theta.requires_grad_(), phi.requires_grad_()))
    grad = randn(2, 22, 11, dtype=torch.float32, seed=2)
    torch.library.opcheck(ops.relation_stack_backward.default, (grad, theta.detach(), phi.detach()))


def test_compile_fullgraph():
    theta, phi = leaf(randn(2, 3, 13, dtype=torch.float32)), leaf(randn(2, 3, 13, dtype=torch.float32, seed=1))
    loss = lambda a, b: _stack(a, b).square().sum()  # noqa: E731
    compiled = torch.compile(loss, fullgraph=True)
    got = compiled(theta, phi)
    got_grads = torch.autograd.grad(got, (theta, phi))
    expected = loss(theta, phi)
    assert_relative(got, expected, 1e-5, "compiled loss")
    for a, b in zip(got_grads, torch.autograd.grad(expected, (theta, phi))):
        assert_relative(a, b, 1e-5, "compiled gradient")


def test_bad_input_raises_with_the_op_and_argument():
    """The backward's and the device's checks (the forward's: tests/ops, for every backend)."""
    t = randn(2, 3, 5)
    with raises_exactly(ValueError, "rga_ops_triton::relation_stack_backward: grad must have shape [2, 10, 5], "
                                    "got [2, 10, 4]"):
        torch.ops.rga_ops_triton.relation_stack_backward(randn(2, 10, 4), t, t)
    other = "cuda" if DEVICE == "cpu" else "cpu"
    if other == "cpu" or torch.cuda.is_available():
        s = rga_ops.triton.STATUS
        with raises_exactly(ValueError, f"rga_ops_triton::relation_stack: the triton backend runs on "
                                        f"{' and '.join(s.devices)} tensors here ({s.reason}), got a tensor on "
                                        f"{t.to(other).device}"):
            torch.ops.rga_ops_triton.relation_stack(t.to(other), t.to(other))


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_large_n_on_gpu(dtype):
    inputs = [randn(2, 32, 2048, dtype=dtype, seed=s) for s in (0, 1)]
    compare_with_float64(_stack, reference.relation_stack, inputs, dtype, "relation_stack N=2048")
