"""Data set loaders on tiny fake trees: layouts, parsing, junk and distractors, relabelling, errors."""

import io
from pathlib import Path

import pytest
from PIL import Image

from models.data.datasets import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_cuhk03_np,
    load_dataset,
    load_dukemtmc,
    load_market1501,
    load_msmt17,
)
from models.data.image_dataset import ImageDataset, UnreadableImageError


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def market_tree(base: Path) -> Path:
    touch(base / "bounding_box_train", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
          "0007_c3s3_012345_02.jpg", "0010_c6s4_002202_01.jpg", "Thumbs.db")
    touch(base / "query", "0003_c1s1_000151_00.jpg", "0004_c5s2_000151_00.jpg")
    touch(base / "bounding_box_test", "0003_c2s1_000176_01.jpg", "0004_c1s1_000300_02.jpg",
          "0000_c1s1_000000_01.jpg", "-1_c3s1_000000_02.jpg", "-1_c1s1_000001_01.jpg")
    return base


def test_market1501_parsing_relabelling_junk_and_distractors(tmp_path):
    market_tree(tmp_path / "Market-1501-v15.09.15")
    data = load_market1501(tmp_path)
    assert data.root == tmp_path / "Market-1501-v15.09.15"
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (0, 1), (1, 2), (2, 5)]
    assert data.num_train_pids == 3 and data.num_train_cams == 4
    assert [(r.pid, r.camid) for r in data.query] == [(3, 0), (4, 4)]
    # Junk (-1) dropped, the distractor (0) kept with its camera; names sorted.
    assert sorted((r.pid, r.camid) for r in data.gallery) == [(0, 0), (3, 1), (4, 0)]
    assert all(Path(r.path).is_file() for r in data.train + data.query + data.gallery)
    table = data.summary()
    assert "train" in table and "gallery" in table and "Market-1501" in table


@pytest.mark.parametrize("layout", ["", "market1501", "market1501/Market-1501-v15.09.15"])
def test_market1501_accepts_the_usual_folders(tmp_path, layout):
    market_tree(tmp_path / layout if layout else tmp_path)
    assert len(load_market1501(tmp_path).train) == 4


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_market1501(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match=r"bounding_box_train not found .*Market-1501-v15.09.15"):
        load_market1501(tmp_path)
    root = market_tree(tmp_path / "market1501")
    for path in (root / "query").iterdir():
        path.unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"missing folder .*market1501/query"):
        load_market1501(tmp_path)


def test_empty_split_and_bad_names_are_errors(tmp_path):
    root = market_tree(tmp_path)
    for path in (root / "query").iterdir():
        path.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"no images .* in .*query"):
        load_market1501(tmp_path)
    touch(root / "query", "0003_c1s1_000151_00.jpg", "person.jpg")
    with pytest.raises(DatasetFormatError, match="cannot parse pid and camera from .*person.jpg"):
        load_market1501(tmp_path)
    (root / "query" / "person.jpg").unlink()
    touch(root / "query", "0003_c7s1_000151_00.jpg")
    with pytest.raises(DatasetFormatError, match="camera 7 of .*0003_c7s1_000151_00.jpg is outside 1..6"):
        load_market1501(tmp_path)
    (root / "query" / "0003_c7s1_000151_00.jpg").unlink()
    touch(root / "bounding_box_train", "0000_c1s1_000151_00.jpg")
    with pytest.raises(DatasetFormatError, match="pid 0 of .* is outside 1..1501"):
        load_market1501(tmp_path)


def test_dukemtmc(tmp_path):
    base = tmp_path / "DukeMTMC-reID"
    touch(base / "bounding_box_train", "0001_c2_f0046182.jpg", "0001_c8_f0046300.jpg", "0005_c1_f0000001.jpg")
    touch(base / "query", "0007_c3_f0100000.jpg")
    touch(base / "bounding_box_test", "0007_c5_f0100100.jpg", "0100_c7_f0100100.jpg")
    data = load_dukemtmc(tmp_path)
    assert [(r.pid, r.camid) for r in data.train] == [(0, 1), (0, 7), (1, 0)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(7, 4), (100, 6)]
    touch(base / "query", "0008_c9_f0000001.jpg")
    with pytest.raises(DatasetFormatError, match="camera 9"):
        load_dukemtmc(tmp_path)


