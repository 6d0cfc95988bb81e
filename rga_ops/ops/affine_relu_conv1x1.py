"""affine_relu_conv1x1(x [B, K, N], scale [K], shift [K], conv_weight [H, K]) -> [B, H, N].

`conv_weight @ relu(x * scale + shift)` per item: a BatchNorm (written as its
per-channel scale and shift) + ReLU feeding a 1x1 conv, as RGA's relation branch
feeds its attention head. Composed of separate ops, BatchNorm keeps x, ReLU its
output and the conv its input for backward: two distinct [B, K, N] tensors. This
op keeps only x and recomputes the activation in backward (one elementwise pass),
halving the largest activation memory of an RGA module."""

from __future__ import annotations

import torch

_OP = "rga_ops::affine_relu_conv1x1"


def _check(x, scale, shift, conv_weight) -> None:
    torch._check_value(x.dim() == 3, lambda: f"{_OP}: x must be [B, K, N], got shape {tuple(x.shape)}")
    k = x.shape[1]
    for name, t in (("scale", scale), ("shift", shift)):
        torch._check_value(t.shape == (k,), lambda: f"{_OP}: {name} must be [K] = [{k}], got shape {tuple(t.shape)}")
    torch._check_value(
        conv_weight.dim() == 2 and conv_weight.shape[1] == k,
        lambda: f"{_OP}: conv_weight must be [H, K] with K = {k}, got shape {tuple(conv_weight.shape)}",
    )
    for name, t in (("scale", scale), ("shift", shift), ("conv_weight", conv_weight)):
        torch._check_type(t.dtype == x.dtype, lambda: f"{_OP}: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")


@torch.library.custom_op(_OP, mutates_args=())
def affine_relu_conv1x1(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, conv_weight: torch.Tensor
) -> torch.Tensor:
    """conv_weight [H, K] @ relu(x * scale + shift) for x [B, K, N] -> [B, H, N]
    (differentiable in all four inputs; only x is kept for backward)."""
    _check(x, scale, shift, conv_weight)
    y = torch.addcmul(shift[:, None], x, scale[:, None]).relu_()
    return torch.matmul(conv_weight, y)


@affine_relu_conv1x1.register_fake
def _(x, scale, shift, conv_weight):
    _check(x, scale, shift, conv_weight)
    return x.new_empty((x.shape[0], conv_weight.shape[0], x.shape[2]))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: torch.Tensor):
    x, scale, shift, conv_weight = ctx.saved_tensors
    y = torch.addcmul(shift[:, None], x, scale[:, None]).relu_()
    grad_conv_weight = torch.bmm(grad_out, y.transpose(1, 2)).sum(0)
    grad_z = torch.ops.aten.threshold_backward(torch.matmul(conv_weight.t(), grad_out), y, 0)
    grad_shift = grad_z.sum((0, 2))
    grad_scale = (grad_z * x).sum((0, 2))
    return grad_z.mul_(scale[:, None]), grad_scale, grad_shift, grad_conv_weight


affine_relu_conv1x1.register_autograd(_backward, setup_context=_setup_context)
