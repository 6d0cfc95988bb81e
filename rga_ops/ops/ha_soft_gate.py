"""HA's soft-attention gate, `x * sigmoid(relu(BN(conv1x1(s * c))))`, in one pass over x.

SoftAttn multiplies a spatial map s [B, 1, H, W] by a channel vector c [B, C]
and feeds the rank-1 product through a C -> C 1x1 conv (with bias), BatchNorm
and ReLU. Because y[b, :, p] = s[b, p] c[b], the conv is s[b, p] v[b] + bias with
v[b] = W c[b] (a GEMV per item), and the BatchNorm statistics over (b, p) follow
in closed form from per-item statistics of s (spec/MATH.md §3). All of it folds
into alpha [B, C] and beta [C]:

    out[b, o, p] = x[b, o, p] * sigmoid(relu(alpha[b, o] * s[b, p] + beta[o]))

which is the registered operator `rga_ops::ha_soft_gate` (one read of x, one
write of out). The statistics use centred per-item moments of s, so the variance
has no cancellation; they are small differentiable tensor expressions, which gives
the exact gradients of BatchNorm in training mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._extension import STATUS as _EXTENSION
from ..backends import check_backend_name, resolve_backend

_OP = "rga_ops::ha_soft_gate"


def _check_gate_inputs(op: str, x, s, alpha, beta) -> None:
    """The checks of csrc/checks.h (check_soft_gate_inputs), for the fake kernel and the wrapper."""
    torch._check_value(x.dim() == 4, lambda: f"{op}: x must have 4 dimensions [B, C, H, W], got shape {tuple(x.shape)}")
    torch._check_type(x.is_floating_point(), lambda: f"{op}: x must be a floating-point tensor, got dtype {x.dtype}")
    b, c, h, w = x.shape
    torch._check_value(
        s.dim() == 4 and tuple(s.shape) == (b, 1, h, w),
        lambda: f"{op}: s must be [B, 1, H, W] = [{b}, 1, {h}, {w}], got shape {list(s.shape)}",
    )
    torch._check_value(
        alpha.dim() == 2 and tuple(alpha.shape) == (b, c),
        lambda: f"{op}: alpha must be [B, C] = [{b}, {c}], got shape {list(alpha.shape)}",
    )
    torch._check_value(beta.dim() == 1 and beta.shape[0] == c, lambda: f"{op}: beta must be [C] = [{c}], got shape {list(beta.shape)}")
    torch._check_type(s.dtype == x.dtype, lambda: f"{op}: s must have the dtype of x ({x.dtype}), got {s.dtype}")
    torch._check_type(beta.dtype == alpha.dtype, lambda: f"{op}: beta must have the dtype of alpha ({alpha.dtype}), got {beta.dtype}")
    torch._check_type(
        alpha.dtype in (x.dtype, torch.float32),
        lambda: f"{op}: alpha must have the dtype of x ({x.dtype}) or float32, got {alpha.dtype}",
    )
    for name, t in (("s", s), ("alpha", alpha), ("beta", beta)):
        torch._check_value(t.device == x.device, lambda: f"{op}: {name} must be on the device of x ({x.device}), got {t.device}")


def _check_soft_gate_arguments(x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                               training) -> None:
    op = "rga_ops.ha_soft_gate"
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{op}: x must be a tensor [B, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got dtype {x.dtype}")
    b, ch, h, w = x.shape
    expected = {"s": (s, (b, 1, h, w)), "c": (c, (b, ch)), "conv_weight": (conv_weight, (ch, ch)),
                "conv_bias": (conv_bias, (ch,))}
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None:
            expected[name] = (t, (ch,))
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {list(shape)}, got {list(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on the device of x ({x.device}), got {t.device}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if s.dtype != x.dtype:
        raise TypeError(f"{op}: s must have the dtype of x ({x.dtype}), got {s.dtype}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: evaluation (training=False) needs running_mean and running_var")


def _gate_torch(x, s, alpha, beta):
    """The gate in plain PyTorch ops (autograd by PyTorch), in alpha's dtype (float32 for
    reduced-precision x, as the kernels compute it) and rounded once at the end."""
    z = alpha[:, :, None, None] * s + beta[None, :, None, None]
    return (x.to(z.dtype) * torch.sigmoid(torch.relu(z))).to(x.dtype)


def _gate_compiled(x, s, alpha, beta):
    return torch.ops.rga_ops.ha_soft_gate(x, s, alpha, beta)


def _gate_triton(x, s, alpha, beta):
    return torch.ops.rga_ops_triton.ha_soft_gate(x, s, alpha, beta)


_GATES = {"torch": _gate_torch, "cpp": _gate_compiled, "cuda": _gate_compiled, "triton": _gate_triton}


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


def _soft_gate_reference(x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var,
                         training, momentum, eps):
    """As torchreid's SoftAttn computes it: the rank-1 tensor, the C x C conv at every pixel, BN, ReLU, sigmoid."""
    y = s * c[:, :, None, None]
    y = F.conv2d(y, conv_weight[:, :, None, None], conv_bias)
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return x * torch.sigmoid(F.relu(y))


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
    _check_soft_gate_arguments(x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean, running_var, training)
    name = resolve_backend(backend, x.device, "ha_soft_gate", x.shape[2] * x.shape[3])
    if name == "reference":
        return _soft_gate_reference(x, s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                                    running_var, training, momentum, eps)
    alpha, beta = soft_gate_coefficients(s, c, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                                         running_var, training, momentum, eps)
    return _GATES[name](x, s, alpha, beta)


if _EXTENSION.loaded:

    @torch.library.register_fake(_OP)
    def _ha_soft_gate_fake(x, s, alpha, beta):
        _check_gate_inputs(_OP, x, s, alpha, beta)
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(_OP + "_backward")
    def _ha_soft_gate_backward_fake(grad, x, s, alpha, beta):
        _check_gate_inputs(_OP + "_backward", x, s, alpha, beta)
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                torch.empty_like(s, memory_format=torch.contiguous_format),
                alpha.new_empty(alpha.shape), beta.new_empty(beta.shape))

    def _setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad):
        return torch.ops.rga_ops.ha_soft_gate_backward(grad, *ctx.saved_tensors)

    torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)
