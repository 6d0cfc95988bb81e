"""The shapes every benchmark runs at: RGA-Net's stages at 256x128 input and HA-CNN's at 160x64."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rga_ops.testing import STAGES

# HA-CNN's soft-attention gates at 160x64 input: (C, H, W) of its three stages.
HA_SHAPES = ((128, 40, 16), (256, 20, 8), (384, 10, 4))


def relation_shapes(stages: Sequence[tuple[int, int, int]] = STAGES) -> Iterator[tuple[str, int, int, int]]:
    """(branch, C', N, K) of the relation ops in each stage's spatial (C' = C/8, N = H*W, K = N/8)
    and channel (C' = H*W/8, N = C, K = C/8) branches."""
    for c, h, w in stages:
        yield "spatial", c // 8, h * w, h * w // 8
        yield "channel", h * w // 8, c, c // 8


def head_shapes(stages: Sequence[tuple[int, int, int]] = STAGES) -> Iterator[tuple[str, int, int, int]]:
    """(branch, K, M, H) of batch_norm_relu_conv1x1 in each stage's spatial and channel attention
    head: x = the relation [B, K, M], conv_weight [H, K] with H = (1 + K) // 8. Each shape once
    (the spatial heads of stages 3 and 4, both 16x8, are the same)."""
    seen = set()
    for c, h, w in stages:
        for branch, k, m in (("spatial", h * w // 8, h * w), ("channel", c // 8, c)):
            if (branch, k, m) not in seen:
                seen.add((branch, k, m))
                yield branch, k, m, (1 + k) // 8


def shape_id(stage: tuple[int, int, int]) -> str:
    return "x".join(map(str, stage))
