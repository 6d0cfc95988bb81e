"""Attention maps over pictures: RGA-Net's RGA-S gates (and RGA-C weights) per stage, HA-CNN's soft
attention per stage, drawn over the picture as the papers' figures show them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..data.image_dataset import read_image
from ..data.transforms import denormalize, eval_transform

# The map drawn for each stage: RGA-Net's spatial gate, HA-CNN's soft attention.
_SHOWN = ("spatial", "soft")


def attention_maps(network: torch.nn.Module, images: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """`network.attention_maps(images)` for an RGANet or HACNN (see theirs)."""
    if not hasattr(network, "attention_maps"):
        raise TypeError(f"{type(network).__name__} has no attention maps (RGANet and HACNN have)")
    return network.attention_maps(images)


def _normalised(grid: torch.Tensor) -> np.ndarray:
    """A map [h, w] scaled to [0, 1] for display (min to max of the map itself)."""
    grid = grid.float()
    low, high = grid.min(), grid.max()
    return ((grid - low) / (high - low).clamp_min(1e-12)).numpy()


def overlay(picture: torch.Tensor, grid: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The picture [3, H, W] in [0, 1] with the map [h, w] upsampled over it in the jet colour map."""
    from matplotlib import colormaps

    height, width = picture.shape[1:]
    upsampled = F.interpolate(grid[None, None].float(), (height, width), mode="bilinear", align_corners=False)[0, 0]
    heat = colormaps["jet"](_normalised(upsampled))[..., :3]
    blended = (1 - alpha) * picture.permute(1, 2, 0).numpy() + alpha * heat
    return Image.fromarray((blended.clip(0, 1) * 255).astype(np.uint8))


def save_attention_figure(path: str | os.PathLike, picture: torch.Tensor,
                          maps: dict[str, dict[str, torch.Tensor]], index: int = 0, min_width: int = 96) -> Path:
    """One strip: the picture, then each stage's map over it (captioned with the stage's name and the
    range of its values; the colours span that range). `picture` [3, H, W] in [0, 1]; `maps` as
    attention_maps returns them; `index` the item; cells at least `min_width` pixels wide."""
    cells = [("input", Image.fromarray((picture.permute(1, 2, 0).numpy() * 255).astype(np.uint8)))]
    for stage, entries in maps.items():
        kind = next((k for k in _SHOWN if k in entries), None)
        if kind is None:
            continue
        grid = entries[kind][index, 0]
        cells.append((f"{stage.replace('rga_', '')} {float(grid.min()):.2f}-{float(grid.max()):.2f}",
                      overlay(picture, grid)))
    scale = max(1, -(-min_width // picture.shape[2]))
    height, width = picture.shape[1] * scale, picture.shape[2] * scale
    caption, gap = 14, 4
    canvas = Image.new("RGB", ((width + gap) * len(cells), height + caption), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, cell) in enumerate(cells):
        canvas.paste(cell.resize((width, height), Image.BILINEAR), (i * (width + gap), caption))
        draw.text((i * (width + gap) + 2, 1), label, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def visualize(network: torch.nn.Module, height: int, width: int, files: Sequence[str | os.PathLike],
              out: str | os.PathLike, batch_size: int = 16) -> list[Path]:
    """A figure per picture file in `out` (`<name>_attention.png`) and `attention.pt` with every map."""
    transform = eval_transform(height, width)
    folder = Path(out)
    saved, everything = [], []
    for start in range(0, len(files), batch_size):
        chunk = [str(f) for f in files[start:start + batch_size]]
        batch = torch.stack([transform(read_image(f)) for f in chunk])
        maps = attention_maps(network, batch)
        pictures = denormalize(batch)
        for i, file in enumerate(chunk):
            saved.append(save_attention_figure(folder / f"{start + i:05d}_{Path(file).stem}_attention.png",
                                               pictures[i], maps, i))
            everything.append({"path": file, **{stage: {k: v[i] for k, v in entries.items()}
                                                for stage, entries in maps.items()}})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(everything, folder / "attention.pt")
    return saved
