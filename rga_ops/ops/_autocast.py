"""torch.autocast at the ops' Python boundary.

Under autocast the tensors reaching an op are mixed: activations come out of convs
and matmuls in the autocast dtype while parameters stay float32, and the ops
require matching dtypes. The ops that are products (relation_project, the conv of
batch_norm_relu_conv1x1) follow autocast's policy for matmul: their operands are
cast to the autocast dtype (the kernels still accumulate in float32). Outside
autocast nothing is cast."""

from __future__ import annotations

import torch


def autocast_operands(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors cast to the autocast dtype of their device if autocast is enabled there;
    otherwise unchanged. As autocast itself does, float64 tensors are left alone."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)
