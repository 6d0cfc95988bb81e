"""relation_project(theta [B, C', N], phi [B, C', N], weight [K, 2N]) -> [B, K, N].

The 1x1 conv with `weight` of relation_stack(theta, phi), computed by a re-association
that forms no N x N tensor (docs/algebra.md):
    out_b = A_b theta_b + B_b phi_b,  A_b = W_in phi_b^T,  B_b = W_out theta_b^T,
with W = [W_in | W_out]."""

from __future__ import annotations

import torch

from .. import reference
from .._checks import check_embeddings, check_projection_weight
from ..backends import check_backend_name, resolve_backend
from ._autocast import autocast_operands

_OP = "rga_ops::relation_project"


def _relation_project_torch(theta: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The re-associated algebra in plain PyTorch ops (autograd by PyTorch; exportable)."""
    dtype = theta.dtype
    if dtype in (torch.float16, torch.bfloat16):  # float32 accumulation and intermediates
        theta, phi, weight = theta.float(), phi.float(), weight.float()
    n = theta.shape[2]
    a_t = torch.matmul(phi, weight[:, :n].t())  # A_b^T, [B, C', K]
    b_t = torch.matmul(theta, weight[:, n:].t())  # B_b^T, [B, C', K]
    out = torch.bmm(torch.cat((a_t, b_t), 1).transpose(1, 2), torch.cat((theta, phi), 1))
    return out.to(dtype)


def _relation_project_compiled(theta: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.rga_ops.relation_project(theta, phi, weight)


def _relation_project_triton(theta: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.rga_ops_triton._relation_project(theta, phi, weight)[0]


_IMPLEMENTATIONS = {
    "reference": reference.relation_project,
    "torch": _relation_project_torch,
    "cpp": _relation_project_compiled,
    "cuda": _relation_project_compiled,
    "triton": _relation_project_triton,
}


def relation_project(
    theta: torch.Tensor, phi: torch.Tensor, weight: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """1x1 conv [B, K, N] of the stacked relation of theta, phi [B, C', N] with weight [K, 2N]
    (a Conv2d(2N, K, 1) weight viewed [K, 2N]); differentiable in all three inputs."""
    check_backend_name(backend)
    check_embeddings(_OP, theta, phi)
    theta, phi, weight = autocast_operands(theta, phi, weight)
    check_projection_weight(_OP, theta, weight)
    name = resolve_backend(backend, theta.device, "relation_project", theta.shape[2], _IMPLEMENTATIONS)
    return _IMPLEMENTATIONS[name](theta, phi, weight)
