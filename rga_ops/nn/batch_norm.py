"""BatchNorm modules as the fast paths use them: several applied as one (docs/algebra.md), and one
feeding a 1x1 conv through the fused batch_norm_relu_conv1x1.

BatchNorm is per channel, so normalising the concatenation of the outputs of
several modules with their concatenated parameters and running statistics is the
same as normalising each output with its own module, in training and in eval
mode. The running statistics are written back to the modules they belong to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.batch_norm_relu_conv1x1 import batch_norm_relu_conv1x1

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _settings(bn: _BatchNorm) -> tuple:
    return (bn.eps, bn.momentum, bn.affine, bn.training, bn.running_mean is None)


def batch_norm_step(bn: _BatchNorm) -> tuple[bool, float]:
    """What BatchNorm's own forward decides before normalising: whether to use the
    batch statistics, and the running-average factor (counting the batch in
    num_batches_tracked)."""
    use_batch_stats = bn.training or bn.running_mean is None
    if bn.training and bn.running_mean is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return use_batch_stats, 1.0 / float(bn.num_batches_tracked)
    return use_batch_stats, 0.0 if bn.momentum is None else bn.momentum


def batch_norm_relu_conv(x: torch.Tensor, bn: _BatchNorm, conv_weight: torch.Tensor, backend: str) -> torch.Tensor:
    """conv_weight [H, K] @ relu(bn(x)) for x [B, K, N], with `bn`'s statistics and
    running-statistics update, by rga_ops.ops.batch_norm_relu_conv1x1 with `backend` (the
    compiled ones keep only x for backward)."""
    use_batch_stats, factor = batch_norm_step(bn)
    if use_batch_stats:
        if x.numel() // x.shape[1] < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        # Not torch.batch_norm_update_stats: its schema does not declare that it writes the running
        # statistics, so torch.compile drops it where its outputs go unused (the "torch" backend);
        # lerp_ on the buffers is a mutation it keeps.
        with torch.no_grad():
            stats_x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            var, mean = torch.var_mean(stats_x, dim=(0, 2), correction=0)
            if bn.running_mean is not None:
                count = x.numel() // x.shape[1]
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var.dtype), factor)
    else:
        mean, var = bn.running_mean, bn.running_var
    return batch_norm_relu_conv1x1(x, mean, var, bn.weight, bn.bias, conv_weight, use_batch_stats, bn.eps,
                                   backend=backend)


def grouped_batch_norm(x: torch.Tensor, norms: Sequence[_BatchNorm]) -> torch.Tensor:
    """Normalise x [M, sum of the modules' channels, *] (channels in dim 1, in the
    order of `norms`) exactly as applying each module to its own channels."""
    first = norms[0]
    sizes = [bn.num_features for bn in norms]
    groupable = all(_settings(bn) == _settings(first) for bn in norms[1:]) and (
        first.momentum is not None or len({int(bn.num_batches_tracked) for bn in norms}) == 1
    )
    if not groupable:
        return torch.cat(
            [
                F.batch_norm(part, bn.running_mean, bn.running_var, bn.weight, bn.bias, *batch_norm_step(bn), bn.eps)
                for part, bn in zip(x.split(sizes, 1), norms)
            ],
            1,
        )

    use_batch_stats, factor = [batch_norm_step(bn) for bn in norms][0]
    weight = torch.cat([bn.weight for bn in norms]) if first.affine else None
    bias = torch.cat([bn.bias for bn in norms]) if first.affine else None
    tracked = first.running_mean is not None
    running_mean = torch.cat([bn.running_mean for bn in norms]) if tracked else None
    running_var = torch.cat([bn.running_var for bn in norms]) if tracked else None
    out = F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, first.eps)
    if tracked and first.training:
        with torch.no_grad():
            for bn, mean, var in zip(norms, running_mean.split(sizes), running_var.split(sizes)):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
    return out
