"""The built-in synthetic re-id set, written in Market-1501 layout and read back by its loader.

`make_synthetic_market(root, config)` draws identities and cameras from
`config.seed` (see models/data/people.py for what they look like), places each
identity in a few cameras with a few pictures per camera, and writes

    <root>/synthetic_market_<digest>/
        bounding_box_train/  train identities, e.g. 0123_c2s4_000301_01.jpg
        query/               one picture per test identity and camera
        bounding_box_test/   the other pictures of the test identities, distractors (0000_...) and junk (-1_...)
        synthetic.json       the configuration and counts, written last

The folder is built under a temporary name and renamed into place in one step,
so a run killed half-way never leaves a folder that looks complete; the name
carries a digest of the configuration and of the generator version, so a
different configuration never reuses a stale set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .people import (
    random_camera,
    random_identity,
    render,
    render_background,
    render_fragment,
)

# Bump when the drawing changes: it is part of the folder's digest.
GENERATOR_VERSION = 3
MANIFEST = "synthetic.json"
_JPEG_QUALITY = 92


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the synthetic set. Pictures are `height` x `width` like Market-1501's crops."""

    seed: int = 0
    num_train_ids: int = 200
    num_test_ids: int = 40
    num_cameras: int = 6
    min_cameras_per_id: int = 2
    max_cameras_per_id: int = 4
    min_images_per_camera: int = 2
    max_images_per_camera: int = 4
    num_distractors: int = 100
    num_junk: int = 40
    height: int = 128
    width: int = 64

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            lowest = {"seed": None, "num_distractors": 0, "num_junk": 0}.get(field.name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or (lowest is not None and value < lowest):
                raise ValueError(f"SyntheticConfig: {field.name} must be an int >= {lowest}, got {value!r}")
        if not 2 <= self.min_cameras_per_id <= self.max_cameras_per_id <= self.num_cameras:
            raise ValueError("SyntheticConfig: need 2 <= min_cameras_per_id <= max_cameras_per_id <= num_cameras "
                             "(a query needs a true match in another camera)")
        if not 1 <= self.min_images_per_camera <= self.max_images_per_camera:
            raise ValueError("SyntheticConfig: need 1 <= min_images_per_camera <= max_images_per_camera")
        if self.num_cameras > 9:
            raise ValueError("SyntheticConfig: Market-1501 names hold one camera digit, num_cameras must be <= 9")
        if self.num_train_ids + self.num_test_ids > 1500:
            raise ValueError("SyntheticConfig: Market-1501 pids go up to 1501, at most 1500 identities in all")

    def digest(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def synthetic_folder(root: str | os.PathLike, config: SyntheticConfig) -> Path:
    """Where `make_synthetic_market(root, config)` puts (or finds) the set."""
    return Path(root).expanduser() / f"synthetic_market_{config.digest()}"


def is_complete(folder: Path, config: SyntheticConfig) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    with open(manifest) as f:
        return json.load(f).get("config") == dataclasses.asdict(config)


def make_synthetic_market(root: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(),
                          progress: bool = False) -> Path:
    """Write the set under `root` unless a complete one with this configuration is there; return its folder."""
    folder = synthetic_folder(root, config)
    if is_complete(folder, config):
        return folder
    if folder.exists():
        raise FileExistsError(f"{folder} exists but is not a complete synthetic set ({MANIFEST} missing or "
                              "different); remove it and run again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    staging = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        counts = _write(staging, config, progress)
        with open(staging / MANIFEST, "w") as f:
            json.dump({"generator_version": GENERATOR_VERSION, "config": dataclasses.asdict(config),
                       "images": counts}, f, indent=2)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _remove_abandoned(folder: Path) -> None:
    """Delete staging folders of this set left by processes that no longer run."""
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass


def _plan(config: SyntheticConfig) -> list[tuple[str, int, int, str]]:
    """Every picture to draw: (split, pid, camera 1-based, kind), in a fixed order."""
    rng = np.random.default_rng([config.seed, 0])
    num_ids = config.num_train_ids + config.num_test_ids
    pids = rng.choice(np.arange(1, 1502), size=num_ids, replace=False)
    train_pids, test_pids = sorted(pids[: config.num_train_ids]), sorted(pids[config.num_train_ids:])
    plan = []
    for split, split_pids in (("train", train_pids), ("test", test_pids)):
        for pid in split_pids:
            num_cams = int(rng.integers(config.min_cameras_per_id, config.max_cameras_per_id + 1))
            cams = sorted(rng.choice(np.arange(1, config.num_cameras + 1), size=num_cams, replace=False))
            for cam in cams:
                count = int(rng.integers(config.min_images_per_camera, config.max_images_per_camera + 1))
                # A test identity's first picture in each camera is its query, the others (one at least)
                # are gallery, so that every query has a true match in another camera.
                if split == "test":
                    count = max(count, 2)
                    plan.append(("query", int(pid), int(cam), "person"))
                    plan += [("gallery", int(pid), int(cam), "person")] * (count - 1)
                else:
                    plan += [("train", int(pid), int(cam), "person")] * count
    for kind, pid, number in (("fragment", 0, config.num_distractors), ("background", -1, config.num_junk)):
        for cam in rng.integers(1, config.num_cameras + 1, size=number):
            plan.append(("gallery", pid, int(cam), kind))
    return plan


_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def _write(staging: Path, config: SyntheticConfig, progress: bool) -> dict[str, int]:
    for name in _FOLDERS.values():
        (staging / name).mkdir(parents=True)
    cameras = [random_camera(np.random.default_rng([config.seed, 1, c])) for c in range(config.num_cameras)]
    plan = _plan(config)
    size = (config.height, config.width)
    frames: dict[tuple[int, int], int] = {}
    counts = dict.fromkeys(_FOLDERS, 0)
    iterator = plan
    if progress:
        from tqdm import tqdm
        iterator = tqdm(plan, desc="drawing synthetic set", unit="img", leave=False)
    for index, (split, pid, cam, kind) in enumerate(iterator):
        # Pictures depend on their own index only: the set is the same whatever the drawing order.
        rng = np.random.default_rng([config.seed, 2, index])
        camera = cameras[cam - 1]
        if kind == "person":
            image = render(random_identity(np.random.default_rng([config.seed, 3, pid])), camera, rng, size)
        elif kind == "fragment":
            image = render_fragment(random_identity(rng), camera, rng, size)
        else:
            image = render_background(camera, rng, size)
        frame = frames.get((pid, cam), 0) + 1
        frames[(pid, cam)] = frame
        name = f"{pid:04d}_c{cam}s1_{frame * 25:06d}_01.jpg" if pid >= 0 else f"-1_c{cam}s1_{frame * 25:06d}_01.jpg"
        image.save(staging / _FOLDERS[split] / name, format="JPEG", quality=_JPEG_QUALITY)
        counts[split] += 1
    return counts
