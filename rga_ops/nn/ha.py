"""Drop-in harmonious attention modules: torchreid's SoftAttn and HarmAttn
(names, parameters, outputs), plus `gate(x)`, the gated feature computed by the
fused `ha_soft_gate` operator.

In eager mode (float32 or float64, no autocast) `gate(x)` is one autograd node, `_SoftGate`:
the whole soft attention with a hand-written backward, so that the small maps of HA-CNN's later
stages pay neither ~40 autograd nodes nor the convolution library's fixed costs on 1-channel
and 1x1 maps: the spatial branch's 3x3 stride-2 conv is a GEMV over its taps, its 1x1 conv
with one channel a multiply-add; the channel branch's 1x1 convs on 1x1 maps are GEMMs; the
final conv + BatchNorm is ha_soft_gate's closed form (alpha, beta) with its backward in closed
form too; the gradients of the two global poolings of x are added in place to the gate's (no
x-sized temporaries). Under torch.compile (and for other dtypes) the same computation runs as
plain differentiable ops, `ha_soft_gate` included, which the compiler fuses itself. The
results are the reference's (tests/nn/test_ha.py: outputs, every gradient, the running
statistics); checkpoints are unchanged (same modules and parameters)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..backends import check_backend_name, resolve_backend
from ..ops.ha_soft_gate import (
    gate_steps,
    ha_soft_gate,
    soft_gate_coefficients,
    soft_gate_coefficients_and_state,
    soft_gate_coefficients_backward,
    soft_gate_map,
)
from ..reference.ha import HardAttn, SoftAttn
from .batch_norm import batch_norm_step

_aten = torch.ops.aten


class _Norm(NamedTuple):
    """A BatchNorm as one step applies it: its running statistics (None for none), whether it
    normalises with the batch statistics, its running-average factor, its eps."""
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    training: bool
    momentum: float
    eps: float

    @classmethod
    def step(cls, bn: torch.nn.BatchNorm2d) -> _Norm:
        training, factor = batch_norm_step(bn)
        return cls(bn.running_mean, bn.running_var, training, factor, bn.eps)


def _norm_relu(y: torch.Tensor, weight, bias, norm: _Norm, size: torch.Size) -> tuple[torch.Tensor, ...]:
    """relu(batch_norm(y)) (running statistics updated in training) and the batch mean and
    inverse standard deviation its backward takes; `size` is the shape F.batch_norm would see."""
    if norm.training and y.numel() // y.shape[1] < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    out, mean, inv_std = torch.native_batch_norm(y, weight, bias, norm.running_mean, norm.running_var,
                                                 norm.training, norm.momentum, norm.eps)
    return out.relu_(), mean, inv_std


def _norm_relu_backward(grad, out, y, weight, norm: _Norm, mean, inv_std, running_mean, running_var):
    """(grad of y, of the weight, of the bias) of _norm_relu, given its output `out`."""
    grad = _aten.threshold_backward(grad, out, 0)
    return _aten.native_batch_norm_backward(grad, y, weight, running_mean, running_var, mean, inv_std,
                                            norm.training, norm.eps, [True, True, True])


def _conv3x3_stride2(m: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """(F.conv2d(m, weight, bias, stride=2, padding=1) for m [B, 1, H, W] with H, W even, and the
    input under each output's taps, [B (H/2) (W/2), 9]): one channel in and out, so a GEMV over
    the taps instead of the convolution library, whose fixed costs outweigh the work on maps
    this small."""
    b, _, h, w = m.shape
    padded = F.pad(m, (1, 1, 1, 1))
    s_b, _, s_h, s_w = padded.stride()
    taps = padded.as_strided((b, h // 2, w // 2, 3, 3), (s_b, 2 * s_h, 2 * s_w, s_h, s_w)).reshape(-1, 9)
    return torch.addmv(bias, taps, weight.view(9)).view(b, 1, h // 2, w // 2), taps


def _conv3x3_stride2_backward(grad, m_shape, weight, taps, input_grad: bool):
    """(grad of m or None, of the weight, of the bias) of _conv3x3_stride2."""
    b, _, h, w = m_shape
    flat = grad.reshape(-1)
    grad_m = None
    if input_grad:  # the transposed conv: each output's gradient spread over its taps, overlaps summed
        grad_m = F.fold(weight.view(1, 9, 1) * grad.reshape(b, 1, -1), (h, w), 3, padding=1, stride=2)
    return grad_m, (taps.t() @ flat).view_as(weight), flat.sum().view(1)


class _SoftGate(torch.autograd.Function):
    """x * SoftAttn(x) for SoftAttention.gate: forward(x, (gate steps, the five _Norms), *the 20
    parameters in state_dict order) and its backward in closed form."""

    @staticmethod
    def forward(ctx, x, settings, *params):
        (gate_forward, gate_backward), norms = settings
        (w1, b1, g1, e1, w2, b2, g2, e2, wc1, bc1, g3, e3, wc2, bc2, g4, e4, weight, bias, g5, e5) = params
        n1, n2, n3, n4, n5 = norms
        b, c, h, w = x.shape
        # The two global poolings of x, the small branches (spatial attention: 3x3 stride-2 conv,
        # BN, ReLU, bilinear x2, 1x1 conv with one channel as a multiply-add, BN, ReLU; channel
        # attention: two 1x1 convs on 1x1 maps as GEMMs), alpha and beta (their C x C GEMM), the gate.
        m = x.mean(1, keepdim=True)
        c0 = x.mean((2, 3))
        y1, taps = _conv3x3_stride2(m, w1, b1)
        r1, mean1, inv1 = _norm_relu(y1, g1, e1, n1, y1.shape)
        u = F.interpolate(r1, size=(h, w), mode="bilinear", align_corners=True)
        y2 = torch.addcmul(b2, u, w2)  # w2 is [1, 1, 1, 1]
        s, mean2, inv2 = _norm_relu(y2, g2, e2, n2, y2.shape)
        q1 = F.linear(c0, wc1.flatten(1), bc1)
        r, mean3, inv3 = _norm_relu(q1, g3, e3, n3, torch.Size((b, q1.shape[1], 1, 1)))
        q2 = F.linear(r, wc2.flatten(1), bc2)
        cv, mean4, inv4 = _norm_relu(q2, g4, e4, n4, torch.Size((b, c, 1, 1)))
        alpha, beta, state = soft_gate_coefficients_and_state(s, cv, weight.flatten(1), bias, g5, e5, n5.running_mean,
                                                              n5.running_var, n5.training, n5.momentum, n5.eps)
        out = gate_forward(x, s, alpha, beta)
        ctx.gate_backward, ctx.norms = gate_backward, norms
        ctx.coefficients = state[0]
        running = [t for n in norms[:4] for t in ((None, None) if n.training else (n.running_mean, n.running_var))]
        ctx.save_for_backward(x, taps, y1, r1, u, y2, s, c0, q1, r, q2, cv, alpha, beta,
                              w1, g1, w2, g2, wc1, g3, wc2, g4, weight, g5,
                              mean1, inv1, mean2, inv2, mean3, inv3, mean4, inv4, *state[1:], *running)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        x, taps, y1, r1, u, y2, s, c0, q1, r, q2, cv, alpha, beta = saved[:14]
        w1, g1, w2, g2, wc1, g3, wc2, g4, weight, g5 = saved[14:24]
        mean1, inv1, mean2, inv2, mean3, inv3, mean4, inv4 = saved[24:32]
        state = (ctx.coefficients, *saved[32:40])
        rm1, rv1, rm2, rv2, rm3, rv3, rm4, rv4 = saved[40:48]
        n1, n2, n3, n4, _ = ctx.norms
        b, c, h, w = x.shape
        dx, ds, dalpha, dbeta = ctx.gate_backward(grad, x, s, alpha, beta)
        gs, gcv, g_weight, g_bias, g_g5, g_e5 = soft_gate_coefficients_backward(state, s, cv, weight.flatten(1), g5,
                                                                               dalpha, dbeta)
        gs = ds if gs is None else ds + gs
        # Spatial attention, from its end.
        gy2, g_g2, g_e2 = _norm_relu_backward(gs, s, y2, g2, n2, mean2, inv2, rm2, rv2)
        g_w2 = torch.dot(gy2.flatten(), u.flatten()).view_as(w2)
        g_b2 = gy2.sum().view(1)
        gr1 = _aten.upsample_bilinear2d_backward(gy2 * w2, [h, w], list(r1.shape), True)
        gy1, g_g1, g_e1 = _norm_relu_backward(gr1, r1, y1, g1, n1, mean1, inv1, rm1, rv1)
        gm, g_w1, g_b1 = _conv3x3_stride2_backward(gy1, (b, 1, h, w), w1, taps, ctx.needs_input_grad[0])
        # Channel attention, from its end.
        gq2, g_g4, g_e4 = _norm_relu_backward(gcv, cv, q2, g4, n4, mean4, inv4, rm4, rv4)
        g_wc2 = (gq2.t() @ r).view_as(wc2)
        gq1, g_g3, g_e3 = _norm_relu_backward(gq2 @ wc2.flatten(1), r, q1, g3, n3, mean3, inv3, rm3, rv3)
        g_wc1 = (gq1.t() @ c0).view_as(wc1)
        gc0 = gq1 @ wc1.flatten(1)
        if ctx.needs_input_grad[0]:
            # The poolings' gradients, broadcast over what they average, added in place.
            dx = dx.add_(gm, alpha=1.0 / c).add_(gc0.view(b, c, 1, 1), alpha=1.0 / (h * w))
        else:
            dx = None
        return (dx, None, g_w1, g_b1, g_g1, g_e1, g_w2, g_b2, g_g2, g_e2, g_wc1, gq1.sum(0), g_g3, g_e3,
                g_wc2, gq2.sum(0), g_g4, g_e4, g_weight.view_as(weight), g_bias, g_g5, g_e5)


class SoftAttention(SoftAttn):
    """torchreid's SoftAttn(in_channels) with a `backend`.

    `forward(x)` returns the attention map [B, C, H, W] exactly as SoftAttn does;
    `gate(x)` returns `x * forward(x)` computed by the fused operator, without the
    rank-1 tensor, the C x C conv at every pixel or the map itself. Parameters,
    state_dict and running-statistics updates are SoftAttn's."""

    def __init__(self, in_channels: int, backend: str = "auto") -> None:
        super().__init__(in_channels)
        self.backend = check_backend_name(backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"

    def _check_input(self, x: torch.Tensor) -> None:
        channels = self.conv.conv.in_channels
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{type(self).__name__} was built for inputs [B, {channels}, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(
                f"{type(self).__name__}: H and W must be even (the spatial attention halves and doubles them), "
                f"got shape {tuple(x.shape)}")

    def _gate_arguments(self, x: torch.Tensor) -> tuple:
        """(s, c, conv and BatchNorm arguments) of ha_soft_gate, counting the batch in the BatchNorm."""
        conv, bn = self.conv.conv, self.conv.bn
        use_batch_stats, factor = batch_norm_step(bn)
        return (self.spatial_attn(x), self.channel_attn(x).flatten(1), conv.weight.flatten(1), conv.bias,
                bn.weight, bn.bias, bn.running_mean, bn.running_var, use_batch_stats, factor, bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if resolve_backend(self.backend, x.device) == "reference":
            return super().forward(x)
        s, *rest = self._gate_arguments(x)
        return soft_gate_map(s, *soft_gate_coefficients(s, *rest)).to(x.dtype)

    def _one_node(self, x: torch.Tensor) -> bool:
        """Whether gate(x) runs as the single autograd node _SoftGate."""
        if torch.compiler.is_compiling() or x.dtype not in (torch.float32, torch.float64):
            return False
        if torch.is_autocast_enabled(x.device.type):
            return False
        blocks = (self.spatial_attn.conv1, self.spatial_attn.conv2, self.channel_attn.conv1, self.channel_attn.conv2,
                  self.conv)
        return all(block.conv.bias is not None and block.bn.weight is not None and block.bn.bias is not None
                   and block.conv.weight.dtype == x.dtype for block in blocks)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """x * SoftAttn(x), [B, C, H, W]."""
        self._check_input(x)
        name = resolve_backend(self.backend, x.device, "ha_soft_gate", x.shape[2] * x.shape[3])
        if name == "reference" or not self._one_node(x):
            return ha_soft_gate(x, *self._gate_arguments(x), backend=self.backend)
        blocks = (self.spatial_attn.conv1, self.spatial_attn.conv2, self.channel_attn.conv1, self.channel_attn.conv2,
                  self.conv)
        norms = tuple(_Norm.step(block.bn) for block in blocks)
        params = [t for block in blocks for t in (block.conv.weight, block.conv.bias, block.bn.weight, block.bn.bias)]
        return _SoftGate.apply(x, (gate_steps(name), norms), *params)


class HarmoniousAttention(torch.nn.Module):
    """torchreid's HarmAttn(in_channels) with a `backend`: `forward(x)` returns
    (soft attention map [B, C, H, W], translations [B, 4, 2]); `gate(x)` returns
    (x * map, translations) with the fused gate. The translations are on x's device
    and dtype."""

    def __init__(self, in_channels: int, backend: str = "auto") -> None:
        super().__init__()
        self.soft_attn = SoftAttention(in_channels, backend)
        self.hard_attn = HardAttn(in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.soft_attn(x), self.hard_attn(x)

    def gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.soft_attn.gate(x), self.hard_attn(x)
