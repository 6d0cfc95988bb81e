"""HA-CNN computed exactly as torchreid's `HACNN` does (docs/compatibility.md): the test
oracle of models.networks.hacnn.HACNN.

Same submodules (hence state_dict) and sequence of operations: the soft attention
map and `x * map`, a Python loop over the 4 regions, each cropped with its own
affine grid and run through the shared local convs on its own (so the local
BatchNorms see per-region batch statistics and update their running statistics
once per region). Deliberate differences, none of which changes a number: the
affine matrices are built on the device and in the dtype of the features
(torchreid builds them in float32 on the CPU and calls `.cuda()`), and `F.upsample`
is written as `F.interpolate`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rga_ops.reference import ConvBlock, HarmAttn

INPUT_SIZE = (160, 64)
# Output size of the crops of each level before the local convs: (height, width).
CROP_SIZES = ((24, 28), (12, 14), (6, 7))
REGIONS = 4
# Every region's affine matrix has the fixed scales [[1, 0], [0, 0.25]] (s_w, s_h).
REGION_SCALE = ((1.0, 0.0), (0.0, 0.25))
LOSSES = ("softmax", "triplet")


class InceptionA(nn.Module):
    """[B, in, H, W] -> [B, out, H, W]: four streams of out // 4 channels, concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.stream1 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1))
        self.stream2 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1))
        self.stream3 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1))
        self.stream4 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), ConvBlock(in_channels, mid, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.stream1(x), self.stream2(x), self.stream3(x), self.stream4(x)], 1)


