"""Re-id data sets read from the official archives' layouts (docs/reid.md), never downloaded.

Each loader returns a `ReidDataset`: train / query / gallery lists of
`ImageRecord(path, pid, camid)` with 0-based camera ids. Train pids are
relabelled 0..P-1 in sorted order; query and gallery keep the original pids
(pid 0 = distractor stays in the gallery); pid -1 (junk) is dropped from every
split. A missing folder or list file raises `DatasetNotFoundError` naming it;
a name that does not parse, or a pid/camera out of range, raises
`DatasetFormatError` naming the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MARKET_NAME = re.compile(r"([-\d]+)_c(\d+)")
JUNK_PID = -1


class DatasetNotFoundError(FileNotFoundError):
    """A data set folder, split folder or list file is missing."""


class DatasetFormatError(ValueError):
    """A file name or list line does not follow the data set's convention."""


@dataclass(frozen=True)
class ImageRecord:
    path: str
    pid: int
    camid: int


@dataclass(frozen=True)
class ReidDataset:
    """One data set's three splits; `root` is the folder the images were found in."""

    name: str
    root: Path
    train: tuple[ImageRecord, ...]
    query: tuple[ImageRecord, ...]
    gallery: tuple[ImageRecord, ...]
    # False when the images carry no camera ids: query and gallery are then given different cameras,
    # so that no gallery image is discarded as a same-camera match.
    cameras_known: bool = True

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    def summary(self) -> str:
        """The split table: identities, images and cameras per split."""
        rows = [f"{self.name} ({self.root})", f"  {'split':<8}| {'ids':>6} | {'images':>7} | {'cameras':>7}",
                "  " + "-" * 36]
        for split, records in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            ids = len({r.pid for r in records})
            cams = len({r.camid for r in records})
            rows.append(f"  {split:<8}| {ids:>6} | {len(records):>7} | "
                        f"{cams if self.cameras_known else '-':>7}")
        if not self.cameras_known:
            rows.append("  no camera ids: query and gallery are taken as different cameras (no gallery image is "
                        "discarded as a same-camera match)")
        return "\n".join(rows)


def relabel(records: Sequence[ImageRecord]) -> tuple[ImageRecord, ...]:
    """Map pids to 0..P-1 in sorted order (training labels)."""
    label = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return tuple(ImageRecord(r.path, label[r.pid], r.camid) for r in records)


