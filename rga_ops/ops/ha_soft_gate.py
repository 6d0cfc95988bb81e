"""HA's soft-attention gate, `x * sigmoid(relu(BN(conv1x1(s * c))))`, in one pass over x.

SoftAttn multiplies a spatial map s [B, 1, H, W] by a channel vector c [B, C]
and feeds the rank-1 product through a C -> C 1x1 conv (with bias), BatchNorm
and ReLU. Because y[b, :, p] = s[b, p] c[b], the conv is s[b, p] v[b] + bias with
v[b] = W c[b] (a GEMV per item), and the BatchNorm statistics over (b, p) follow
in closed form from per-item statistics of s (docs/algebra.md). All of it folds
into alpha [B, C] and beta [C]:

    out[b, o, p] = x[b, o, p] * sigmoid(relu(alpha[b, o] * s[b, p] + beta[o]))

which is the registered operator `rga_ops::ha_soft_gate` (one read of x, one
write of out). The statistics use centred per-item moments of s, so the variance
has no cancellation; they are small differentiable tensor expressions, which gives
the exact gradients of BatchNorm in training mode."""

from __future__ import annotations

import torch

from .. import reference
from .._checks import check_soft_gate_arguments
from ..backends import check_backend_name, resolve_backend

_OP = "rga_ops::ha_soft_gate"


def soft_gate_coefficients(
    s: torch.Tensor, c: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor,
    bn_weight: torch.Tensor | None, bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
    training: bool, momentum: float, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [B, C], beta [C]) such that BN(conv1x1(s * c)) = alpha[b, o] s[b, p] + beta[o],
    in float32 for reduced-precision inputs. In training mode the running statistics
    are updated in place as F.batch_norm does (unbiased running variance)."""
    stat_dtype = torch.float32 if s.dtype in (torch.float16, torch.bfloat16) else s.dtype
    b = s.shape[0]
    v = c.to(stat_dtype) @ conv_weight.to(stat_dtype).t()  # v[b] = W c[b], [B, C]
    bias = conv_bias.to(stat_dtype)
    if training:
        positions = s.shape[2] * s.shape[3]
        count = b * positions
        if count < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(s.shape)}")
        # Centred per-item moments of s: sum_p (v s - m)^2 = v^2 P var_b + P (v mean_b - m)^2, no cancellation.
        s_var, s_mean = torch.var_mean(s.to(stat_dtype).reshape(b, positions), dim=1, correction=0)
        shift = (v * s_mean[:, None]).mean(0)  # mean of the conv output minus its bias, [C]
        var = (v.square() * s_var[:, None] + (v * s_mean[:, None] - shift).square()).mean(0)
        mean = bias + shift
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)
    else:
        mean, var = running_mean.to(stat_dtype), running_var.to(stat_dtype)
    scale = torch.rsqrt(var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(stat_dtype)
    beta = (bias - mean) * scale
    if bn_bias is not None:
        beta = beta + bn_bias.to(stat_dtype)
    return v * scale, beta


def soft_gate_map(s: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The attention map sigmoid(relu(alpha[b, c] s[b, p] + beta[c])), [B, C, H, W], in alpha's
    dtype (float32 for reduced-precision s)."""
    return torch.sigmoid(torch.relu(alpha[:, :, None, None] * s + beta[None, :, None, None]))


def _gate_torch(x, s, alpha, beta):
    """The gate in plain PyTorch ops (autograd by PyTorch), in alpha's dtype (float32 for
    reduced-precision x, as the kernels compute it) and rounded once at the end."""
    gate = soft_gate_map(s, alpha, beta)
    return (x.to(gate.dtype) * gate).to(x.dtype)


def _gate_compiled(x, s, alpha, beta):
    return torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta)


def _gate_triton(x, s, alpha, beta):
    return torch.ops.rga_ops_triton.ha_soft_gate(x, s, alpha, beta)


def _through_the_closed_form(gate):
    """The op from x, s, c and the parameters: alpha and beta in closed form, then `gate`."""
    def run(x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps):
        alpha, beta = soft_gate_coefficients(s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                                             running_var, training, momentum, eps)
        return gate(x, s, alpha, beta)
    return run


_IMPLEMENTATIONS = {
    "reference": reference.ha_soft_gate,
    "torch": _through_the_closed_form(_gate_torch),
    "cpp": _through_the_closed_form(_gate_compiled),
    "cuda": _through_the_closed_form(_gate_compiled),
    "triton": _through_the_closed_form(_gate_triton),
}


def ha_soft_gate(
    x: torch.Tensor, s: torch.Tensor, c: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor,
    bn_weight: torch.Tensor | None, bn_bias: torch.Tensor | None,
    running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
    training: bool, momentum: float = 0.1, eps: float = 1e-5, *, backend: str = "auto",
) -> torch.Tensor:
    """x * sigmoid(relu(batch_norm(conv1x1(s * c)))) without forming s * c or running the conv per pixel.

    x [B, C, H, W], s [B, 1, H, W], c [B, C]; conv_weight [C, C] and conv_bias [C] of the
    1x1 conv; the BatchNorm arguments as for torch.nn.functional.batch_norm (`training`
    normalises with the batch statistics and updates the running ones in place).
    Differentiable in x, s, c and the four parameters."""
    check_backend_name(backend)
    check_soft_gate_arguments(_OP, x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                              training)
    name = resolve_backend(backend, x.device, "ha_soft_gate", x.shape[2] * x.shape[3], _IMPLEMENTATIONS)
    return _IMPLEMENTATIONS[name](x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                                  training, momentum, eps)
