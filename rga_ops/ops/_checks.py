"""Input checks of the relation ops, shared by the Python wrappers and the fake
kernels; the messages match those of the C++ kernels (csrc/checks.h)."""

from __future__ import annotations

import torch


def _require(condition: bool, message: str, error: type[Exception] = ValueError) -> None:
    # torch._check_* accept symbolic conditions, so the same checks run in the fake kernels.
    check = torch._check_type if error is TypeError else torch._check_value
    check(condition, lambda: message)


def check_embeddings(op: str, theta: torch.Tensor, phi: torch.Tensor) -> None:
    """theta and phi: the two embeddings [B, C', N] of one relation branch."""
    for name, t in (("theta", theta), ("phi", phi)):
        _require(isinstance(t, torch.Tensor), f"{op}: {name} must be a tensor, got {type(t).__name__}", TypeError)
        _require(t.dim() == 3, f"{op}: {name} must have 3 dimensions [B, C', N], got shape {tuple(t.shape)}")
    _require(theta.is_floating_point(), f"{op}: theta must be a floating-point tensor, got dtype {theta.dtype}", TypeError)
    _require(phi.dtype == theta.dtype, f"{op}: phi must have the dtype of theta ({theta.dtype}), got {phi.dtype}", TypeError)
    _require(phi.device == theta.device, f"{op}: phi must be on the device of theta ({theta.device}), got {phi.device}")
    _require(
        phi.shape == theta.shape,
        f"{op}: phi must have the shape of theta [B, C', N] = {tuple(theta.shape)}, got {tuple(phi.shape)}",
    )
    _require(
        theta.shape[1] > 0 and theta.shape[2] > 0,
        f"{op}: theta must have C' > 0 and N > 0, got shape {tuple(theta.shape)}",
    )


def check_projection_weight(op: str, theta: torch.Tensor, weight: torch.Tensor) -> None:
    """weight: the 1x1 conv of the stacked relation, [K, 2N]."""
    _require(isinstance(weight, torch.Tensor), f"{op}: weight must be a tensor, got {type(weight).__name__}", TypeError)
    _require(weight.dim() == 2, f"{op}: weight must have 2 dimensions [K, 2N], got shape {tuple(weight.shape)}")
    _require(
        weight.dtype == theta.dtype, f"{op}: weight must have the dtype of theta ({theta.dtype}), got {weight.dtype}", TypeError
    )
    _require(
        weight.device == theta.device, f"{op}: weight must be on the device of theta ({theta.device}), got {weight.device}"
    )
    n = theta.shape[2]
    _require(
        weight.shape[1] == 2 * n,
        f"{op}: weight must be [K, 2N] = [K, {2 * n}] for N = {n}, got shape {tuple(weight.shape)}",
    )
    _require(weight.shape[0] > 0, f"{op}: weight must have K > 0 rows, got shape {tuple(weight.shape)}")


def check_grad(op: str, grad: torch.Tensor, like: torch.Tensor, shape: tuple[int, ...]) -> None:
    _require(tuple(grad.shape) == tuple(shape), f"{op}: grad must have shape {tuple(shape)}, got {tuple(grad.shape)}")
    _require(grad.dtype == like.dtype, f"{op}: grad must have dtype {like.dtype}, got {grad.dtype}", TypeError)
    _require(grad.device == like.device, f"{op}: grad must be on device {like.device}, got {grad.device}")
