"""Your own data sets: a folder of split folders, or CSV lists (`--dataset folder` / `--dataset csv`).

Folder (`load_folder(root)`): `root/train` (or `bounding_box_train`, optional: evaluation needs
only the other two), `root/query`, `root/gallery` (or `bounding_box_test`). Each split folder holds
either pictures named as Market-1501's (`0002_c1s1_000451_03.jpg`: pid 2, camera 1; pid -1 is junk
and dropped, pid 0 a gallery distractor), or one sub-folder per identity (its name is the identity,
matched across splits; numbers are taken as pids, other names numbered 1, 2, ... in sorted order),
with the camera optional in each file name (`c3`, `cam3` as a token: `img_c3_01.jpg`, `cam3-17.png`;
numbered from 1 as Market-1501's, so c1 is camera id 0).

CSV (`load_csv(root)`): `root/train.csv` (optional), `root/query.csv`, `root/gallery.csv`, each with
rows `path,pid,camid` (a header row `path,pid,camid` is allowed; `path` relative to `root` or
absolute; `camid` may be left empty when unknown; pid -1 rows are junk and dropped).

Either all pictures of a data set have a camera or none has. Without cameras the query and
the gallery are taken as different cameras: every gallery picture of the query's identity counts
as a true match and none is discarded (the split table says so). Train pids are relabelled 0..P-1.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from .datasets import (
    IMAGE_SUFFIXES,
    JUNK_PID,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageRecord,
    ReidDataset,
    parse_market_folder,
    relabel,
)

# A camera token in a file name: c3 / cam3, delimited by the name's start, '_', '-', '.' or a letter after.
_CAMERA = re.compile(r"(?:^|[_\-.])c(?:am)?(\d+)(?!\d)", re.IGNORECASE)
_SPLITS = {"train": ("train", "bounding_box_train"), "query": ("query",), "gallery": ("gallery", "bounding_box_test")}
_UNKNOWN = -1
_MANY = 10**9


def _split_folder(root: Path, split: str, required: bool) -> Path | None:
    for name in _SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    if required:
        raise DatasetNotFoundError(f"folder data set: no {' or '.join(_SPLITS[split])} folder in {root}")
    return None


def _images(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)),
                  key=lambda e: e.name)


def _identity_folders(name: str, folder: Path) -> list[tuple[str, str, int]]:
    """(path, identity name, camera or _UNKNOWN) for the pictures of each identity sub-folder."""
    rows = []
    for sub in sorted((e for e in os.scandir(folder) if e.is_dir()), key=lambda e: e.name):
        for entry in _images(Path(sub.path)):
            match = _CAMERA.search(Path(entry.name).stem)
            rows.append((entry.path, sub.name, int(match.group(1)) if match else _UNKNOWN))
    if not rows:
        raise DatasetNotFoundError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in the sub-folders of {folder}")
    return rows


def _read_split(name: str, folder: Path, split: str) -> list[tuple[str, str | int, int]]:
    has_dirs = any(e.is_dir() for e in os.scandir(folder))
    has_images = bool(_images(folder))
    if has_dirs and has_images:
        raise DatasetFormatError(f"{name}: {folder} holds both pictures and sub-folders; use one picture per "
                                 "Market-1501 file name, or one sub-folder per identity")
    if has_dirs:
        return _identity_folders(name, folder)
    records = parse_market_folder(name, folder, _MANY, _MANY, keep_distractors=split == "gallery")
    return [(r.path, r.pid, r.camid + 1) for r in records]


def _number_identities(splits: dict[str, list]) -> dict:
    """Identity names -> pids: their numbers when every name is an integer, else 1, 2, ... in sorted order."""
    names = sorted({str(pid) for rows in splits.values() for _, pid, _ in rows})
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(names, start=1)}


def _dataset(name: str, root: Path, splits: dict[str, list[tuple[str, object, int]]],
             one_based: bool = False) -> ReidDataset:
    """ReidDataset from rows (path, identity, camera >= 0 or _UNKNOWN) per split; `one_based`: cameras
    numbered from 1 in file names (c1 = camera id 0, as Market-1501's), unless some name has c0."""
    rows = [row for split_rows in splits.values() for row in split_rows]
    without = [path for path, _, cam in rows if cam == _UNKNOWN]
    if without and len(without) != len(rows):
        with_camera = next(path for path, _, cam in rows if cam != _UNKNOWN)
        raise DatasetFormatError(f"{name}: {without[0]} has no camera id but {with_camera} has one; give every "
                                 "picture a camera (c<N> in its name, or the camid column) or none")
    known = not without
    shift = 1 if one_based and known and min(cam for _, _, cam in rows) >= 1 else 0
    pids = _number_identities(splits)
    records = {}
    for split, split_rows in splits.items():
        # Unknown cameras: query 0, gallery 1 (different, so nothing is discarded), train 0.
        fallback = 1 if split == "gallery" else 0
        records[split] = [ImageRecord(path, pids[str(pid)], cam - shift if known else fallback)
                          for path, pid, cam in split_rows if pids[str(pid)] != JUNK_PID]
        if split != "train" and not records[split]:
            raise DatasetFormatError(f"{name}: the {split} split has no pictures besides junk (pid -1)")
    return ReidDataset(name, root, relabel(records.get("train", [])), tuple(records["query"]),
                       tuple(records["gallery"]), cameras_known=known)


def _check_root(name: str, root: str | os.PathLike) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{name}: data root {folder} does not exist or is not a folder")
    return folder


def load_folder(root: str | os.PathLike) -> ReidDataset:
    """The data set in the folder `root` (train/, query/, gallery/; see the module's docstring)."""
    name = "folder"
    folder = _check_root(name, root)
    splits = {}
    for split in _SPLITS:
        location = _split_folder(folder, split, required=split != "train")
        if location is not None:
            splits[split] = _read_split(f"{name} {split}", location, split)
    return _dataset(f"folder ({folder.name})", folder, splits, one_based=True)


def _read_csv(name: str, file: Path, root: Path) -> list[tuple[str, int, int]]:
    rows = []
    with open(file, newline="") as handle:
        for number, fields in enumerate(csv.reader(handle), start=1):
            if not fields or all(not f.strip() for f in fields):
                continue
            fields = [f.strip() for f in fields]
            if number == 1 and fields[:2] == ["path", "pid"]:
                continue
            where = f"{file}, line {number}"
            if len(fields) not in (2, 3):
                raise DatasetFormatError(f"{name}: {where}: expected path,pid,camid, got {len(fields)} fields: "
                                         f"{','.join(fields)!r}")
            path, pid_text, cam_text = fields[0], fields[1], fields[2] if len(fields) == 3 else ""
            try:
                pid = int(pid_text)
            except ValueError:
                raise DatasetFormatError(f"{name}: {where}: pid {pid_text!r} is not an integer") from None
            try:
                cam = int(cam_text) if cam_text else _UNKNOWN
            except ValueError:
                raise DatasetFormatError(f"{name}: {where}: camid {cam_text!r} is not an integer") from None
            if cam_text and cam < 0:
                raise DatasetFormatError(f"{name}: {where}: camid {cam} is negative")
            if pid < JUNK_PID:
                raise DatasetFormatError(f"{name}: {where}: pid {pid} is below -1 (-1 marks junk)")
            image = Path(path) if os.path.isabs(path) else root / path
            if not image.is_file():
                raise DatasetNotFoundError(f"{name}: {where}: image {image} does not exist")
            rows.append((str(image), pid, cam))
    if not rows:
        raise DatasetFormatError(f"{name}: {file} lists no images")
    return rows


def load_csv(root: str | os.PathLike) -> ReidDataset:
    """The data set listed in `root`/{train,query,gallery}.csv (see the module's docstring)."""
    name = "csv"
    folder = _check_root(name, root)
    splits = {}
    for split in _SPLITS:
        file = folder / f"{split}.csv"
        if not file.is_file():
            if split == "train":
                continue
            raise DatasetNotFoundError(f"{name}: missing list file {file}")
        splits[split] = _read_csv(name, file, folder)
    return _dataset(f"csv ({folder.name})", folder, splits)
