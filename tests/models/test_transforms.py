"""Train/eval transforms: sizes, normalisation, the 1.125x enlarge-and-crop, erasing, per-item seeds."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from models.data.datasets import ImageRecord
from models.data.image_dataset import ImageDataset
from models.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, RandomEnlargedCrop, denormalize, eval_transform,
                                    train_transform)


def gradient_image(width=64, height=128):
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 2 % 256, 128) for y in range(height) for x in range(width)])
    return image


def test_eval_transform_resizes_and_normalises():
    out = eval_transform(32, 16)(Image.new("RGB", (64, 128), (255, 0, 128)))
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    expected = [(v - m) / s for v, m, s in zip((1.0, 0.0, 128 / 255), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(out[:, 5, 5], torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(denormalize(out)[:, 5, 5], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("crop", ["enlarge", "pad", "none"])
def test_train_transform_shapes(crop):
    torch.manual_seed(0)
    transform = train_transform(64, 32, crop)
    for _ in range(5):
        assert transform(gradient_image()).shape == (3, 64, 32)
    with pytest.raises(ValueError, match="crop must be one of"):
        train_transform(64, 32, "zoom")


def test_enlarged_crop_is_a_window_of_the_enlarged_image_or_a_plain_resize():
    image = gradient_image()
    plain = np.asarray(F.resize(image, [64, 32]))
    enlarged = np.asarray(F.resize(image, [72, 36]))
    windows = [enlarged[top:top + 64, left:left + 32] for top in range(9) for left in range(5)]
    crop = RandomEnlargedCrop(64, 32, p=0.5)
    outcomes = set()
    torch.manual_seed(1)
    for _ in range(40):
        out = np.asarray(crop(image))
        assert out.shape == (64, 32, 3)
        if np.array_equal(out, plain):
            outcomes.add("resize")
        else:
            assert any(np.array_equal(out, w) for w in windows)
            outcomes.add("crop")
    assert outcomes == {"resize", "crop"}


def test_random_erasing_fills_with_zero_after_normalisation():
    torch.manual_seed(0)
    transform = train_transform(64, 32, "none", flip_p=0.0, erase_p=1.0)
    out = transform(Image.new("RGB", (32, 64), (255, 255, 255)))
    erased = (out == 0).all(0)
    assert 0.02 * 64 * 32 <= erased.sum() <= 0.4 * 64 * 32


def test_item_seeds_make_augmentation_reproducible_without_touching_the_global_generator(tmp_path):
    path = tmp_path / "0001_c1s1_000001_01.jpg"
    gradient_image().save(path)
    dataset = ImageDataset([ImageRecord(str(path), 0, 0)], train_transform(64, 32))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first, again, other = dataset[(0, 123)][0], dataset[(0, 123)][0], dataset[(0, 124)][0]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, again) and not torch.equal(first, other)
