"""batch_norm_relu_conv1x1(x [B, K, N], mean, var, bn_weight, bn_bias, conv_weight [H, K],
training, eps) -> [B, H, N].

`conv_weight @ relu(batch_norm(x))` per item: a BatchNorm + ReLU feeding a 1x1
conv, as RGA's relation branch feeds its attention head. Composed of separate ops,
BatchNorm keeps x, ReLU its output and the conv its input for backward: two
distinct [B, K, N] tensors. This op keeps only x and recomputes the activation in
backward (one elementwise pass), halving the largest activation memory of an RGA
module.

`mean` and `var` [K] are what x is normalised with: in training mode x's own
batch statistics (biased variance, e.g. from torch.batch_norm_update_stats, which
also updates the running statistics), and the gradient then includes the path
through them, exactly as BatchNorm's; in eval mode the running statistics. They
receive no gradient themselves."""

from __future__ import annotations

import torch

_OP = "rga_ops::batch_norm_relu_conv1x1"


def _check(x, mean, var, bn_weight, bn_bias, conv_weight) -> None:
    torch._check_value(x.dim() == 3, lambda: f"{_OP}: x must be [B, K, N], got shape {tuple(x.shape)}")
    k = x.shape[1]
    for name, t in (("mean", mean), ("var", var), ("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if t is not None:
            torch._check_value(t.shape == (k,), lambda: f"{_OP}: {name} must be [K] = [{k}], got shape {tuple(t.shape)}")
    torch._check_value(
        conv_weight.dim() == 2 and conv_weight.shape[1] == k,
        lambda: f"{_OP}: conv_weight must be [H, K] with K = {k}, got shape {tuple(conv_weight.shape)}",
    )
    torch._check_type(conv_weight.dtype == x.dtype,
                      lambda: f"{_OP}: conv_weight must have the dtype of x ({x.dtype}), got {conv_weight.dtype}")


def _left_matmul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w [H, K] @ x[b] for x [B, K, N]: a batched GEMM with a broadcast w (torch.matmul would
    fold the batch into a transposed copy of x)."""
    return torch.bmm(w.expand(x.shape[0], *w.shape), x)


def _activation(x, mean, var, bn_weight, bn_bias, eps):
    """relu(batch_norm(x)) with the given statistics, in x's dtype."""
    scale = torch.rsqrt(var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    shift = -mean * scale
    if bn_bias is not None:
        shift = shift + bn_bias
    return torch.addcmul(shift[:, None].to(x.dtype), x, scale[:, None].to(x.dtype)).relu_()


@torch.library.custom_op(_OP, mutates_args=())
def batch_norm_relu_conv1x1(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None, conv_weight: torch.Tensor, training: bool, eps: float,
) -> torch.Tensor:
    """conv_weight [H, K] @ relu(batch_norm(x)) for x [B, K, N] -> [B, H, N]; only x is kept for backward."""
    _check(x, mean, var, bn_weight, bn_bias, conv_weight)
    return _left_matmul(conv_weight, _activation(x, mean, var, bn_weight, bn_bias, eps))


@batch_norm_relu_conv1x1.register_fake
def _(x, mean, var, bn_weight, bn_bias, conv_weight, training, eps):
    _check(x, mean, var, bn_weight, bn_bias, conv_weight)
    return x.new_empty((x.shape[0], conv_weight.shape[0], x.shape[2]))


def _setup_context(ctx, inputs, output) -> None:
    x, mean, var, bn_weight, bn_bias, conv_weight, training, eps = inputs
    ctx.training, ctx.eps = training, eps
    ctx.save_for_backward(x, mean, var, bn_weight, bn_bias, conv_weight)


def _backward(ctx, grad_out: torch.Tensor):
    x, mean, var, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
    y = _activation(x, mean, var, bn_weight, bn_bias, ctx.eps)
    grad_conv_weight = torch.bmm(grad_out, y.transpose(1, 2)).sum(0)
    grad_z = torch.ops.aten.threshold_backward(_left_matmul(conv_weight.t(), grad_out), y, 0)
    mask = [ctx.needs_input_grad[0], bn_weight is not None and ctx.needs_input_grad[3],
            bn_bias is not None and ctx.needs_input_grad[4]]
    if ctx.training:  # batch statistics: BatchNorm's training backward, through mean and var
        grad_x, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_z, x, bn_weight, None, None, mean, torch.rsqrt(var + ctx.eps), True, ctx.eps, mask)
    else:
        grad_x, grad_bn_weight, grad_bn_bias = torch.ops.aten.native_batch_norm_backward(
            grad_z, x, bn_weight, mean, var, None, None, False, ctx.eps, mask)
    return grad_x, None, None, grad_bn_weight, grad_bn_bias, grad_conv_weight, None, None


batch_norm_relu_conv1x1.register_autograd(_backward, setup_context=_setup_context)
