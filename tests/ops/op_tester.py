"""The tests every rga_ops operator has, written once (as torchvision's test_ops.py writes them
for its ops): a test class per operator derives from OpTester and says what the operator is and
how to make its inputs; OpTester runs

- every fast backend against the reference in float64 on inputs rounded to each dtype, output
  and every gradient, at the subclass's shapes and per-dtype tolerances;
- gradcheck of every fast backend in float64;
- opcheck of the compiled operator and its backward (schemas, fake kernels, autograd);
- the same bad input through every backend (the public function with each backend= and the
  registered operators of the compiled library and of the Triton backend): the same message,
  word for word, naming the op and the argument;
- a gradient of the gradient, which raises a clear error."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import pytest
import torch

import rga_ops
from tests.conftest import COMPILED_BACKEND, DEVICES, assert_relative, fast_backends

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def randn(*shape, dtype=torch.float64, device="cpu", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def raises_exactly(error: type[Exception], message: str):
    """pytest.raises matching the whole message, not a prefix of it."""
    return pytest.raises(error, match="^" + re.escape(message) + "$")


class OpTester:
    """Subclasses set the class attributes and implement `inputs` and `bad_inputs`."""

    name: str  # the op: rga_ops.<name>, torch.ops.rga_ops.<name> (or _<name>), rga_ops_triton likewise
    operator: str  # the registered operator with autograd ("_relation_project" for relation_project)
    reference: Callable  # the reference computation, the public function's arguments without backend=
    shapes: list  # of the parity test
    gradcheck_shapes: list
    tolerance: dict  # dtype -> relative tolerance of the parity test
    differentiable: tuple[int, ...]  # the arguments that get gradients

    def inputs(self, shape, dtype: torch.dtype, device) -> list:
        """The public function's arguments (without backend=) at `shape`."""
        raise NotImplementedError

    def operator_inputs(self, args: list) -> list:
        """The registered operator's arguments for the public function's `args`."""
        return args

    def bad_inputs(self, device) -> Iterable[tuple]:
        """(arguments of the public function, error, message after "rga_ops::<name>: " [, the
        registered operators' arguments with the same fault, or None where they have no such
        argument; default: operator_inputs(arguments)])."""
        raise NotImplementedError

    def call(self, args, backend: str):
        return getattr(rga_ops, self.name)(*args, backend=backend)

    def pytest_generate_tests(self, metafunc) -> None:
        if "shape" in metafunc.fixturenames:
            metafunc.parametrize("shape", self.shapes, ids=str)
        if "small_shape" in metafunc.fixturenames:
            metafunc.parametrize("small_shape", self.gradcheck_shapes, ids=str)
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", DTYPES, ids=str)
        if "device" in metafunc.fixturenames:
            metafunc.parametrize("device", DEVICES)

    def _leaves(self, args, dtype=None):
        return [(a.detach().to(dtype or a.dtype).requires_grad_() if i in self.differentiable else a)
                if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)]

    def test_matches_reference_forward_and_backward(self, device, dtype, shape):
        args = self.inputs(shape, dtype, device)
        ref_args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        ref_args = self._leaves(ref_args)
        expected = self.reference(*ref_args)
        # The output gradient rounded to the dtype, which the reference sees too.
        grad = randn(*expected.shape, dtype=dtype, device=device, seed=1)
        expected.backward(grad.double())
        for backend in fast_backends(device):
            ours = self._leaves(args)
            out = self.call(ours, backend)
            assert out.dtype == dtype and out.shape == expected.shape, backend
            assert_relative(out, expected, self.tolerance[dtype], f"{backend} output")
            out.backward(grad)
            for i in self.differentiable:
                if ours[i] is not None:
                    assert_relative(ours[i].grad, ref_args[i].grad, self.tolerance[dtype], f"{backend} gradient {i}")

    def test_gradcheck(self, device, small_shape):
        args = self._leaves(self.inputs(small_shape, torch.float64, device))
        tensors = [args[i] for i in self.differentiable if args[i] is not None]
        for backend in fast_backends(device):
            def fn(*ts, backend=backend):
                it = iter(ts)
                return self.call([next(it) if i in self.differentiable and a is not None else a
                                  for i, a in enumerate(args)], backend)
            assert torch.autograd.gradcheck(fn, tensors), backend

    def _compiled(self, device) -> None:
        if COMPILED_BACKEND[device] not in fast_backends(device):
            pytest.skip(f"the {COMPILED_BACKEND[device]} backend is not usable here")

    def test_opcheck(self, device):
        self._compiled(device)
        for dtype, shape in ((d, s) for d in (torch.float32, torch.float64) for s in self.gradcheck_shapes):
            args = self.operator_inputs(self._leaves(self.inputs(shape, dtype, device)))
            operator = getattr(torch.ops.rga_ops, self.operator)
            torch.library.opcheck(operator.default, args)
            out = operator(*args)
            outputs = out if isinstance(out, tuple) else (out,)
            spec = rga_ops._registry.OPS[self.name]
            saved = [outputs[i].detach() for i in spec.saved_outputs]
            plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
            torch.library.opcheck(getattr(torch.ops.rga_ops, spec.backward).default,
                                  (torch.randn_like(outputs[0]), *plain, *saved))

    def _operators(self, device):
        """(namespace, operators) that have this operator and take tensors on `device` here."""
        yield "rga_ops", torch.ops.rga_ops
        triton_ops = getattr(torch.ops, rga_ops.triton.OPS_NAMESPACE)
        if device in rga_ops.triton.STATUS.devices and hasattr(triton_ops, self.operator):
            yield rga_ops.triton.OPS_NAMESPACE, triton_ops

    def test_bad_input_gets_the_same_message_from_every_backend(self, device):
        self._compiled(device)
        for args, error, message, *operator_args in self.bad_inputs(device):
            for backend in ["reference", *fast_backends(device)]:
                with raises_exactly(error, f"rga_ops::{self.name}: {message}"):
                    self.call(args, backend)
            operator_args = operator_args[0] if operator_args else self.operator_inputs(args)
            if operator_args is None:
                continue
            for namespace, ops in self._operators(device):
                with raises_exactly(error, f"{namespace}::{self.name}: {message}"):
                    getattr(ops, self.operator)(*operator_args)

    def test_double_backward_raises(self, device):
        self._compiled(device)
        args = self._leaves(self.inputs(self.gradcheck_shapes[0], torch.float64, device))
        out = self.call(args, COMPILED_BACKEND[device])
        tensors = [args[i] for i in self.differentiable if args[i] is not None]
        grads = torch.autograd.grad(out, tensors, torch.ones_like(out), create_graph=True)
        with raises_exactly(NotImplementedError,
                            f"rga_ops::{self.name}: a gradient of its gradient (double backward) is not supported"):
            torch.autograd.grad(sum(g.sum() for g in grads), tensors)
