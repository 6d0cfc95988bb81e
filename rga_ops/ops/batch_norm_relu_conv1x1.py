"""batch_norm_relu_conv1x1(x [B, K, N], mean, var, bn_weight, bn_bias, conv_weight [H, K],
training, eps) -> [B, H, N].

`conv_weight @ relu(batch_norm(x))` per item: a BatchNorm + ReLU feeding a 1x1
conv, as RGA's relation branch feeds its attention head. Composed of separate ops,
BatchNorm keeps x, ReLU its output and the conv its input for backward: two
distinct [B, K, N] tensors. This op keeps only x and recomputes the activation in
backward, halving the largest activation memory of an RGA module; the CPU kernel
never writes the activation to memory at all (csrc/cpu/batch_norm_relu_conv1x1.cpp).

`mean` and `var` [K] are what x is normalised with: in training mode x's own
batch statistics (biased variance, e.g. from torch.batch_norm_update_stats, which
also updates the running statistics), and the gradient then includes the path
through them, exactly as BatchNorm's; in eval mode the running statistics. They
receive no gradient themselves. Needs the compiled extension (backends cpp, cuda)."""

from __future__ import annotations

import torch

from .._extension import STATUS as _EXTENSION
from ._autocast import autocast_operands

_OP = "rga_ops::batch_norm_relu_conv1x1"


def _check(op, x, mean, var, bn_weight, bn_bias, conv_weight) -> None:
    """The checks of csrc/checks.h (check_batch_norm_relu_conv_inputs), for the fake kernels."""
    torch._check_value(x.dim() == 3, lambda: f"{op}: x must have 3 dimensions [B, K, N], got shape {tuple(x.shape)}")
    k = x.shape[1]
    for name, t in (("mean", mean), ("var", var), ("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if t is not None:
            torch._check_value(t.dim() == 1 and t.shape[0] == k,
                               lambda: f"{op}: {name} must be [K] = [{k}], got shape {list(t.shape)}")
    torch._check_value(
        conv_weight.dim() == 2 and conv_weight.shape[1] == k,
        lambda: f"{op}: conv_weight must be [H, K] with K = {k}, got shape {list(conv_weight.shape)}",
    )
    torch._check_type(conv_weight.dtype == x.dtype,
                      lambda: f"{op}: conv_weight must have the dtype of x ({x.dtype}), got {conv_weight.dtype}")


def batch_norm_relu_conv1x1(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None, conv_weight: torch.Tensor, training: bool, eps: float,
) -> torch.Tensor:
    """conv_weight [H, K] @ relu(batch_norm(x)) for x [B, K, N] -> [B, H, N]; only x is kept for backward."""
    x, conv_weight = autocast_operands(x, conv_weight)
    return torch.ops.rga_ops.batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight, training, eps)


if _EXTENSION.loaded:

    @torch.library.register_fake(_OP)
    def _fake(x, mean, var, bn_weight, bn_bias, conv_weight, training, eps):
        _check(_OP, x, mean, var, bn_weight, bn_bias, conv_weight)
        return x.new_empty((x.shape[0], conv_weight.shape[0], x.shape[2]))

    @torch.library.register_fake(_OP + "_backward")
    def _backward_fake(grad, x, mean, var, bn_weight, bn_bias, conv_weight, training, eps):
        _check(_OP + "_backward", x, mean, var, bn_weight, bn_bias, conv_weight)
        k = x.shape[1]
        return (x.new_empty(x.shape), x.new_empty((k,), dtype=bn_weight.dtype if bn_weight is not None else x.dtype),
                x.new_empty((k,), dtype=bn_bias.dtype if bn_bias is not None else x.dtype),
                conv_weight.new_empty(conv_weight.shape))

    def _setup_context(ctx, inputs, output) -> None:
        x, mean, var, bn_weight, bn_bias, conv_weight, training, eps = inputs
        ctx.training, ctx.eps = training, eps
        ctx.has_weight, ctx.has_bias = bn_weight is not None, bn_bias is not None
        ctx.save_for_backward(x, mean, var, bn_weight, bn_bias, conv_weight)

    def _backward(ctx, grad: torch.Tensor):
        grad_x, grad_weight, grad_bias, grad_conv = torch.ops.rga_ops.batch_norm_relu_conv1x1_backward(
            grad, *ctx.saved_tensors, ctx.training, ctx.eps)
        return (grad_x, None, None, grad_weight if ctx.has_weight else None, grad_bias if ctx.has_bias else None,
                grad_conv, None, None)

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
