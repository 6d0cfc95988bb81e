"""relation_stack(theta [B, C', N], phi [B, C', N]) -> J [B, 2N, N].

J[:, :N, p] = G[p, :] and J[:, N:, p] = G[:, p] with G = theta^T phi: the stacked
relation of RGA, each tile of G computed once and stored to both halves."""

from __future__ import annotations

import torch

from .. import reference
from .._extension import STATUS as _EXTENSION
from ..backends import check_backend_name, resolve_backend
from ._checks import check_embeddings, check_grad

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
    return _IMPLEMENTATIONS[resolve_backend(backend, theta.device, "relation_stack", theta.shape[2])](theta, phi)


if _EXTENSION.loaded:

    @torch.library.register_fake(_OP)
    def _relation_stack_fake(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        check_embeddings(_OP, theta, phi)
        b, _, n = theta.shape
        return theta.new_empty((b, 2 * n, n))

    @torch.library.register_fake(_OP + "_backward")
    def _relation_stack_backward_fake(grad: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor):
        check_embeddings(_OP + "_backward", theta, phi)
        b, _, n = theta.shape
        check_grad(_OP + "_backward", grad, theta, (b, 2 * n, n))
        return theta.new_empty(theta.shape), phi.new_empty(phi.shape)

    def _setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad: torch.Tensor):
        theta, phi = ctx.saved_tensors
        return torch.ops.rga_ops.relation_stack_backward(grad, theta, phi)

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