class InceptionB(nn.Module):
    """[B, in, H, W] -> [B, out, H/2, W/2]: streams of out // 4, out // 4 and out // 2 channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.stream1 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, s=2, p=1))
        self.stream2 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1),
                                     ConvBlock(mid, mid, 3, s=2, p=1))
        self.stream3 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ConvBlock(in_channels, mid * 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.stream1(x), self.stream2(x), self.stream3(x)], 1)


def check_hacnn_arguments(nchannels: Sequence[int], feat_dim: int, loss: str, num_classes: int) -> tuple[int, ...]:
    nchannels = tuple(nchannels)
    if len(nchannels) != 3 or any(not isinstance(c, int) or c <= 0 or c % 16 for c in nchannels):
        raise ValueError(f"HACNN: nchannels must be 3 positive multiples of 16 (the channel attention reduces "
                         f"by 16), got {nchannels}")
    if loss not in LOSSES:
        raise ValueError(f"HACNN: unsupported loss {loss!r}; expected one of {LOSSES}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"HACNN: num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(feat_dim, int) or feat_dim < 1:
        raise ValueError(f"HACNN: feat_dim must be a positive int, got {feat_dim!r}")
    return nchannels


def check_hacnn_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"HACNN.forward takes a tensor [B, 3, 160, 64], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != INPUT_SIZE:
        raise ValueError(f"HACNN takes inputs [B, 3, 160, 64] (height 160, width 64), got shape {tuple(x.shape)}")


def hacnn_outputs(model: nn.Module, x_global: torch.Tensor, x_local: torch.Tensor | None):
    """torchreid's outputs from the two 512-d features: the normalised concatenation in eval
    mode; the logits (and the features, for the triplet loss) in training mode."""
    if not model.training:
        if x_local is None:
            return x_global
        x_global = x_global / x_global.norm(p=2, dim=1, keepdim=True)
        x_local = x_local / x_local.norm(p=2, dim=1, keepdim=True)
        return torch.cat([x_global, x_local], 1)
    logits_global = model.classifier_global(x_global)
    if x_local is None:
        return logits_global if model.loss == "softmax" else (logits_global, x_global)
    logits = (logits_global, model.classifier_local(x_local))
    return logits if model.loss == "softmax" else (logits, (x_global, x_local))


class HACNNLayout(nn.Module):
    """torchreid's HACNN submodules, in its registration order (the state_dict order);
    `attention` builds the three HarmAttn-compatible modules."""

    def __init__(self, num_classes: int, loss: str, nchannels: Sequence[int], feat_dim: int, learn_region: bool,
                 attention) -> None:
        super().__init__()
        c1, c2, c3 = check_hacnn_arguments(nchannels, feat_dim, loss, num_classes)
        self.loss = loss
        self.learn_region = learn_region
        self.conv = ConvBlock(3, 32, 3, s=2, p=1)
        self.inception1 = nn.Sequential(InceptionA(32, c1), InceptionB(c1, c1))
        self.ha1 = attention(c1)
        self.inception2 = nn.Sequential(InceptionA(c1, c2), InceptionB(c2, c2))
        self.ha2 = attention(c2)
        self.inception3 = nn.Sequential(InceptionA(c2, c3), InceptionB(c3, c3))
        self.ha3 = attention(c3)
        self.fc_global = nn.Sequential(nn.Linear(c3, feat_dim), nn.BatchNorm1d(feat_dim), nn.ReLU())
        self.classifier_global = nn.Linear(feat_dim, num_classes)
        if learn_region:
            # Not in the state_dict (torchreid keeps them as plain tensors), but moved by .to().
            self.register_buffer("region_scale", torch.tensor(REGION_SCALE).expand(REGIONS, 2, 2).clone(),
                                 persistent=False)
            self.local_conv1 = InceptionB(32, c1)
            self.local_conv2 = InceptionB(c1, c2)
            self.local_conv3 = InceptionB(c2, c3)
            self.fc_local = nn.Sequential(nn.Linear(c3 * REGIONS, feat_dim), nn.BatchNorm1d(feat_dim), nn.ReLU())
            self.classifier_local = nn.Linear(feat_dim, num_classes)
        self.feat_dim = feat_dim * 2 if learn_region else feat_dim

    def region_affine(self, translations: torch.Tensor) -> torch.Tensor:
        """[B, 4, 2] translations (t_x, t_y) -> [B, 4, 2, 3] affine matrices [[1, 0, t_x], [0, 0.25, t_y]]."""
        scale = self.region_scale.to(translations.dtype).expand(translations.shape[0], -1, -1, -1)
        return torch.cat((scale, translations.unsqueeze(-1)), -1)


class ReferenceHACNN(HACNNLayout):
    """torchreid's HACNN(num_classes, loss, nchannels, feat_dim, learn_region), computed as torchreid does."""

    def __init__(self, num_classes: int, loss: str = "softmax", nchannels: Sequence[int] = (128, 256, 384),
                 feat_dim: int = 512, learn_region: bool = True) -> None:
        super().__init__(num_classes, loss, nchannels, feat_dim, learn_region, HarmAttn)

    def _crop(self, src: torch.Tensor, affine: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        grid = F.affine_grid(affine, list(src.shape), align_corners=False)
        crop = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return F.interpolate(crop, size, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor):
        check_hacnn_input(x)
        x = self.conv(x)
        sources, local = [x], None
        for level, (inception, ha, size) in enumerate(
                zip((self.inception1, self.inception2, self.inception3), (self.ha1, self.ha2, self.ha3), CROP_SIZES), 1):
            features = inception(sources[-1])
            attention, translations = ha(features)
            sources.append(features * attention)
            if self.learn_region:
                affine = self.region_affine(translations)
                local_conv = getattr(self, f"local_conv{level}")
                crops = [self._crop(sources[-2], affine[:, i], size) for i in range(REGIONS)]
                local = [local_conv(crop if local is None else crop + local[i]) for i, crop in enumerate(crops)]
        x3_out = sources[-1]
        x_global = self.fc_global(F.avg_pool2d(x3_out, x3_out.shape[2:]).flatten(1))
        x_local = None
        if self.learn_region:
            x_local = self.fc_local(torch.cat([F.avg_pool2d(r, r.shape[2:]).flatten(1) for r in local], 1))
        return hacnn_outputs(self, x_global, x_local)
