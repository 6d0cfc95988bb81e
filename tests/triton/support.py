"""What the Triton tests share: where the kernels run here, the dtypes and tolerances
there, and both registrations of the operators.

Without a GPU the kernels run in triton's interpreter (tests/conftest.py turns it on):
float64, float32 and float16 (the interpreter has no bfloat16), small shapes, one pinned
configuration. With a GPU they are compiled, autotuned, and tested in bfloat16 and at
large N too."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from rga_ops import triton as rga_triton
from tests.conftest import needs_gpu

STATUS = rga_triton.STATUS
DEVICE = "cpu" if STATUS.interpreted else "cuda"
# Every Triton test module's marks: skipped where the backend cannot run, and marked gpu where
# its tests run on a GPU (everywhere but in the interpreter).
TRITON_TESTS = [pytest.mark.skipif(not STATUS.usable, reason=f"the triton backend is not usable: {STATUS.reason}")]
TRITON_TESTS += [] if STATUS.interpreted else [pytest.mark.gpu]
requires_gpu = needs_gpu(STATUS.usable and not STATUS.interpreted,
                         "needs the Triton kernels compiled for a GPU (here: interpreter or none)")

DTYPES = [torch.float64, torch.float32, torch.float16] + ([] if STATUS.interpreted else [torch.bfloat16])
# Relative to the largest magnitude of the float64 reference (inputs rounded to the dtype first):
# a few units of the dtype's rounding (bfloat16: 2^-8 = 3.9e-3) and no more, so that a kernel
# accumulating in the input dtype instead of float32 fails.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 5e-3}


@dataclasses.dataclass(frozen=True)
class Registration:
    namespace: str
    use_triton_op: bool

    @property
    def traceable(self) -> bool:
        """Whether fake tensors can pass through (opcheck, torch.compile): not for a triton_op
        in the interpreter, where wrap_triton hands back the bare kernel."""
        return not (self.use_triton_op and STATUS.interpreted)

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    def __str__(self) -> str:
        return "triton_op" if self.use_triton_op else "custom_op"


DEFAULT = Registration(rga_triton.OPS_NAMESPACE, not STATUS.interpreted)
# The other registration of the same launches, in a namespace of its own.
ALTERNATIVE = Registration("rga_ops_triton_alternative", STATUS.interpreted)


@functools.cache
def _register_alternative() -> None:
    rga_triton.register(ALTERNATIVE.namespace, use_triton_op=ALTERNATIVE.use_triton_op)


def registrations() -> list:
    """Both registrations as pytest parameters (the alternative one registered on first use)."""
    return [pytest.param(r, id=str(r)) for r in (DEFAULT, ALTERNATIVE)]


def ops_of(registration: Registration):
    if registration == ALTERNATIVE:
        _register_alternative()
    return registration.ops


def randn(*shape, dtype=torch.float64, seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def assert_matches_with_gradients(out: torch.Tensor, expected: torch.Tensor, inputs, what: str) -> None:
    """out == expected to 1e-12 relative (float64), and so are their gradients in every one of
    `inputs` for one random output gradient."""
    from tests.conftest import assert_relative

    assert_relative(out, expected, 1e-12, f"{what} output")
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        assert_relative(a, b, 1e-12, f"{what} gradient")


def compare_with_float64(fn, reference, inputs, dtype, what: str) -> None:
    """fn(*inputs) in `dtype` against reference(*inputs) in float64 on the same (rounded)
    values: the output and the gradient of every input, for one random output gradient."""
    from tests.conftest import assert_relative

    ours = [leaf(t) for t in inputs]
    ref = [leaf(t.double()) for t in inputs]
    out, expected = fn(*ours), reference(*ref)
    assert out.dtype == dtype, f"{what}: output dtype {out.dtype}"
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = grad.to(device=expected.device, dtype=dtype)
    tol = TOLERANCE[dtype]
    assert_relative(out, expected, tol, f"{what} output")
    out.backward(grad)
    expected.backward(grad.double())
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.grad.dtype == dtype, f"{what}: gradient {i} has dtype {a.grad.dtype}"
        assert_relative(a.grad, b.grad, tol, f"{what} gradient of input {i}")

