"""Ranked-list pictures: a query and its top-k gallery, true matches and junk marked."""

import os
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from ._checks import positive_int
from .rowwise import smallest_k

# "unknown": an identity the caller does not know (a search over unlabelled pictures).
LABELS = ("match", "wrong", "junk", "unknown")
_BORDER_COLOURS = {"query": (0, 0, 0), "match": (30, 170, 60), "wrong": (220, 30, 30), "junk": (160, 160, 160),
                   "unknown": (60, 110, 200)}

ImageLike = str | os.PathLike | Image.Image | torch.Tensor


def ranked_gallery(
    distances, q_pid: int, q_camid: int, g_pids, g_camids, topk: int = 10
) -> tuple[list[int], list[str]]:
    """The first `topk` gallery items of one query's ranking, and their labels.

    `distances` [G] are the query's distances to the gallery, `g_pids`,
    `g_camids` [G]. Ranking follows the evaluation's tie rule (distance, then
    gallery index). Labels: "match" (same pid, another camera), "junk" (same pid,
    same camera: left out by the evaluation protocol, shown for inspection) or
    "wrong" (another pid).
    """
    dist = torch.as_tensor(distances)
    if dist.dim() != 1 or not dist.is_floating_point():
        raise ValueError(f"distances must be a 1-D floating tensor, got shape {tuple(dist.shape)} and dtype {dist.dtype}")
    if not bool(torch.isfinite(dist).all()):
        raise ValueError("distances contains NaN or infinite values")
    pids = torch.as_tensor(g_pids).to(dist.device)
    camids = torch.as_tensor(g_camids).to(dist.device)
    if pids.shape != dist.shape or camids.shape != dist.shape:
        raise ValueError(
            f"g_pids and g_camids must have one entry per distance ({dist.numel()}), "
            f"got {pids.numel()} and {camids.numel()}"
        )
    k = min(positive_int("topk", topk), dist.numel())
    order = smallest_k(dist[None], k)[0]
    same_pid = pids[order] == q_pid
    same_cam = camids[order] == q_camid
    labels = ["junk" if p and c else "match" if p else "wrong" for p, c in zip(same_pid.tolist(), same_cam.tolist())]
    return order.tolist(), labels


def save_ranked_list(
    path: str | os.PathLike,
    query_image: ImageLike,
    gallery_images: Sequence[ImageLike],
    labels: Sequence[str],
    distances: Sequence[float] | None = None,
    *,
    size: tuple[int, int] = (64, 128),
    border: int = 4,
) -> None:
    """Save a PNG strip: the query (black border), then the gallery images in rank order.

    Borders: green for a true match, red for a wrong identity, grey for junk, blue for unknown;
    each gallery image is captioned with its rank and, if given, its distance.
    Images are file paths, PIL images or tensors [3, H, W] with values in [0, 1]
    (undo any normalisation first) or uint8; each is resized to `size`
    (width, height), 64 x 128 like Market-1501 crops.
    """
    if len(gallery_images) != len(labels):
        raise ValueError(f"labels must have one entry per gallery image ({len(gallery_images)}), got {len(labels)}")
    if distances is not None and len(distances) != len(labels):
        raise ValueError(f"distances must have one entry per gallery image ({len(labels)}), got {len(distances)}")
    for label in labels:
        if label not in LABELS:
            raise ValueError(f"labels must be in {LABELS}, got {label!r}")
    width, height = size
    caption = 14
    cell = (width + 2 * border, height + 2 * border)
    gap = 8
    canvas = Image.new("RGB", ((cell[0] + gap) * (len(labels) + 1), cell[1] + caption), "white")
    draw = ImageDraw.Draw(canvas)
    entries = [(query_image, "query", "query")]
    for rank, (image, label) in enumerate(zip(gallery_images, labels), start=1):
        text = f"{rank}" if distances is None else f"{rank}: {float(distances[rank - 1]):.3f}"
        entries.append((image, label, text))
    for column, (image, kind, text) in enumerate(entries):
        left = column * (cell[0] + gap)
        draw.rectangle([left, 0, left + cell[0] - 1, cell[1] - 1], fill=_BORDER_COLOURS[kind])
        canvas.paste(_to_pil(image).resize((width, height)), (left + border, border))
        draw.text((left + 2, cell[1] + 1), text, fill=(0, 0, 0))
    canvas.save(path, format="PNG")


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be [3, H, W], got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.detach() * 255).round().clamp(0, 255)
        return Image.fromarray(image.to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    with Image.open(image) as opened:
        return opened.convert("RGB")
