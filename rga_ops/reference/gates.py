"""The functional references of the ha_soft_gate and batch_norm_relu_conv1x1 operators,
computed as the original modules compute them (every intermediate materialised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ha_soft_gate(x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, training,
                 momentum=0.1, eps=1e-5):
    """x * SoftAttn(x) as torchreid computes it from the spatial map s [B, 1, H, W] and the channel
    vector c [B, C]: the rank-1 tensor s * c, the C x C conv at every pixel, BatchNorm (updating
    the running statistics in training mode), ReLU, sigmoid."""
    y = s * c[:, :, None, None]
    y = F.conv2d(y, conv_weight[:, :, None, None], conv_bias)
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return x * torch.sigmoid(F.relu(y))


def soft_gate(x: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The gate kernels' function: x * sigmoid(relu(alpha[b, c] * s[b, p] + beta[c])) for
    x [B, C, H, W], s [B, 1, H, W], alpha [B, C], beta [C]."""
    return x * torch.sigmoid(torch.relu(alpha[:, :, None, None] * s + beta[None, :, None, None]))


def batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight, training: bool, eps: float):
    """conv_weight [H, K] @ relu(batch_norm(x)) for x [B, K, N] as RGA's relation branch feeds its
    attention head: BatchNorm (x's batch statistics in training mode, with the gradient through
    them; mean and var otherwise), ReLU, and the 1x1 conv as a batched GEMM."""
    if training:
        y = F.batch_norm(x, None, None, bn_weight, bn_bias, True, 0.0, eps)
    else:
        y = F.batch_norm(x, mean, var, bn_weight, bn_bias, False, 0.0, eps)
    return torch.matmul(conv_weight, F.relu(y))
