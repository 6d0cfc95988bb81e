"""Inputs and variants of each op at one shape, shared by benchmarks.run and the pytest-benchmark
files: an OpCase holds the arguments, the functions to time (the reference first, then ours per
backend), an output gradient, and the forward's useful work (FLOP or bytes) for its rate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import rga_ops
from rga_ops import reference
from rga_ops.ops.batch_norm_relu_conv1x1 import batch_norm_relu_conv1x1

from .device import timed_backends


@dataclass
class OpCase:
    args: tuple[torch.Tensor, ...]
    functions: dict[str, Callable[..., torch.Tensor]]  # "reference" first, then our backends
    grad: torch.Tensor
    shape: str
    forward_work: Callable[[str], float]  # variant -> FLOP or bytes of its forward
    unit: str  # "FLOP" or "B"
    # (forward + backward work) / forward work: 3 for GEMMs (two GEMMs of the forward's size in
    # backward), 2 for relation_stack (J written, its gradient read), 2.5 for the HA gate (x read,
    # out written; grad read, x read, grad_x written).
    step_factor: float


def relation_project_flop(variant: str, b: int, c: int, n: int, k: int) -> float:
    """Forward FLOP of the algorithm the variant runs: the reference forms G (2 N^2 C') and
    convolves the stacked [2N, N] relation (4 K N^2); the re-associated form computes the
    coefficients (4 K C' N) and one GEMM with inner size 2C' (4 K C' N). Per batch."""
    per_item = 2 * n * n * c + 4 * k * n * n if "reference" in variant else 8 * k * c * n
    return b * per_item


def _ours(device, call: Callable[[str], Callable[..., torch.Tensor]]) -> dict[str, Callable[..., torch.Tensor]]:
    return {b: call(b) for b in timed_backends(device)}


def relation_case(op: str, batch: int, ci: int, n: int, k: int, device) -> OpCase:
    """relation_project (theta, phi [B, C', N], weight [K, 2N]) or relation_stack (theta, phi)."""
    make = lambda *s: torch.randn(*s, device=device, requires_grad=True)  # noqa: E731
    theta, phi = make(batch, ci, n), make(batch, ci, n)
    functions = {"reference": getattr(reference, op),
                 **_ours(device, lambda b: lambda *a: getattr(rga_ops, op)(*a, backend=b))}
    if op == "relation_project":
        args = (theta, phi, make(k, 2 * n))
        return OpCase(args, functions, torch.randn(batch, k, n, device=device),
                      f"B={batch}, C'={ci}, N={n}, K={k}",
                      lambda variant: relation_project_flop(variant, batch, ci, n, k), "FLOP", 3.0)
    grad = torch.randn(batch, 2 * n, n, device=device)
    # The floor: J written once.
    return OpCase((theta, phi), functions, grad, f"B={batch}, C'={ci}, N={n}",
                  lambda variant: grad.numel() * grad.element_size(), "B", 2.0)


def plain_batch_norm_relu_conv1x1(x, bn_weight, bn_bias, conv_weight):
    """What the fused op replaces (the op's reference): BatchNorm with batch statistics, ReLU, the 1x1
    conv as a batched GEMM."""
    return reference.batch_norm_relu_conv1x1(x, None, None, bn_weight, bn_bias, conv_weight, True, 1e-5)


def head_case(batch: int, k: int, m: int, hidden: int, device) -> OpCase | None:
    """batch_norm_relu_conv1x1 in training mode on x [B, K, M], conv_weight [H, K]; None where
    our kernel for the device is not built (the op has no plain-PyTorch backend of its own)."""
    ours = "cuda" if torch.device(device).type == "cuda" else "cpp"
    if ours not in timed_backends(torch.device(device)):
        return None
    x = torch.randn(batch, k, m, device=device, requires_grad=True)
    bn_weight = (torch.rand(k, device=device) + 0.5).requires_grad_()
    bn_bias = (torch.randn(k, device=device) * 0.1).requires_grad_()
    conv_weight = (torch.randn(hidden, k, device=device) / k**0.5).requires_grad_()
    var, mean = torch.var_mean(x.detach(), dim=(0, 2), correction=0)

    def fused(x, bn_weight, bn_bias, conv_weight):
        return batch_norm_relu_conv1x1(x, mean, var, bn_weight, bn_bias, conv_weight, True, 1e-5)

    return OpCase((x, bn_weight, bn_bias, conv_weight), {"reference": plain_batch_norm_relu_conv1x1, ours: fused},
                  torch.randn(batch, hidden, m, device=device), f"B={batch}, K={k}, M={m}, H={hidden}",
                  lambda variant: 2 * batch * hidden * k * m, "FLOP", 3.0)


def ha_gate_case(batch: int, c: int, h: int, w: int, device) -> OpCase:
    """ha_soft_gate (training mode) from x [B, C, H, W], s [B, 1, H, W], c [B, C] and the conv
    and BatchNorm parameters; the rate counts x read + out written."""
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    x, s, ch = make(batch, c, h, w), make(batch, 1, h, w).abs(), make(batch, c)
    params = [make(c, c) * 0.1, make(c) * 0.1, make(c).abs() + 0.5, make(c) * 0.1]
    args = tuple(t.requires_grad_() for t in (x, s, ch, *params))
    stats = [torch.zeros(c, device=device), torch.ones(c, device=device)]

    def gate(backend):
        return lambda *a: rga_ops.ha_soft_gate(*a, *stats, True, 0.1, 1e-5, backend=backend)

    return OpCase(args, {"reference": gate("reference"), **_ours(device, gate)}, make(batch, c, h, w),
                  f"B={batch}, C={c}, HxW={h}x{w}", lambda variant: 2 * x.numel() * x.element_size(), "B", 2.5)
