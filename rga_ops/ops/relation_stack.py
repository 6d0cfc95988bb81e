"""relation_stack(theta [B, C', N], phi [B, C', N]) -> J [B, 2N, N].

J[:, :N, p] = G[p, :] and J[:, N:, p] = G[:, p] with G = theta^T phi: the stacked
relation of RGA, each tile of G computed once and stored to both halves."""

from __future__ import annotations

import torch

from .. import reference
from .._checks import check_embeddings
from ..backends import check_backend_name, resolve_backend

_OP = "rga_ops::relation_stack"


def _relation_stack_torch(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    g = torch.bmm(theta.transpose(1, 2), phi)
    return torch.cat((g.transpose(1, 2), g), 1)


def _relation_stack_compiled(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    return torch.ops.rga_ops.relation_stack(theta, phi)


def _relation_stack_triton(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    return torch.ops.rga_ops_triton.relation_stack(theta, phi)


_IMPLEMENTATIONS = {
    "reference": reference.relation_stack,
    "torch": _relation_stack_torch,
    "cpp": _relation_stack_compiled,
    "cuda": _relation_stack_compiled,
    "triton": _relation_stack_triton,
}


def relation_stack(theta: torch.Tensor, phi: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Stacked relation J [B, 2N, N] of the embeddings theta, phi [B, C', N] (differentiable)."""
    check_backend_name(backend)
    check_embeddings(_OP, theta, phi)
    name = resolve_backend(backend, theta.device, "relation_stack", theta.shape[2], _IMPLEMENTATIONS)
    return _IMPLEMENTATIONS[name](theta, phi)
