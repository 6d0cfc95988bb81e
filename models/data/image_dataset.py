"""A torch Dataset over `ImageRecord`s that names the file when a picture cannot be read."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .datasets import ImageRecord


class UnreadableImageError(OSError):
    """A picture of a data set is missing, truncated or not an image."""


def read_image(path: str) -> Image.Image:
    """The RGB picture at `path`, fully decoded; `UnreadableImageError` naming the path otherwise."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


class ImageDataset(Dataset):
    """Item i: (transform(picture), pid, camid, i) for records[i].

    An item may also be asked for as `(i, seed)` (what `IdentityBatchSampler`
    yields): the transform then draws its randomness from a torch generator
    seeded with `seed`, leaving the process's own random state alone.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        image = read_image(record.path)
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    # The CPU generator alone (what fork_rng restores): torch.manual_seed would also
                    # reseed every accelerator's, and before CUDA is initialised it queues that call
                    # with a formatted stack trace, half of an item's time at 32x16.
                    torch.default_generator.manual_seed(seed)
                    image = self.transform(image)
        return image, record.pid, record.camid, index
