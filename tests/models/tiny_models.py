"""Small networks with the output conventions of RGA-Net and HA-CNN, for fast engine tests."""

import torch
from torch import nn

from rga_ops.nn import RGAModule


def _norm(kind: str, channels: int) -> nn.Module:
    # GroupNorm makes a network's output independent of how the batch is split over processes.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(4, channels)


class TinyBNNeckNet(nn.Module):
    """RGA-Net's convention: training -> (feat_, feat, logits), evaluation -> (feat_, feat).

    `rga_input`: (height, width) of the input, to end the body with an RGA module (spatial and
    channel relations, `backend`) sized for its [B, 2 * width, height / 8, width / 8] features."""

    def __init__(self, num_classes: int, norm: str = "batch", width: int = 32,
                 rga_input: tuple[int, int] | None = None, backend: str = "auto") -> None:
        super().__init__()
        layers, channels = [], 3
        for out in (width // 2, width, 2 * width):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), _norm(norm, out), nn.ReLU()]
            channels = out
        if rga_input is not None:
            positions = (rga_input[0] // 8) * (rga_input[1] // 8)
            layers.append(RGAModule(channels, positions, down_ratio=2, backend=backend))
        self.body = nn.Sequential(*layers)
        self.feat_bn = nn.BatchNorm1d(channels) if norm == "batch" else nn.LayerNorm(channels)
        self.feat_bn.bias.requires_grad_(False)
        self.cls = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor):
        pooled = self.body(x).mean((2, 3))
        feat = self.feat_bn(pooled)
        if not self.training:
            return pooled, feat
        return pooled, feat, self.cls(feat)


class TinyHACNNLike(nn.Module):
    """HA-CNN's convention: training -> (logits_g, logits_l[, x_g, x_l]), evaluation -> one feature."""

    def __init__(self, num_classes: int, triplet: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.global_head = nn.Linear(16, 8)
        self.local_head = nn.Linear(16, 8)
        self.classifier_global = nn.Linear(8, num_classes)
        self.classifier_local = nn.Linear(8, num_classes)
        self.triplet = triplet

    def forward(self, x: torch.Tensor):
        pooled = self.body(x).mean((2, 3))
        x_global, x_local = self.global_head(pooled), self.local_head(pooled)
        if not self.training:
            return torch.cat([nn.functional.normalize(x_global, dim=1), nn.functional.normalize(x_local, dim=1)], 1)
        logits = (self.classifier_global(x_global), self.classifier_local(x_local))
        return (*logits, x_global, x_local) if self.triplet else logits
