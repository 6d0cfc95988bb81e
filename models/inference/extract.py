"""`FeatureExtractor`: re-id features [N, D] of pictures, from a checkpoint file or a network.

    from models import FeatureExtractor
    extractor = FeatureExtractor("runs/<run>/checkpoints/best.pt")
    features = extractor(["a.jpg", "b.jpg"])          # [2, 2048] float32, on the CPU
    features = extractor("some/folder")               # every picture below it, in sorted order

The network is folded for inference (fold_for_inference: the same features, faster); the input
size and normalisation are the checkpoint's (the ImageNet mean and std of every recipe). With
`flip` each feature is the mean of the picture's and its mirror image's, as the evaluation's
flip-averaging computes it. The feature is the one the evaluation scores (RGA-Net: `feat`, after
the BNNeck BatchNorm; HA-CNN: its 1024-d concatenation)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from ..data.datasets import IMAGE_SUFFIXES
from ..data.image_dataset import read_image
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from ..engine.objectives import BNNeckObjective, HACNNObjective
from .fold import fold_for_inference
from .loading import LoadedModel, load_model

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their pictures (recursively, sorted); a clear error for a path
    that is neither."""
    files = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no pictures ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a picture nor a folder")
    return files


class FeatureExtractor:
    """Features of pictures from a trained re-id network.

    `checkpoint_or_model`: a checkpoint path (this project's, the official RGA code's or torchreid's
    HA-CNN: see models.inference.loading.load_model; `model`, `height`, `width`, `scale`, `d_scale`,
    `trust` are passed
    to it), a LoadedModel, or an RGANet / HACNN instance. `device`: "auto" (CUDA when available),
    "cpu", "cuda" or a torch.device. `amp`: "auto" (bfloat16 autocast on CUDA, off on the CPU), "off",
    "bf16", "fp16". `fold`: fold the network for inference (a copy; the model given is not changed).

    Calling it with pictures returns a float32 [N, D] CPU tensor, one row per picture, in order:
    a path, a folder, a PIL image, an HxWx3 uint8 numpy array, a [3, H, W] tensor (uint8, or
    float in [0, 1]), a [N, 3, H, W] tensor, or a list of any of these."""

    def __init__(self, checkpoint_or_model: str | os.PathLike | LoadedModel | nn.Module, device: str = "auto",
                 flip: bool = True, batch_size: int = 64, amp: str = "auto", *, model: str | None = None,
                 height: int | None = None, width: int | None = None, scale: int | None = None,
                 d_scale: int | None = None, trust: bool = False, fold: bool = True,
                 backend: str = "auto", progress: bool = False) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"FeatureExtractor: batch_size must be a positive int, got {batch_size!r}")
        if isinstance(checkpoint_or_model, (str, os.PathLike)):
            checkpoint_or_model = load_model(checkpoint_or_model, model, height, width, scale=scale, d_scale=d_scale,
                                             backend=backend, trust=trust)
        if isinstance(checkpoint_or_model, LoadedModel):
            loaded = checkpoint_or_model
            network, objective, height, width = loaded.model, loaded.objective, loaded.height, loaded.width
        elif isinstance(checkpoint_or_model, nn.Module):
            network = checkpoint_or_model
            objective, height, width = _objective_of(network, height, width)
        else:
            raise TypeError("FeatureExtractor takes a checkpoint path, a LoadedModel or an RGANet/HACNN, got "
                            f"{type(checkpoint_or_model).__name__}")
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        from ..engine.trainer import resolve_amp

        self.amp_dtype = resolve_amp(amp, self.device)
        network = network.eval()
        self.network = (fold_for_inference(network) if fold else network).to(self.device)
        self.objective = objective
        self.feature_name = objective.feature_names[-1]
        # The distance the checkpoint was evaluated with ("cosine" unless its configuration says otherwise).
        self.metric = loaded.metric if isinstance(checkpoint_or_model, LoadedModel) else "cosine"
        self.height, self.width = height, width
        self._pil_transform = eval_transform(height, width)
        self.flip = flip
        self.batch_size = batch_size
        self.progress = progress

    def __repr__(self) -> str:
        return (f"FeatureExtractor({type(self.network).__name__}, input {self.height}x{self.width}, "
                f"feature {self.feature_name!r}, flip={self.flip}, device={self.device})")

    # ---- inputs --------------------------------------------------------------------------------

    def _items(self, images: ImageLike | Sequence[ImageLike]) -> list:
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            return list(images.unbind(0))
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
            images = [images]
        items = []
        for item in images:
            if isinstance(item, (str, os.PathLike)):
                items.extend(str(p) for p in image_files([item]))
            elif isinstance(item, torch.Tensor) and item.dim() == 4:
                items.extend(item.unbind(0))
            else:
                items.append(item)
        return items

    def _tensor(self, item) -> torch.Tensor:
        """One picture as a normalised float32 [3, height, width] tensor."""
        if isinstance(item, str):
            item = read_image(item)
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3)):
                raise ValueError(f"FeatureExtractor: numpy pictures must be HxW or HxWx3 uint8 arrays, got "
                                 f"{item.dtype} of shape {item.shape}")
            item = Image.fromarray(item.squeeze(2) if item.ndim == 3 and item.shape[2] == 1 else item)
        if isinstance(item, Image.Image):
            # The evaluation's own transform (PIL resizing), so that features equal the evaluator's.
            return self._pil_transform(item.convert("RGB"))
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"FeatureExtractor: cannot read a picture from {type(item).__name__}")
        if item.dim() != 3 or item.shape[0] != 3:
            raise ValueError(f"FeatureExtractor: tensor pictures must be [3, H, W] (or [N, 3, H, W]), got "
                             f"{tuple(item.shape)}")
        if item.dtype == torch.uint8:
            item = item.float() / 255
        elif not item.is_floating_point():
            raise ValueError(f"FeatureExtractor: tensor pictures must be uint8 or float in [0, 1], got {item.dtype}")
        item = F.resize(item.float(), [self.height, self.width], antialias=True)
        return F.normalize(item, IMAGENET_MEAN, IMAGENET_STD)

    # ---- features ------------------------------------------------------------------------------

    @torch.no_grad()
    def features_of_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Features [B, D] (float32, on self.device) of normalised pictures [B, 3, height, width]."""
        batch = batch.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            features = self.objective.features(self.network(batch))[self.feature_name]
            if self.flip:
                mirrored = self.objective.features(self.network(batch.flip(3)))[self.feature_name]
                features = (features + mirrored) / 2
        return features.float()

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        items = self._items(images)
        if not items:
            raise ValueError("FeatureExtractor: no pictures given")
        parts = []
        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc="features", unit="batch", disable=not self.progress, dynamic_ncols=True):
            batch = torch.stack([self._tensor(item) for item in items[start:start + self.batch_size]])
            parts.append(self.features_of_batch(batch).cpu())
        return torch.cat(parts)

    extract = __call__


def _objective_of(network: nn.Module, height: int | None, width: int | None):
    from ..networks.hacnn import HACNN
    from ..networks.rganet import RGANet

    if isinstance(network, RGANet):
        return BNNeckObjective(), height or network.height, width or network.width
    if isinstance(network, HACNN):
        return HACNNObjective(), 160, 64
    raise TypeError(f"FeatureExtractor takes an RGANet or HACNN (or a checkpoint), got {type(network).__name__}")
