"""Shared fixtures of the re-id application tests."""

import pytest

from models.data.datasets import load_market1501
from models.data.synthetic import SyntheticConfig, make_synthetic_market

# 16 training identities (two P x K steps of 8 identities per epoch), 8 test identities, 3 cameras.
SMALL_SET = SyntheticConfig(seed=11, num_train_ids=16, num_test_ids=8, num_cameras=3, max_cameras_per_id=3,
                            max_images_per_camera=3, num_distractors=4, num_junk=2)


@pytest.fixture(scope="session")
def small_set(tmp_path_factory):
    """A small synthetic set in Market-1501 layout, loaded."""
    return load_market1501(make_synthetic_market(tmp_path_factory.mktemp("data"), SMALL_SET))
