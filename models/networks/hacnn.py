"""HA-CNN (Li, Zhu, Gong, CVPR 2018) as torchreid defines it (docs/compatibility.md), with
its state_dict and outputs, computed faster:

- the soft attention is applied as the fused gate `x * SoftAttn(x)`
  (`rga_ops.nn.HarmoniousAttention.gate`, the `ha_soft_gate` operator);
- the 4 regions of each level go through the shared local convs as one batch of
  4B crops (item-major: crop b * 4 + i is region i of item b), all crops of a level
  sampled by one `grid_sample`. The local BatchNorms still normalise each region
  with its own batch statistics in training mode and update their running
  statistics once per region, in region order, as torchreid's loop does;
- the affine matrices are built on the features' device (no `.cuda()`), from a
  non-persistent buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rga_ops.backends import check_backend_name
from rga_ops.nn import HarmoniousAttention, batch_norm_step
from rga_ops.reference import ConvBlock

from .backend import OneBackend
from .reference_hacnn import (
    CROP_SIZES,
    REGIONS,
    HACNNLayout,
    InceptionB,
    check_hacnn_input,
    hacnn_outputs,
)

_BatchNorm = nn.modules.batchnorm._BatchNorm


def regional_conv_block(block: ConvBlock, x: torch.Tensor, regions: int) -> torch.Tensor:
    """block(x) for x [B * regions, C, H, W] (item-major) as if each region's [B, C, H, W]
    slice went through `block` on its own, one after the other: in training mode the
    BatchNorm normalises each region with its own batch statistics and updates the
    running statistics once per region; in eval mode one call does it."""
    y = block.conv(x)
    bn = block.bn
    if not isinstance(bn, _BatchNorm) or not bn.training and bn.running_mean is not None:
        return F.relu(bn(y))  # eval mode (or folded: fold_for_inference): one normalisation for every region
    n, c, h, w = y.shape
    per_region = y.reshape(n // regions, regions * c, h, w)  # channel r * C + k is channel k of region r
    weight = bn.weight.repeat(regions) if bn.affine else None
    bias = bn.bias.repeat(regions) if bn.affine else None
    out = F.batch_norm(per_region, None, None, weight, bias, True, 0.0, bn.eps)
    if bn.running_mean is not None:
        with torch.no_grad():
            mean, var = torch.batch_norm_update_stats(per_region, None, None, 0.0)
            count = per_region.numel() // per_region.shape[1]
            unbiased = var * (count / (count - 1))
            for r in range(regions):
                _, factor = batch_norm_step(bn)
                bn.running_mean.lerp_(mean[r * c:(r + 1) * c].to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_(unbiased[r * c:(r + 1) * c].to(bn.running_var.dtype), factor)
    return F.relu(out).reshape(n, c, h, w)


def regional_inception_b(block: InceptionB, x: torch.Tensor, regions: int) -> torch.Tensor:
    """InceptionB of [B * regions, C, H, W] crops with per-region BatchNorm (regional_conv_block)."""
    def stream(seq: nn.Sequential, t: torch.Tensor) -> torch.Tensor:
        for layer in seq:
            t = regional_conv_block(layer, t, regions) if isinstance(layer, ConvBlock) else layer(t)
        return t

    return torch.cat([stream(block.stream1, x), stream(block.stream2, x), stream(block.stream3, x)], 1)


class HACNN(OneBackend, HACNNLayout):
    """Harmonious Attention CNN: [B, 3, 160, 64] -> torchreid's outputs.

    Eval mode: the 1024-d `cat(x_global / |x_global|, x_local / |x_local|)` (the
    unnormalised 512-d x_global with learn_region=False). Training mode:
    `(logits_global, logits_local)` for loss="softmax"; for loss="triplet"
    `((logits_global, logits_local), (x_global, x_local))` (without the local parts
    when learn_region=False). torchreid's state_dicts load with strict=True.
    `backend` is the soft attention gates' (see `rga_ops.backends()`), changeable
    through the `backend` property."""

    def __init__(self, num_classes: int, loss: str = "softmax", nchannels: Sequence[int] = (128, 256, 384),
                 feat_dim: int = 512, learn_region: bool = True, backend: str = "auto") -> None:
        check_backend_name(backend)
        super().__init__(num_classes, loss, nchannels, feat_dim, learn_region,
                         lambda channels: HarmoniousAttention(channels, backend))
        self._backend = backend


    def extra_repr(self) -> str:
        return f"backend={self._backend!r}"

    def _crops(self, src: torch.Tensor, translations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The 4 regions of src [B, C, H, W] at translations [B, 4, 2], resized to `size`:
        [B * 4, C, *size], item-major. One grid [B, 4H, W, 2] samples all regions at once."""
        b, c, h, w = src.shape
        affine = self.region_affine(translations).reshape(b * REGIONS, 2, 3)
        grid = F.affine_grid(affine, [b * REGIONS, c, h, w], align_corners=False)
        crops = F.grid_sample(src, grid.view(b, REGIONS * h, w, 2), mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # [B, C, 4H, W]
        crops = F.interpolate(crops.view(b, c * REGIONS, h, w), size, mode="bilinear", align_corners=True)
        return crops.view(b, c, REGIONS, *size).transpose(1, 2).reshape(b * REGIONS, c, *size)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """The harmonious attention of each stage for inputs `x` [B, 3, 160, 64] (the global stream):
        {"ha1": {"soft": [B, 1, h, w] the soft attention averaged over channels, in (0, 1);
        "spatial": [B, 1, h, w] the spatial branch's map (before the fusing conv and sigmoid);
        "regions": [B, 4, 2] the hard attention's region translations}, "ha2": ..., "ha3": ...}.
        Computed in eval mode (the model's mode is restored); forward pays nothing for it."""
        check_hacnn_input(x)
        was_training = self.training
        self.eval()
        try:
            maps = {}
            src = self.conv(x)
            for level, (inception, ha) in enumerate(
                    zip((self.inception1, self.inception2, self.inception3), (self.ha1, self.ha2, self.ha3)), 1):
                y = inception(src)
                src, translations = ha.gate(y)
                maps[f"ha{level}"] = {"soft": ha.soft_attn(y).mean(1, keepdim=True),
                                      "spatial": ha.soft_attn.spatial_attn(y), "regions": translations}
            return maps
        finally:
            self.train(was_training)

    def forward(self, x: torch.Tensor):
        check_hacnn_input(x)
        x = self.conv(x)
        src, local = x, None
        for level, (inception, ha, size) in enumerate(
                zip((self.inception1, self.inception2, self.inception3), (self.ha1, self.ha2, self.ha3), CROP_SIZES), 1):
            gated, translations = ha.gate(inception(src))
            if self.learn_region:
                crops = self._crops(src, translations, size)
                local = regional_inception_b(getattr(self, f"local_conv{level}"),
                                             crops if local is None else crops + local, REGIONS)
            src = gated
        x_global = self.fc_global(src.mean((2, 3)))
        x_local = None
        if self.learn_region:
            x_local = self.fc_local(local.mean((2, 3)).view(x_global.shape[0], -1))
        return hacnn_outputs(self, x_global, x_local)
