"""The relation ops computed as the original RGA code does: G = theta^T phi is
materialised, stacked with its transpose, and (for the projection) convolved."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def relation_stack(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """theta, phi [B, C', N] -> J [B, 2N, N] with J[:, :N, p] = G[p, :], J[:, N:, p] = G[:, p]."""
    g = torch.matmul(theta.permute(0, 2, 1), phi)
    return torch.cat((g.permute(0, 2, 1), g), 1)


def relation_project(theta: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The 1x1 conv (weight [K, 2N]) of relation_stack(theta, phi): [B, K, N]."""
    return F.conv1d(relation_stack(theta, phi), weight.unsqueeze(-1))
