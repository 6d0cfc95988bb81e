"""The rga_ops operators as data, and the one helper that registers them.

`OPS` holds, per operator: its schema and its backward operator's, their fake kernels (input
checks and empty outputs: the fake tensors torch.compile and torch.export trace with, and the
allocation of the Triton launches), and which forward outputs the backward takes. The C++
library (csrc/rga_ops.cpp) declares the same schemas for rga_ops::*; a test compares them.

`register_autograd(spec, namespace)` gives any registration of an operator its autograd: the
compiled library's rga_ops::* (`register_compiled_library`) and the Triton backend's
rga_ops_triton::* (`define`). The backward runs the registered backward operator; a gradient of
the gradient raises a clear error."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ._checks import (check_batch_norm_relu_conv_inputs, check_coefficients, check_embeddings, check_grad,
                       check_projection_weight, check_soft_gate_inputs)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and intermediate dtype: float64 stays float64, everything else float32
    (the twin of csrc/compute_dtype.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str  # the operator with autograd, e.g. "_relation_project"
    backward: str  # its backward operator: backward(grad, *inputs, *saved outputs) -> gradients
    schema: str
    backward_schema: str
    fake: Callable  # fake(op label, *inputs) -> empty outputs, after the input checks
    backward_fake: Callable  # backward_fake(op label, grad, *inputs, *saved outputs)
    saved_outputs: tuple[int, ...] = ()  # forward outputs the backward takes; not differentiable
    gradients_of: tuple[int, ...] | None = None  # the inputs the backward's outputs belong to (None: all)

    @property
    def label(self) -> str:
        """The name messages give the operator: "relation_project" for "_relation_project"."""
        return self.name.lstrip("_")


def _relation_stack(op, theta, phi):
    check_embeddings(op, theta, phi)
    b, _, n = theta.shape
    return theta.new_empty((b, 2 * n, n))


def _relation_stack_backward(op, grad, theta, phi):
    check_embeddings(op, theta, phi)
    b, _, n = theta.shape
    check_grad(op, grad, theta, (b, 2 * n, n))
    return theta.new_empty(theta.shape), phi.new_empty(phi.shape)


def _relation_project(op, theta, phi, weight):
    check_embeddings(op, theta, phi)
    check_projection_weight(op, theta, weight)
    b, c, n = theta.shape
    k = weight.shape[0]
    return theta.new_empty((b, k, n)), theta.new_empty((b, 2 * c, k), dtype=compute_dtype(theta.dtype))


def _relation_project_backward(op, grad, theta, phi, weight, coefficients):
    check_embeddings(op, theta, phi)
    check_projection_weight(op, theta, weight)
    check_grad(op, grad, theta, (theta.shape[0], weight.shape[0], theta.shape[2]))
    check_coefficients(op, coefficients, theta, weight)
    return theta.new_empty(theta.shape), phi.new_empty(phi.shape), weight.new_empty(weight.shape)


def _ha_soft_gate(op, x, s, alpha, beta):
    check_soft_gate_inputs(op, x, s, alpha, beta)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _ha_soft_gate_backward(op, grad, x, s, alpha, beta):
    check_soft_gate_inputs(op, x, s, alpha, beta)
    check_grad(op, grad, x, x.shape)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(s, memory_format=torch.contiguous_format), alpha.new_empty(alpha.shape),
            beta.new_empty(beta.shape))


def _batch_norm_relu_conv1x1(op, x, mean, var, bn_weight, bn_bias, conv_weight, training, eps):
    check_batch_norm_relu_conv_inputs(op, x, mean, var, bn_weight, bn_bias, conv_weight)
    return x.new_empty((x.shape[0], conv_weight.shape[0], x.shape[2]))


def _batch_norm_relu_conv1x1_backward(op, grad, x, mean, var, bn_weight, bn_bias, conv_weight, training, eps):
    check_batch_norm_relu_conv_inputs(op, x, mean, var, bn_weight, bn_bias, conv_weight)
    check_grad(op, grad, x, (x.shape[0], conv_weight.shape[0], x.shape[2]))
    k = x.shape[1]
    return (x.new_empty(x.shape), x.new_empty((k,), dtype=bn_weight.dtype if bn_weight is not None else x.dtype),
            x.new_empty((k,), dtype=bn_bias.dtype if bn_bias is not None else x.dtype),
            conv_weight.new_empty(conv_weight.shape))


OPS = {spec.label: spec for spec in (
    # J[b, :N, p] = G[b, p, :], J[b, N:, p] = G[b, :, p] with G = theta^T phi.
    OpSpec("relation_stack", "relation_stack_backward", "(Tensor theta, Tensor phi) -> Tensor",
           "(Tensor grad, Tensor theta, Tensor phi) -> (Tensor, Tensor)", _relation_stack, _relation_stack_backward),
    # The 1x1 conv (weight [K, 2N]) of relation_stack(theta, phi) and the coefficients [A_b | B_b]^T
    # ([B, 2C', K]) its backward needs besides the inputs; relation_project is its first output.
    OpSpec("_relation_project", "relation_project_backward",
           "(Tensor theta, Tensor phi, Tensor weight) -> (Tensor, Tensor)",
           "(Tensor grad, Tensor theta, Tensor phi, Tensor weight, Tensor coefficients) -> (Tensor, Tensor, Tensor)",
           _relation_project, _relation_project_backward, saved_outputs=(1,)),
    # x * sigmoid(relu(alpha[b, c] * s[b, p] + beta[c])): HA's soft-attention gate in closed form.
    OpSpec("ha_soft_gate", "ha_soft_gate_backward", "(Tensor x, Tensor s, Tensor alpha, Tensor beta) -> Tensor",
           "(Tensor grad, Tensor x, Tensor s, Tensor alpha, Tensor beta) -> (Tensor, Tensor, Tensor, Tensor)",
           _ha_soft_gate, _ha_soft_gate_backward),
    # conv_weight [H, K] @ relu(batch_norm(x)) per item, keeping only x for backward; mean and var
    # get no gradient (x's batch statistics when training, the gradient through them included).
    OpSpec("batch_norm_relu_conv1x1", "batch_norm_relu_conv1x1_backward",
           "(Tensor x, Tensor mean, Tensor var, Tensor? bn_weight, Tensor? bn_bias, Tensor conv_weight, bool training,"
           " float eps) -> Tensor",
           "(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? bn_weight, Tensor? bn_bias, Tensor conv_weight,"
           " bool training, float eps) -> (Tensor, Tensor, Tensor, Tensor)",
           _batch_norm_relu_conv1x1, _batch_norm_relu_conv1x1_backward, gradients_of=(0, 3, 4, 5)),
)}


_SAVED = object()  # stands for an input tensor in ctx.arguments (it is in ctx.saved_tensors)


def _overload(namespace: str, name: str):
    return getattr(getattr(torch.ops, namespace), name).default


def register_autograd(spec: OpSpec, namespace: str) -> None:
    """Autograd for namespace::<spec.name>: the backward operator namespace::<spec.backward> on the
    output gradient, the inputs and the saved outputs, computing only the gradients asked for;
    the backward operator's own backward raises (no double backward)."""
    backward_op = _overload(namespace, spec.backward)
    where = f"{namespace}::{spec.label}"

    def setup_context(ctx, inputs, output) -> None:
        outputs = output if isinstance(output, tuple) else (output,)
        saved = [outputs[i] for i in spec.saved_outputs]
        if saved:
            ctx.mark_non_differentiable(*saved)
        ctx.arguments = [_SAVED if isinstance(a, torch.Tensor) else a for a in inputs]  # None, bool, float as they are
        ctx.save_for_backward(*[a for a in inputs if isinstance(a, torch.Tensor)], *saved)

    def backward(ctx, grad, *_output_grads):
        tensors = iter(ctx.saved_tensors)
        inputs = [next(tensors) if a is _SAVED else a for a in ctx.arguments]
        gradients_of = spec.gradients_of if spec.gradients_of is not None else range(len(inputs))
        grads = [None] * len(inputs)
        if any(ctx.needs_input_grad[i] for i in gradients_of):
            for i, g in zip(gradients_of, backward_op(grad, *inputs, *tensors)):
                grads[i] = g if ctx.needs_input_grad[i] else None
        return tuple(grads)

    torch.library.register_autograd(f"{namespace}::{spec.name}", backward, setup_context=setup_context)

    def no_double_backward(ctx, *grads):
        raise NotImplementedError(f"{where}: a gradient of its gradient (double backward) is not supported")

    torch.library.register_autograd(f"{namespace}::{spec.backward}", no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


def register_compiled_library() -> None:
    """Fake kernels and autograd of the compiled library's rga_ops::* operators (csrc/)."""
    for spec in OPS.values():
        for name, fake in ((spec.name, spec.fake), (spec.backward, spec.backward_fake)):
            label = f"rga_ops::{spec.label}" + ("_backward" if name == spec.backward else "")
            torch.library.register_fake(f"rga_ops::{name}", (lambda fake, label: lambda *a: fake(label, *a))(fake, label))
        register_autograd(spec, "rga_ops")


def define(spec: OpSpec, namespace: str, forward: Callable, backward: Callable, *, use_triton_op: bool) -> None:
    """namespace::<spec.name> and namespace::<spec.backward> running `forward` and `backward`
    (a backend's launches, e.g. Triton's), with spec's schemas, fake kernels and autograd.

    With use_triton_op (on a GPU) they are torch.library.triton_op's, so that torch.compile sees
    the Triton kernels inside (the launch is its own fake kernel: it only allocates, with
    spec.fake, and wrap_triton launches nothing on fake tensors); else (in triton's interpreter,
    where wrap_triton hands back the bare kernel, which would dereference fake tensors) opaque
    torch.library.custom_op's with spec's fake kernels."""
    for name, schema, fn, fake in ((spec.name, spec.schema, forward, spec.fake),
                                   (spec.backward, spec.backward_schema, backward, spec.backward_fake)):
        qualname = f"{namespace}::{name}"
        if use_triton_op:
            torch.library.triton_op(qualname, fn, mutates_args=(), schema=schema)
        else:
            label = f"{namespace}::{spec.label}" + ("_backward" if name == spec.backward else "")
            op = torch.library.custom_op(qualname, fn, mutates_args=(), schema=schema)
            op.register_fake((lambda fake, label: lambda *a: fake(label, *a))(fake, label))
    register_autograd(spec, namespace)
