"""Drop-in harmonious attention modules: torchreid's SoftAttn and HarmAttn
(names, parameters, outputs), plus `gate(x)`, the gated feature computed by the
fused `ha_soft_gate` operator."""

from __future__ import annotations

import torch

from ..backends import check_backend_name, resolve_backend
from ..ops.ha_soft_gate import ha_soft_gate, soft_gate_coefficients, soft_gate_map
from ..reference.ha import HardAttn, SoftAttn
from .batch_norm import batch_norm_step


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

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """x * SoftAttn(x), [B, C, H, W]."""
        self._check_input(x)
        return ha_soft_gate(x, *self._gate_arguments(x), backend=self.backend)


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
