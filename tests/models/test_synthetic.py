"""The synthetic set: Market-1501 layout read back by its loader, determinism, atomic writing."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import models.data.synthetic as synthetic
from models.data.datasets import load_market1501
from models.data.people import random_camera, random_identity, render
from models.data.synthetic import MANIFEST, SyntheticConfig, make_synthetic_market, synthetic_folder

SMALL = SyntheticConfig(seed=3, num_train_ids=6, num_test_ids=4, num_cameras=3, max_cameras_per_id=3,
                        max_images_per_camera=3, num_distractors=3, num_junk=2)


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_is_read_back_by_the_market_loader(tmp_path):
    folder = make_synthetic_market(tmp_path, SMALL)
    assert folder == synthetic_folder(tmp_path, SMALL) and folder.parent == tmp_path
    data = load_market1501(folder)
    assert data.num_train_pids == 6
    assert sorted({r.pid for r in data.train}) == list(range(6))
    test_pids = {r.pid for r in data.query}
    assert len(test_pids) == 4 and {r.pid for r in data.gallery} == test_pids | {0}
    assert sum(r.pid == 0 for r in data.gallery) == 3
    junk = list((folder / "bounding_box_test").glob("-1_c*.jpg"))
    assert len(junk) == 2
    # Every query has a true match (same pid, another camera) in the gallery.
    for q in data.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in data.gallery)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["config"]["seed"] == 3
    assert sum(manifest["images"].values()) == len(data.train) + len(data.query) + len(data.gallery) + 2
    with Image.open(data.train[0].path) as image:
        assert image.size == (64, 128) and image.format == "JPEG"


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path):
    first = make_synthetic_market(tmp_path / "a", SMALL)
    second = make_synthetic_market(tmp_path / "b", SMALL)
    assert digests(first) == digests(second)
    other = make_synthetic_market(tmp_path / "c", SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert other.name != first.name
    assert set(digests(other).values()).isdisjoint(v for k, v in digests(first).items() if k != MANIFEST)


def test_a_complete_set_is_reused(tmp_path, monkeypatch):
    folder = make_synthetic_market(tmp_path, SMALL)
    before = digests(folder)
    monkeypatch.setattr(synthetic, "render", lambda *a: pytest.fail("a complete set was drawn again"))
    assert make_synthetic_market(tmp_path, SMALL) == folder
    assert digests(folder) == before


def test_an_interrupted_run_leaves_no_set(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_render = synthetic.render

    def failing_render(*args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real_render(*args)

    monkeypatch.setattr(synthetic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_market(tmp_path, SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "render", real_render)
    assert load_market1501(make_synthetic_market(tmp_path, SMALL)).num_train_pids == 6


def test_a_killed_process_leaves_only_a_staging_folder_which_is_cleaned_up(tmp_path):
    # A process killed with SIGKILL cannot clean up: its staging folder must not count as the set.
    code = ("import os, models.data.synthetic as s\n"
            "real = s.render\n"
            "n = [0]\n"
            "def render(*a):\n"
            "    n[0] += 1\n"
            "    if n[0] == 5: os.kill(os.getpid(), 9)\n"
            "    return real(*a)\n"
            "s.render = render\n"
            f"s.make_synthetic_market({str(tmp_path)!r}, s.{SMALL!r})\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert result.returncode != 0
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".synthetic_market_") and ".tmp-" in leftovers[0]
    assert not synthetic_folder(tmp_path, SMALL).exists()
    folder = make_synthetic_market(tmp_path, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_an_unrelated_folder_with_the_name_is_not_taken_for_the_set(tmp_path):
    synthetic_folder(tmp_path, SMALL).mkdir()
    with pytest.raises(FileExistsError, match="not a complete synthetic set"):
        make_synthetic_market(tmp_path, SMALL)


@pytest.mark.parametrize("change, message", [
    ({"num_train_ids": 0}, "num_train_ids must be an int >= 1"),
    ({"min_cameras_per_id": 1}, "min_cameras_per_id"),
    ({"max_cameras_per_id": 7}, "max_cameras_per_id <= num_cameras"),
    ({"num_cameras": 10, "max_cameras_per_id": 4}, "num_cameras must be <= 9"),
    ({"num_junk": -1}, "num_junk must be an int >= 0"),
])
def test_bad_configurations(change, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**change)


def test_pictures_depend_on_identity_camera_and_seed_only():
    who = random_identity(np.random.default_rng([0, 1]))
    camera = random_camera(np.random.default_rng([0, 2]))
    first = np.asarray(render(who, camera, np.random.default_rng(5), (128, 64)))
    again = np.asarray(render(who, camera, np.random.default_rng(5), (128, 64)))
    other = np.asarray(render(who, camera, np.random.default_rng(6), (128, 64)))
    assert first.shape == (128, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