@pytest.mark.parametrize("subset", ["labeled", "detected"])
def test_cuhk03_np(tmp_path, subset):
    base = tmp_path / "cuhk03-np" / subset
    touch(base / "bounding_box_train", "0001_c1_1.png", "0001_c2_6.png", "0003_c1_2.png")
    touch(base / "query", "0005_c1_1.png")
    touch(base / "bounding_box_test", "0005_c2_7.png", "0006_c1_1.png")
    data = load_cuhk03_np(tmp_path, subset)
    assert data.name == f"CUHK03-NP-{subset}"
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (0, 1), (1, 0)]
    assert load_dataset(f"cuhk03np-{subset}", tmp_path).gallery == data.gallery
    other = "detected" if subset == "labeled" else "labeled"
    with pytest.raises(DatasetNotFoundError, match=f"CUHK03-NP \\({other}\\)"):
        load_cuhk03_np(tmp_path, other)


@pytest.mark.parametrize("version, train_dir, test_dir", [("MSMT17_V1", "train", "test"),
                                                          ("MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17(tmp_path, version, train_dir, test_dir):
    base = tmp_path / version
    lists = {
        "list_train.txt": (train_dir, ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                                       "0000/0000_001_14_0303morning_0016_0.jpg 0",
                                       "0001/0001_000_15_0303noon_0001_1.jpg 1"]),
        "list_val.txt": (train_dir, ["0002/0002_000_03_0303noon_0002_0.jpg 2"]),
        "list_query.txt": (test_dir, ["0000/0000_000_05_0303morning_0001_0.jpg 0"]),
        "list_gallery.txt": (test_dir, ["0000/0000_001_02_0303morning_0005_0.jpg 0",
                                        "0009/0009_001_02_0303morning_0005_0.jpg 9"]),
    }
    for list_name, (image_dir, lines) in lists.items():
        base.mkdir(parents=True, exist_ok=True)
        (base / list_name).write_text("\n".join(lines) + "\n")
        for line in lines:
            touch(base / image_dir / line.split()[0].split("/")[0], line.split()[0].split("/")[1])
    data = load_msmt17(tmp_path)
    assert [(r.pid, r.camid) for r in data.train] == [(0, 0), (0, 13), (1, 14)]
    assert [(r.pid, r.camid) for r in data.query] == [(0, 4)]
    assert [(r.pid, r.camid) for r in data.gallery] == [(0, 1), (9, 1)]
    assert data.train[0].path == str(base / train_dir / "0000" / "0000_000_01_0303morning_0015_0.jpg")
    assert len(load_msmt17(tmp_path, combine_train_val=True).train) == 4
    (base / test_dir / "0009" / "0009_001_02_0303morning_0005_0.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"1 images listed in .*list_gallery.txt are missing, e.g. .*0009_001"):
        load_msmt17(tmp_path)
    (base / "list_query.txt").write_text("0000/broken.jpg 0\n")
    with pytest.raises(DatasetFormatError, match=r"line 1 of .*list_query.txt"):
        load_msmt17(tmp_path)
    (base / "list_query.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing list file .*list_query.txt"):
        load_msmt17(tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown data set 'market'.*market1501"):
        load_dataset("market", ".")


def test_unreadable_images_are_reported_by_path(tmp_path):
    root = market_tree(tmp_path)
    good = io.BytesIO()
    Image.new("RGB", (64, 128), (200, 10, 10)).save(good, format="JPEG")
    train = load_market1501(tmp_path).train
    Path(train[0].path).write_bytes(good.getvalue())
    Path(train[1].path).write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    dataset = ImageDataset(train)
    image, pid, camid, index = dataset[0]
    assert image.size == (64, 128) and (pid, camid, index) == (0, 0, 0)
    with pytest.raises(UnreadableImageError, match=f"cannot read image {train[1].path}"):
        dataset[1]
    with pytest.raises(UnreadableImageError, match=f"cannot read image {train[2].path}"):
        dataset[2]  # an empty file
    (root / "bounding_box_train" / "0002_c1s1_000451_03.jpg").unlink()
    with pytest.raises(UnreadableImageError, match="0002_c1s1_000451_03.jpg"):
        dataset[0]
