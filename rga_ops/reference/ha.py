"""Harmonious attention blocks computed exactly as torchreid's HA-CNN does
(docs/compatibility.md): same constructors, submodule names (hence state_dicts),
initialisation and sequence of operations. `F.upsample` (deprecated) is written
as the equivalent `F.interpolate`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d -> ReLU; keys conv.*, bn.*."""

    def __init__(self, in_c: int, out_c: int, k: int, s: int = 1, p: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, stride=s, padding=p)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SpatialAttn(nn.Module):
    """[B, C, H, W] -> [B, 1, H, W]: channel mean, 3x3 stride-2 conv, bilinear x2, 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(1, 1, 3, s=2, p=1)
        self.conv2 = ConvBlock(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.mean(1, keepdim=True)
        x = self.conv1(x)
        x = F.interpolate(x, (x.size(2) * 2, x.size(3) * 2), mode="bilinear", align_corners=True)
        return self.conv2(x)


class ChannelAttn(nn.Module):
    """[B, C, H, W] -> [B, C, 1, 1]: global average pool, then C -> C/16 -> C (no sigmoid)."""

    def __init__(self, in_channels: int, reduction_rate: int = 16) -> None:
        super().__init__()
        if in_channels % reduction_rate != 0:
            raise ValueError(
                f"ChannelAttn: in_channels ({in_channels}) must be divisible by reduction_rate ({reduction_rate})")
        self.conv1 = ConvBlock(in_channels, in_channels // reduction_rate, 1)
        self.conv2 = ConvBlock(in_channels // reduction_rate, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, x.size()[2:])
        return self.conv2(self.conv1(x))


class SoftAttn(nn.Module):
    """The soft attention map sigmoid(conv(spatial * channel)), [B, C, H, W], values in [0.5, 1)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.spatial_attn = SpatialAttn()
        self.channel_attn = ChannelAttn(in_channels)
        self.conv = ConvBlock(in_channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.spatial_attn(x) * self.channel_attn(x)
        return torch.sigmoid(self.conv(y))


# Initial translations of the four regions: (0, -0.75), (0, -0.25), (0, 0.25), (0, 0.75).
_HARD_ATTN_BIAS = (0.0, -0.75, 0.0, -0.25, 0.0, 0.25, 0.0, 0.75)


class HardAttn(nn.Module):
    """[B, C, H, W] -> [B, 4, 2]: a translation (t_x, t_y) per region, tanh of a linear map of the pooled input."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, 4 * 2)
        self.init_params()

    def init_params(self) -> None:
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor(_HARD_ATTN_BIAS, dtype=self.fc.bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, x.size()[2:]).view(x.size(0), x.size(1))
        return torch.tanh(self.fc(x)).view(-1, 4, 2)


class HarmAttn(nn.Module):
    """Soft attention map and hard-attention translations: (map [B, C, H, W], theta [B, 4, 2])."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.soft_attn = SoftAttn(in_channels)
        self.hard_attn = HardAttn(in_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.soft_attn(x), self.hard_attn(x)
