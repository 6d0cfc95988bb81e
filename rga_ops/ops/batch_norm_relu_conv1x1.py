"""batch_norm_relu_conv1x1(x [B, K, N], mean, var, bn_weight, bn_bias, conv_weight [H, K],
training, eps) -> [B, H, N].

`conv_weight @ relu(batch_norm(x))` per item: a BatchNorm + ReLU feeding a 1x1 conv, as RGA's
relation branch feeds its attention head. Composed of separate ops, BatchNorm keeps x, ReLU its
output and the conv its input for backward: two distinct [B, K, N] tensors. The compiled
kernels (cpp, cuda) keep only x and recompute the activation in backward, halving the largest
activation memory of an RGA module; the CPU kernel never writes the activation to memory at
all (csrc/cpu/batch_norm_relu_conv1x1.cpp). The "torch" backend is the plain composition
(exportable); the triton backend has no kernel for this op.

`mean` and `var` [K] are what x is normalised with: in training mode x's own batch statistics
(biased variance, e.g. from torch.batch_norm_update_stats, which also updates the running
statistics), and the gradient then includes the path through them, exactly as BatchNorm's; in
eval mode the running statistics. They receive no gradient themselves."""

from __future__ import annotations

import torch

from .. import reference
from .._checks import check_batch_norm_relu_conv_inputs
from ..backends import check_backend_name, resolve_backend
from ._autocast import autocast_operands

_OP = "rga_ops::batch_norm_relu_conv1x1"


def _batch_norm_relu_conv1x1_compiled(x, mean, var, bn_weight, bn_bias, conv_weight, training, eps):
    return torch.ops.rga_ops.batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight, training, eps)


# The backends with a kernel of their own, which keeps only x for backward.
KERNEL_BACKENDS = ("cpp", "cuda")
_IMPLEMENTATIONS = {
    "reference": reference.batch_norm_relu_conv1x1,
    "torch": reference.batch_norm_relu_conv1x1,  # the plain composition is already all PyTorch has
    **{name: _batch_norm_relu_conv1x1_compiled for name in KERNEL_BACKENDS},
}


def batch_norm_relu_conv1x1(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None, conv_weight: torch.Tensor, training: bool, eps: float, *, backend: str = "auto",
) -> torch.Tensor:
    """conv_weight [H, K] @ relu(batch_norm(x)) for x [B, K, N] -> [B, H, N]; differentiable in x,
    bn_weight, bn_bias and conv_weight (the compiled backends keep only x for backward)."""
    check_backend_name(backend)
    x, conv_weight = autocast_operands(x, conv_weight)
    check_batch_norm_relu_conv_inputs(_OP, x, mean, var, bn_weight, bn_bias, conv_weight)
    name = resolve_backend(backend, x.device, "batch_norm_relu_conv1x1", x.shape[1] * x.shape[2], _IMPLEMENTATIONS)
    return _IMPLEMENTATIONS[name](x, mean, var, bn_weight, bn_bias, conv_weight, training, eps)
