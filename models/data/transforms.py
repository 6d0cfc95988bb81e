"""Train and test transforms of the re-id recipes (docs/reid.md), torchvision v2 on PIL images."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROPS = ("enlarge", "pad", "none")


class RandomEnlargedCrop(torch.nn.Module):
    """With probability `p` resize to `scale` x (height, width) and crop a random (height, width) window,
    else resize to (height, width) (the RGA authors' and torchreid's random translation)."""

    def __init__(self, height: int, width: int, p: float = 0.5, scale: float = 1.125) -> None:
        super().__init__()
        self.size = [height, width]
        self.enlarged = [round(height * scale), round(width * scale)]
        self.p = p

    def forward(self, image: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return F.resize(image, self.size)
        image = F.resize(image, self.enlarged)
        top = int(torch.randint(self.enlarged[0] - self.size[0] + 1, ()))
        left = int(torch.randint(self.enlarged[1] - self.size[1] + 1, ()))
        return F.crop(image, top, left, *self.size)


def train_transform(
    height: int,
    width: int,
    crop: str = "enlarge",
    flip_p: float = 0.5,
    erase_p: float = 0.5,
    pad: int = 10,
) -> v2.Compose:
    """PIL image -> normalised float tensor [3, height, width] with the training augmentations.

    `crop`: "enlarge" (1.125x resize then random crop, p 0.5: the RGA recipe), "pad" (resize, pad by
    `pad`, random crop: fast-reid's) or "none". Random erasing (area 0.02-0.4, aspect 0.3-3.33) runs
    after normalisation and fills with 0, i.e. the mean colour.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    size = [height, width]
    if crop == "enlarge":
        steps = [RandomEnlargedCrop(height, width)]
    elif crop == "pad":
        steps = [v2.Resize(size), v2.Pad(pad), v2.RandomCrop(size)]
    else:
        steps = [v2.Resize(size)]
    steps += [v2.RandomHorizontalFlip(flip_p), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if erase_p > 0:
        steps.append(v2.RandomErasing(p=erase_p, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=0.0))
    return v2.Compose(steps)


def eval_transform(height: int, width: int) -> v2.Compose:
    """PIL image -> normalised float tensor [3, height, width]."""
    return v2.Compose([v2.Resize([height, width]), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation of [..., 3, H, W] images, values clamped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return (images * std + mean).clamp(0.0, 1.0)
