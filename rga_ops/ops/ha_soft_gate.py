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
    alpha, beta, _ = soft_gate_coefficients_and_state(s, c, conv_weight, conv_bias, bn_weight, bn_bias,
                                                      running_mean, running_var, training, momentum, eps)
    return alpha, beta


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def soft_gate_coefficients_and_state(s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                                     training, momentum, eps):
    """soft_gate_coefficients, and the state soft_gate_coefficients_backward takes besides the
    inputs (differentiable by autograd too, for the callers of soft_gate_coefficients)."""
    stat_dtype = torch.float32 if s.dtype in (torch.float16, torch.bfloat16) else s.dtype
    b = s.shape[0]
    v = _as(c, stat_dtype) @ _as(conv_weight, stat_dtype).t()  # v[b] = W c[b], [B, C]
    bias = _as(conv_bias, stat_dtype)
    s_mean = s_var = centred = v_square = None
    if training:
        positions = s.shape[2] * s.shape[3]
        count = b * positions
        if count < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(s.shape)}")
        # Centred per-item moments of s: sum_p (v s - m)^2 = v^2 P var_b + P (v mean_b - m)^2, no cancellation.
        s_var, s_mean = torch.var_mean(_as(s, stat_dtype).reshape(b, positions), dim=1, keepdim=True, correction=0)
        v_mean = v * s_mean
        shift = v_mean.mean(0)  # mean of the conv output minus its bias, [C]
        centred = v_mean - shift
        v_square = v.square()
        var = torch.addcmul(centred.square(), v_square, s_var).mean(0)
        mean = bias + shift
        if running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(_as(mean, running_mean.dtype), momentum)
                running_var.lerp_(_as(var * (count / (count - 1)), running_var.dtype), momentum)
    else:
        mean, var = _as(running_mean, stat_dtype), _as(running_var, stat_dtype)
    offset = bias - mean  # -shift in training mode: the conv bias cancels
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std * _as(bn_weight, stat_dtype) if bn_weight is not None else inv_std
    beta = offset * scale if bn_bias is None else torch.addcmul(_as(bn_bias, stat_dtype), offset, scale)
    return v * scale, beta, (training, v, s_mean, s_var, centred, v_square, offset, inv_std, scale)


def soft_gate_coefficients_backward(
    state: tuple, s: torch.Tensor, c: torch.Tensor, conv_weight: torch.Tensor, bn_weight: torch.Tensor | None,
    grad_alpha: torch.Tensor, grad_beta: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """The gradients of soft_gate_coefficients in closed form from the state that
    soft_gate_coefficients_and_state returned: those of (s, c, conv_weight, conv_bias, bn_weight,
    bn_bias), in the stat dtype but s's; s's is None in eval mode (the statistics are the running
    ones), bn_weight's where it is None. The gradient through the batch mean of `centred`,
    zero analytically, is left out."""
    training, v, s_mean, s_var, centred, v_square, offset, inv_std, scale = state
    b = v.shape[0]
    grad_v = grad_alpha * scale
    grad_scale = torch.addcmul((grad_alpha * v).sum(0), grad_beta, offset)
    grad_bn_weight = grad_scale * inv_std if bn_weight is not None else None
    grad_inv_std = grad_scale * _as(bn_weight, scale.dtype) if bn_weight is not None else grad_scale
    grad_s = None
    if training:
        # beta = -shift * scale: the conv bias cancels; var = mean_b(v^2 s_var + centred^2),
        # shift = mean_b(v s_mean), centred = v s_mean - shift. Per item (the 1/B of the means):
        grad_var = grad_inv_std * inv_std.pow(3) * (-0.5 / b)
        grad_shift = grad_beta * scale * (-1.0 / b)
        twice = 2 * grad_var
        grad_v = torch.addcmul(torch.addcmul(grad_v, torch.addcmul(v * s_var, centred, s_mean), twice),
                               s_mean, grad_shift)
        grad_s_var = v_square @ grad_var  # [B]
        grad_s_mean = torch.addmv(v @ grad_shift, centred * v, twice)
        positions = s.shape[2] * s.shape[3]
        grad_s = torch.addcmul((grad_s_mean * (1.0 / positions)).unsqueeze(1),
                               _as(s, scale.dtype).reshape(b, positions) - s_mean,
                               (grad_s_var * (2.0 / positions)).unsqueeze(1))
        grad_s = _as(grad_s.reshape(s.shape), s.dtype)
        grad_bias = torch.zeros_like(offset)
    else:
        grad_bias = grad_beta * scale
    return (grad_s, _as(grad_v @ _as(conv_weight, grad_v.dtype), c.dtype),
            _as(grad_v.t() @ _as(c, grad_v.dtype), conv_weight.dtype), grad_bias, grad_bn_weight, grad_beta)


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


def _gate_torch_backward(grad, x, s, alpha, beta):
    """(dx, ds, dalpha, dbeta) of _gate_torch, by autograd on a recomputation."""
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (x, s, alpha, beta)]
        return torch.autograd.grad(_gate_torch(*inputs), inputs, grad)


def gate_steps(backend: str):
    """(forward, backward) of the gate x * sigmoid(relu(alpha s + beta)) of a concrete backend
    other than the reference: forward(x, s, alpha, beta) -> out and backward(grad, x, s, alpha,
    beta) -> (dx, ds, dalpha, dbeta), without autograd (for callers that write their own)."""
    if backend == "torch":
        return _gate_torch, _gate_torch_backward
    ops = torch.ops.rga_ops_triton if backend == "triton" else torch.ops.rga_ops
    return ops.ha_soft_gate, ops.ha_soft_gate_backward


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
