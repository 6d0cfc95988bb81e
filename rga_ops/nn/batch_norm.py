"""Several BatchNorm modules applied as one: spec/MATH.md §2.

BatchNorm is per channel, so normalising the concatenation of the outputs of
several modules with their concatenated parameters and running statistics is the
same as normalising each output with its own module, in training and in eval
mode. The running statistics are written back to the modules they belong to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _settings(bn: _BatchNorm) -> tuple:
    return (bn.eps, bn.momentum, bn.affine, bn.training, bn.running_mean is None)


def _uses_batch_stats(bn: _BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


def _step(bn: _BatchNorm) -> float:
    """Counts the batch in num_batches_tracked and returns the running-average factor,
    as BatchNorm's own forward does."""
    if bn.training and bn.running_mean is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else bn.momentum


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
                F.batch_norm(part, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                             _uses_batch_stats(bn), _step(bn), bn.eps)
                for part, bn in zip(x.split(sizes, 1), norms)
            ],
            1,
        )

    factor = [_step(bn) for bn in norms][0]
    weight = torch.cat([bn.weight for bn in norms]) if first.affine else None
    bias = torch.cat([bn.bias for bn in norms]) if first.affine else None
    tracked = first.running_mean is not None
    running_mean = torch.cat([bn.running_mean for bn in norms]) if tracked else None
    running_var = torch.cat([bn.running_var for bn in norms]) if tracked else None
    out = F.batch_norm(x, running_mean, running_var, weight, bias, _uses_batch_stats(first), factor, first.eps)
    if tracked and first.training:
        with torch.no_grad():
            for bn, mean, var in zip(norms, running_mean.split(sizes), running_var.split(sizes)):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
    return out
