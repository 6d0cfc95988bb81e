"""RGA module computed exactly as the official implementation does (docs/compatibility.md):
same constructor, same submodules in the same order (hence the same state_dict),
materialised relation matrices, the same sequence of operations."""

from __future__ import annotations

import torch
from torch import nn


def _embedding(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv1x1 (no bias) -> BatchNorm2d -> ReLU, indices 0, 1, 2 as in the original."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _attention_head(in_channels: int, down_ratio: int) -> nn.Sequential:
    """W_spatial / W_channel: Conv -> BN -> ReLU -> Conv(-> 1) -> BN(1), no bias anywhere."""
    hidden = in_channels // down_ratio
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=1, stride=1, padding=0, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(),
        nn.Conv2d(hidden, 1, kernel_size=1, stride=1, padding=0, bias=False),
        nn.BatchNorm2d(1),
    )


class ReferenceRGAModule(nn.Module):
    """Relation-aware global attention, [B, C, H, W] -> [B, C, H, W] with H*W == in_spatial."""

    def __init__(
        self,
        in_channel: int,
        in_spatial: int,
        use_spatial: bool = True,
        use_channel: bool = True,
        cha_ratio: int = 8,
        spa_ratio: int = 8,
        down_ratio: int = 8,
    ) -> None:
        super().__init__()
        self.in_channel = in_channel
        self.in_spatial = in_spatial
        self.use_spatial = use_spatial
        self.use_channel = use_channel
        self.inter_channel = in_channel // cha_ratio
        self.inter_spatial = in_spatial // spa_ratio

        # Registration order is the original's (it is the state_dict order).
        if self.use_spatial:
            self.gx_spatial = _embedding(in_channel, self.inter_channel)
        if self.use_channel:
            self.gx_channel = _embedding(in_spatial, self.inter_spatial)
        if self.use_spatial:
            self.gg_spatial = _embedding(in_spatial * 2, self.inter_spatial)
        if self.use_channel:
            self.gg_channel = _embedding(in_channel * 2, self.inter_channel)
        if self.use_spatial:
            self.W_spatial = _attention_head(1 + self.inter_spatial, down_ratio)
        if self.use_channel:
            self.W_channel = _attention_head(1 + self.inter_channel, down_ratio)
        if self.use_spatial:
            self.theta_spatial = _embedding(in_channel, self.inter_channel)
            self.phi_spatial = _embedding(in_channel, self.inter_channel)
        if self.use_channel:
            self.theta_channel = _embedding(in_spatial, self.inter_spatial)
            self.phi_channel = _embedding(in_spatial, self.inter_spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()

        if self.use_spatial:
            theta_xs = self.theta_spatial(x).reshape(b, self.inter_channel, -1).permute(0, 2, 1)
            phi_xs = self.phi_spatial(x).reshape(b, self.inter_channel, -1)
            gs = torch.matmul(theta_xs, phi_xs)
            gs_in = gs.permute(0, 2, 1).view(b, h * w, h, w)
            gs_out = gs.view(b, h * w, h, w)
            gs_joint = self.gg_spatial(torch.cat((gs_in, gs_out), 1))

            g_xs = torch.mean(self.gx_spatial(x), dim=1, keepdim=True)
            ys = torch.cat((g_xs, gs_joint), 1)
            w_ys = self.W_spatial(ys)
            x = torch.sigmoid(w_ys.expand_as(x)) * x
            if not self.use_channel:
                return x

        xc = x.reshape(b, c, -1).permute(0, 2, 1).unsqueeze(-1)
        theta_xc = self.theta_channel(xc).squeeze(-1).permute(0, 2, 1)
        phi_xc = self.phi_channel(xc).squeeze(-1)
        gc = torch.matmul(theta_xc, phi_xc)
        gc_in = gc.permute(0, 2, 1).unsqueeze(-1)
        gc_out = gc.unsqueeze(-1)
        gc_joint = self.gg_channel(torch.cat((gc_in, gc_out), 1))

        g_xc = torch.mean(self.gx_channel(xc), dim=1, keepdim=True)
        yc = torch.cat((g_xc, gc_joint), 1)
        w_yc = self.W_channel(yc).transpose(1, 2)
        return torch.sigmoid(w_yc) * x