def _find_root(name: str, root: str | os.PathLike, candidates: Sequence[str], marker: str) -> Path:
    """The first of `root/<candidate>` that contains `marker`; a clear error listing what was tried."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"{name}: data root {base} does not exist or is not a folder")
    tried = [base / c if c else base for c in candidates]
    for folder in tried:
        if (folder / marker).exists():
            return folder
    places = ", ".join(str(t) for t in tried)
    raise DatasetNotFoundError(f"{name}: {marker} not found in any of: {places}")


def _require_dir(name: str, folder: Path) -> Path:
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{name}: missing folder {folder}")
    return folder


def parse_market_folder(
    name: str, folder: Path, num_cameras: int, max_pid: int, keep_distractors: bool
) -> list[ImageRecord]:
    """Images named `{pid}_c{cam}...` in `folder`: junk (-1) dropped, cameras 1..num_cameras -> 0..num_cameras-1.

    Distractors (pid 0) are kept only if `keep_distractors`, else they are a format error.
    """
    _require_dir(name, folder)
    records = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        match = _MARKET_NAME.match(entry.name)
        if match is None:
            raise DatasetFormatError(f"{name}: cannot parse pid and camera from {entry.path} "
                                     "(expected names like 0002_c1s1_000451_03.jpg)")
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == JUNK_PID:
            continue
        lowest = 0 if keep_distractors else 1
        if not lowest <= pid <= max_pid:
            raise DatasetFormatError(f"{name}: pid {pid} of {entry.path} is outside {lowest}..{max_pid}")
        if not 1 <= cam <= num_cameras:
            raise DatasetFormatError(f"{name}: camera {cam} of {entry.path} is outside 1..{num_cameras}")
        records.append(ImageRecord(entry.path, pid, cam - 1))
    if not records:
        raise DatasetNotFoundError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return records


def _market_style(name: str, folder: Path, num_cameras: int, max_pid: int) -> ReidDataset:
    train = parse_market_folder(name, folder / "bounding_box_train", num_cameras, max_pid, keep_distractors=False)
    query = parse_market_folder(name, folder / "query", num_cameras, max_pid, keep_distractors=False)
    gallery = parse_market_folder(name, folder / "bounding_box_test", num_cameras, max_pid, keep_distractors=True)
    return ReidDataset(name, folder, relabel(train), tuple(query), tuple(gallery))


def load_market1501(root: str | os.PathLike) -> ReidDataset:
    """Market-1501: `root` itself, or `root/Market-1501-v15.09.15`, `root/market1501[/Market-1501-v15.09.15]`."""
    folder = _find_root("Market-1501", root, ["", "Market-1501-v15.09.15", "market1501",
                                              "market1501/Market-1501-v15.09.15"], "bounding_box_train")
    return _market_style("Market-1501", folder, num_cameras=6, max_pid=1501)


def load_dukemtmc(root: str | os.PathLike) -> ReidDataset:
    """DukeMTMC-reID: `root` itself, `root/DukeMTMC-reID` or `root/dukemtmc-reid/DukeMTMC-reID`."""
    folder = _find_root("DukeMTMC-reID", root, ["", "DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID",
                                                "dukemtmcreid/DukeMTMC-reID"], "bounding_box_train")
    return _market_style("DukeMTMC-reID", folder, num_cameras=8, max_pid=9999)


def load_cuhk03_np(root: str | os.PathLike, subset: str = "labeled") -> ReidDataset:
    """CUHK03-NP (767/700 protocol), extracted: `root[/cuhk03-np]/{labeled,detected}/<three folders>`."""
    if subset not in ("labeled", "detected"):
        raise ValueError(f"CUHK03-NP: subset must be 'labeled' or 'detected', got {subset!r}")
    folder = _find_root(f"CUHK03-NP ({subset})", root, [subset, f"cuhk03-np/{subset}", f"cuhk03/cuhk03-np/{subset}"],
                        "bounding_box_train")
    return _market_style(f"CUHK03-NP-{subset}", folder, num_cameras=2, max_pid=9999)


def _msmt_list(name: str, list_file: Path, image_dir: Path) -> list[ImageRecord]:
    if not list_file.is_file():
        raise DatasetNotFoundError(f"{name}: missing list file {list_file}")
    records, missing = [], []
    with open(list_file) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                relpath, pid = fields[0], int(fields[1])
                camid = int(os.path.basename(relpath).split("_")[2]) - 1
            except (IndexError, ValueError):
                raise DatasetFormatError(f"{name}: cannot parse line {number} of {list_file}: {line.strip()!r} "
                                         "(expected '<pid folder>/<pid>_<index>_<camera>_... <pid>')") from None
            if not 0 <= camid < 15:
                raise DatasetFormatError(f"{name}: camera {camid + 1} on line {number} of {list_file} is outside 1..15")
            path = image_dir / relpath
            if not path.is_file():
                missing.append(str(path))
            records.append(ImageRecord(str(path), pid, camid))
    if missing:
        raise DatasetNotFoundError(f"{name}: {len(missing)} images listed in {list_file} are missing, "
                                   f"e.g. {missing[0]}")
    if not records:
        raise DatasetFormatError(f"{name}: list file {list_file} is empty")
    return records


def load_msmt17(root: str | os.PathLike, combine_train_val: bool = False) -> ReidDataset:
    """MSMT17 V1 or V2 from its list files; training uses list_train.txt (+ list_val.txt if asked)."""
    name = "MSMT17"
    folder = _find_root(name, root, ["MSMT17_V1", "MSMT17_V2", "msmt17/MSMT17_V1", "msmt17/MSMT17_V2", ""],
                        "list_train.txt")
    # V1 keeps images in train/ and test/, V2 in mask_train_v2/ and mask_test_v2/.
    train_dir = folder / "train" if (folder / "train").is_dir() else folder / "mask_train_v2"
    test_dir = folder / "test" if (folder / "test").is_dir() else folder / "mask_test_v2"
    for image_dir in (train_dir, test_dir):
        _require_dir(name, image_dir)
    train = _msmt_list(name, folder / "list_train.txt", train_dir)
    if combine_train_val:
        train += _msmt_list(name, folder / "list_val.txt", train_dir)
    query = _msmt_list(name, folder / "list_query.txt", test_dir)
    gallery = _msmt_list(name, folder / "list_gallery.txt", test_dir)
    return ReidDataset(name, folder, relabel(train), tuple(query), tuple(gallery))


def _load_folder(root: str | os.PathLike) -> ReidDataset:
    from .custom import load_folder

    return load_folder(root)


def _load_csv(root: str | os.PathLike) -> ReidDataset:
    from .custom import load_csv

    return load_csv(root)


DATASETS: dict[str, Callable[[str | os.PathLike], ReidDataset]] = {
    "market1501": load_market1501,
    "dukemtmcreid": load_dukemtmc,
    "cuhk03np-labeled": lambda root: load_cuhk03_np(root, "labeled"),
    "cuhk03np-detected": lambda root: load_cuhk03_np(root, "detected"),
    "msmt17": load_msmt17,
    "folder": _load_folder,
    "csv": _load_csv,
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def register_dataset(name: str, builder: Callable[[str | os.PathLike], ReidDataset], *,
                     replace: bool = False) -> None:
    """Make `builder(root) -> ReidDataset` loadable as data set `name` (by load_dataset, `--dataset name`,
    the training pipeline). `name`: lower case letters, digits, '_', '.', '-'. An existing name is
    replaced only with `replace=True`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"register_dataset: name must be lower case letters, digits, '_', '.' or '-', got {name!r}")
    if name == "synthetic":
        raise ValueError("register_dataset: 'synthetic' is the built-in synthetic set and cannot be replaced")
    if not callable(builder):
        raise TypeError(f"register_dataset: builder must be callable as builder(root), got {type(builder).__name__}")
    if name in DATASETS and not replace:
        raise ValueError(f"register_dataset: data set {name!r} exists; pass replace=True to replace it")
    DATASETS[name] = builder


def load_dataset(name: str, root: str | os.PathLike) -> ReidDataset:
    """Load data set `name` (one of DATASETS, or registered with register_dataset) from `root`."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    dataset = DATASETS[name](root)
    if not isinstance(dataset, ReidDataset):
        raise TypeError(f"data set {name!r}: its builder returned {type(dataset).__name__}, not a ReidDataset")
    return dataset
