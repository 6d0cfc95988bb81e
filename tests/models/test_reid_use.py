"""What a re-id user does first: an ImageNet start from the CLI, custom data sets, other projects'
checkpoints, features of pictures, search. Real outputs are checked: features equal the
evaluator's, ranked lists equal the evaluation's order, errors name the file and line."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models import _extra
from models.cli import build_parser, main
from models.data.datasets import (
    DATASETS,
    DatasetFormatError,
    load_dataset,
    register_dataset,
)
from models.data.transforms import eval_transform
from models.engine.config import TrainConfig
from models.engine.distributed import init_distributed
from models.engine.evaluator import extract_features, make_eval_loader
from models.engine.objectives import BNNeckObjective
from models.engine.pipeline import evaluate_checkpoint, scratch_warning
from models.evaluation import pairwise_distance
from models.inference import CheckpointError, FeatureExtractor, load_model
from models.inference.search import top_matches
from models.networks.hacnn import HACNN
from models.networks.rganet import RGANet

H, W = 64, 32


def _picture(path, seed):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (48, 24, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def rga_net():
    torch.manual_seed(0)
    model = RGANet(5, "rgas", H, W, scale=2, d_scale=2, backend="cpp")
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


# ---- --pretrained and the reid extra -------------------------------------------------------------


def test_pretrained_reaches_the_config_and_the_trunk(tmp_path):
    args = build_parser().parse_args(["train", "--pretrained", "resnet50.pth", "--recipe", "rga"])
    assert args.pretrained == "resnet50.pth"
    from torchvision.models import resnet50

    path = tmp_path / "resnet50.pth"
    torch.manual_seed(1)
    state = resnet50().state_dict()
    torch.save(state, path)
    from models.engine.zoo import build_model

    built = build_model("rganet-s", 3, H, W, "torch", scale=2, d_scale=2, pretrained=str(path))
    assert built.model.imagenet_report.ok
    torch.testing.assert_close(built.model.backbone.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    with pytest.raises(ValueError, match="hacnn is trained from scratch"):
        build_model("hacnn", 3, pretrained=str(path))


def test_real_data_rga_runs_warn_without_imagenet_weights():
    rga = TrainConfig(dataset="market1501", recipe="rga").resolved()
    assert "starts from random weights" in scratch_warning(rga)
    assert "--pretrained PATH" in scratch_warning(rga)
    assert scratch_warning(rga, resuming=True) is None
    assert scratch_warning(TrainConfig(dataset="market1501", recipe="rga", pretrained="r50.pth").resolved()) is None
    assert scratch_warning(TrainConfig().resolved()) is None  # the synthetic one-command run
    assert scratch_warning(TrainConfig(dataset="market1501", recipe="hacnn").resolved()) is None


def test_a_missing_reid_extra_is_named_in_one_line(monkeypatch):
    real = _extra.importlib.util.find_spec
    monkeypatch.setattr(_extra.importlib.util, "find_spec", lambda name: None if name == "PIL" else real(name))
    missing = _extra.missing_reid_packages()
    assert missing == ["pillow"]
    message = _extra.reid_extra_message(missing)
    assert "\n" not in message and 'pip install -e ".[reid]"' in message and "pillow" in message


# ---- custom data sets ----------------------------------------------------------------------------


def test_identity_folders_without_cameras(tmp_path):
    for split, names in (("train", ["ann", "bob", "cy"]), ("query", ["ann", "dee"]), ("gallery", ["ann", "dee", "eve"])):
        for k, name in enumerate(names):
            for j in range(2):
                _picture(tmp_path / split / name / f"{j}.jpg", k * 10 + j)
    data = load_dataset("folder", tmp_path)
    assert (len(data.train), len(data.query), len(data.gallery)) == (6, 4, 6)
    assert data.num_train_pids == 3 and not data.cameras_known
    # One identity number per name across splits; query and gallery on different cameras.
    assert {r.pid for r in data.query} <= {r.pid for r in data.gallery}
    assert {r.camid for r in data.query} == {0} and {r.camid for r in data.gallery} == {1}
    assert "taken as different cameras" in data.summary()


def test_identity_folders_with_cameras_and_market_names(tmp_path):
    _picture(tmp_path / "query" / "7" / "img_c2_01.jpg", 0)
    _picture(tmp_path / "gallery" / "7" / "cam1-03.png", 1)
    _picture(tmp_path / "gallery" / "7" / "x_c2_04.jpg", 2)
    data = load_dataset("folder", tmp_path)
    assert data.cameras_known and not data.train
    assert [(r.pid, r.camid) for r in data.query] == [(7, 1)]
    assert sorted((r.pid, r.camid) for r in data.gallery) == [(7, 0), (7, 1)]
    market = tmp_path / "m"
    _picture(market / "query" / "0003_c1s1_000001_00.jpg", 0)
    _picture(market / "bounding_box_test" / "0003_c2s1_000002_00.jpg", 1)
    _picture(market / "bounding_box_test" / "0000_c1s1_000003_00.jpg", 2)
    _picture(market / "bounding_box_test" / "-1_c1s1_000004_00.jpg", 3)
    data = load_dataset("folder", market)
    assert sorted(r.pid for r in data.gallery) == [0, 3]


def test_mixed_cameras_are_refused(tmp_path):
    _picture(tmp_path / "query" / "a" / "img_c1.jpg", 0)
    _picture(tmp_path / "gallery" / "a" / "img.jpg", 1)
    with pytest.raises(DatasetFormatError, match="img.jpg has no camera id"):
        load_dataset("folder", tmp_path)


def _csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_csv_lists(tmp_path):
    for k in range(6):
        _picture(tmp_path / "img" / f"{k}.jpg", k)
    _csv(tmp_path / "train.csv", [["path", "pid", "camid"], ["img/0.jpg", 4, 0], ["img/1.jpg", 9, 1]])
    _csv(tmp_path / "query.csv", [["img/2.jpg", 4, 0], ["img/5.jpg", -1, 0]])
    _csv(tmp_path / "gallery.csv", [[str(tmp_path / "img" / "3.jpg"), 4, 1], ["img/4.jpg", 0, 0]])
    data = load_dataset("csv", tmp_path)
    assert [r.pid for r in data.train] == [0, 1]  # relabelled
    assert [(r.pid, r.camid) for r in data.query] == [(4, 0)]  # the junk row is dropped
    assert [(r.pid, r.camid) for r in data.gallery] == [(4, 1), (0, 0)]


@pytest.mark.parametrize("row, message", [
    (["img/0.jpg", "x", "0"], r"query.csv, line 2: pid 'x' is not an integer"),
    (["img/0.jpg", "1", "c"], r"query.csv, line 2: camid 'c' is not an integer"),
    (["img/0.jpg"], r"query.csv, line 2: expected path,pid,camid, got 1 fields"),
    (["img/nope.jpg", "1", "0"], r"query.csv, line 2: image .*nope.jpg does not exist"),
])
def test_bad_csv_rows_name_the_file_and_line(tmp_path, row, message):
    _picture(tmp_path / "img" / "0.jpg", 0)
    _csv(tmp_path / "query.csv", [["img/0.jpg", 1, 0], row])
    _csv(tmp_path / "gallery.csv", [["img/0.jpg", 1, 1]])
    with pytest.raises((DatasetFormatError, FileNotFoundError), match=message):
        load_dataset("csv", tmp_path)


def test_register_dataset(tmp_path, small_set):
    register_dataset("my-set", lambda root: small_set)
    try:
        assert load_dataset("my-set", tmp_path) is small_set
        assert "my-set" in build_parser().parse_args(["train", "--dataset", "my-set"]).dataset
        with pytest.raises(ValueError, match="exists; pass replace=True"):
            register_dataset("my-set", lambda root: small_set)
        with pytest.raises(ValueError, match="lower case"):
            register_dataset("My Set", lambda root: small_set)
    finally:
        DATASETS.pop("my-set")


# ---- other projects' checkpoints -------------------------------------------------------------------


def test_official_rga_and_torchreid_checkpoints_load_unchanged(tmp_path, rga_net):
    official = tmp_path / "checkpoint_ep120.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rga_net.state_dict().items()}, "epoch": 120,
                "best_rank1": 0.9}, official)
    loaded = load_model(official, height=H, width=W)
    assert (loaded.name, loaded.source, loaded.num_classes, loaded.epoch) == ("rganet-s", "rga-official", 5, 120)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), rga_net(x))
    with pytest.raises(CheckpointError, match="does not fit rganet-s at 256x128"):
        load_model(official)
    with pytest.raises(CheckpointError, match="holds a rganet-s state_dict, not hacnn"):
        load_model(official, model="hacnn")

    torch.manual_seed(2)
    hacnn = HACNN(4).eval()
    torchreid = tmp_path / "model.pth.tar-60"
    torch.save({"state_dict": hacnn.state_dict(), "epoch": 60, "rank1": 0.5, "optimizer": {}}, torchreid)
    loaded = load_model(torchreid)
    assert (loaded.name, loaded.source, loaded.num_classes, loaded.height, loaded.width) == \
        ("hacnn", "torchreid", 4, 160, 64)
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), hacnn(x))


def test_pickled_objects_need_trust(tmp_path, rga_net):
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": rga_net.state_dict(), "best_rank1": np.float64(0.9)}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(path, height=H, width=W)
    assert load_model(path, height=H, width=W, trust=True).name == "rganet-s"


# ---- features and search ----------------------------------------------------------------------------


def test_features_equal_the_evaluators(small_set, rga_net):
    records = small_set.query[:7]
    ctx = init_distributed("cpu")
    loader = make_eval_loader(records, eval_transform(H, W), ctx, 4, 0)
    expected = extract_features(rga_net, BNNeckObjective(), loader, ctx, flip=True)["feat"]
    extractor = models.FeatureExtractor(rga_net, device="cpu", batch_size=3)
    got = extractor([r.path for r in records])
    assert got.shape == (7, 2048) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # PIL images, numpy arrays and a folder give the same rows.
    pil = [Image.open(r.path).convert("RGB") for r in records[:2]]
    torch.testing.assert_close(extractor(pil), got[:2])
    torch.testing.assert_close(extractor([np.asarray(p) for p in pil]), got[:2])
    with pytest.raises(ValueError, match="uint8 or float"):
        extractor(torch.zeros(3, 8, 8, dtype=torch.int32))


def _checkpoint(tmp_path, model, dataset="market1501", data_root="data"):
    config = TrainConfig(dataset=dataset, data_root=data_root, model="rganet-s", height=H, width=W, scale=2,
                         d_scale=2, recipe="synthetic")
    path = tmp_path / "best.pt"
    torch.save({"state_dict": model.state_dict(), "num_classes": 5, "config": config.to_dict(), "epoch": 3}, path)
    return path


def test_search_ranks_as_the_evaluation_does(tmp_path, small_set, rga_net):
    query = torch.randn(13, 32)
    gallery = torch.randn(50, 32)
    gallery[7] = gallery[3]  # a tie: the lower gallery index first
    for metric in ("cosine", "euclidean"):
        indices, distances = top_matches(query, gallery, 10, metric, chunk_rows=4)
        full = pairwise_distance(query, gallery, metric)
        expected = torch.sort(full, dim=1, stable=True).indices[:, :10]
        assert torch.equal(indices, expected)
        torch.testing.assert_close(distances, full.gather(1, expected))

    checkpoint = _checkpoint(tmp_path, rga_net)
    query_dir, gallery_dir = tmp_path / "q", tmp_path / "g"
    query_dir.mkdir()
    gallery_dir.mkdir()
    for i, record in enumerate(small_set.query[:3]):
        Image.open(record.path).save(query_dir / f"{i}.jpg")
    for i, record in enumerate(small_set.gallery[:12]):
        Image.open(record.path).save(gallery_dir / f"{i:02d}.jpg")
    out = tmp_path / "ranked"
    assert main(["search", str(checkpoint), "--query", str(query_dir), "--gallery", str(gallery_dir), "--topk", "5",
                 "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "ranked.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15 and len(list(out.glob("*.png"))) == 3
    extractor = FeatureExtractor(str(checkpoint), device="cpu")
    qf = extractor(str(query_dir))
    gf = extractor(str(gallery_dir))
    order = torch.sort(pairwise_distance(qf, gf), dim=1, stable=True).indices[:, :5]
    gallery_files = sorted(gallery_dir.glob("*.jpg"))
    assert [r["gallery"] for r in rows[:5]] == [str(gallery_files[j]) for j in order[0].tolist()]


def test_extract_cli_writes_features_and_paths(tmp_path, small_set, rga_net):
    checkpoint = _checkpoint(tmp_path, rga_net)
    paths = [r.path for r in small_set.gallery[:5]]
    out = tmp_path / "feats.npy"
    assert main(["extract", str(checkpoint), *paths, "--out", str(out), "--device", "cpu", "--no-flip"]) == 0
    features = np.load(out)
    assert features.shape == (5, 2048)
    assert (tmp_path / "feats.txt").read_text().splitlines() == paths
    expected = FeatureExtractor(rga_net, device="cpu", flip=False)(paths)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_eval_takes_an_official_checkpoint_and_saves_features(tmp_path, small_set, rga_net):
    official = tmp_path / "checkpoint_ep1.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rga_net.state_dict().items()}}, official)
    with pytest.raises(ValueError, match="name the data set"):
        evaluate_checkpoint(str(official), height=H, width=W, log=lambda _: None)
    register_dataset("small", lambda root: small_set)
    try:
        feats = tmp_path / "f.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics = evaluate_checkpoint(str(official), "small", str(tmp_path), "cpu", workers=0, height=H, width=W,
                                          log=lambda _: None, save_features=str(feats), ranked_lists=2,
                                          ranked_lists_dir=str(tmp_path / "lists"), protocol="cuhk03")
    finally:
        DATASETS.pop("small")
    assert set(metrics) == {"feat_", "feat"} and 0 <= metrics["feat"]["mAP"] <= 100
    saved = np.load(feats)
    assert saved["query_features"].shape == (len(small_set.query), 2048)
    assert list(saved["gallery_pids"]) == [r.pid for r in small_set.gallery]
    assert len(list((tmp_path / "lists").glob("*.png"))) == 2


def test_new_commands_have_help(capsys):
    for command in ("extract", "search", "eval"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--height" in capsys.readouterr().out


# ---- attention maps ----------------------------------------------------------------------------------


def test_rga_attention_maps_are_the_gates_the_forward_applies(rga_net):
    x = torch.randn(2, 3, H, W)
    maps = rga_net.attention_maps(x)
    assert list(maps) == ["rga_att1", "rga_att2", "rga_att3", "rga_att4"]
    sizes = [(H // 4, W // 4), (H // 8, W // 8), (H // 16, W // 16), (H // 16, W // 16)]
    for (stage, gates), size in zip(maps.items(), sizes):
        assert set(gates) == {"spatial"}, stage  # rganet-s: RGA-S only
        assert gates["spatial"].shape == (2, 1, *size)
        assert 0 < gates["spatial"].min() and gates["spatial"].max() < 1
    # The gate is what the module multiplies its input by.
    module = rga_net.backbone.rga_att2
    features = torch.randn(2, 512, H // 8, W // 8)
    gates = module.attention(features)
    torch.testing.assert_close(gates["output"], module(features))
    torch.testing.assert_close(gates["spatial"] * features, module(features))
    both = RGANet(3, "rgasc", H, W, scale=2, d_scale=2).eval()
    channel = both.attention_maps(x)["rga_att3"]["channel"]
    assert channel.shape == (2, 1024) and 0 < channel.min() and channel.max() < 1


def test_hacnn_attention_maps():
    torch.manual_seed(0)
    model = HACNN(3).train()
    maps = model.attention_maps(torch.randn(2, 3, 160, 64))
    assert model.training  # restored
    for (stage, entries), size in zip(maps.items(), [(40, 16), (20, 8), (10, 4)]):
        assert entries["soft"].shape == entries["spatial"].shape == (2, 1, *size), stage
        assert 0 < entries["soft"].min() and entries["soft"].max() < 1
        assert entries["regions"].shape == (2, 4, 2)


def test_visualize_cli(tmp_path, small_set, rga_net):
    checkpoint = _checkpoint(tmp_path, rga_net)
    paths = [r.path for r in small_set.query[:3]]
    out = tmp_path / "maps"
    assert main(["visualize", str(checkpoint), *paths, "--out", str(out)]) == 0
    figures = sorted(out.glob("*_attention.png"))
    assert len(figures) == 3
    with Image.open(figures[0]) as figure:
        assert figure.width > 4 * W  # the picture and four stages
    saved = torch.load(out / "attention.pt", weights_only=False)
    assert [s["path"] for s in saved] == paths
    assert saved[0]["rga_att1"]["spatial"].shape == (1, H // 4, W // 4)


# ---- TensorBoard -------------------------------------------------------------------------------------


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from models.engine.run_folder import RunFolder

    run = RunFolder(tmp_path / "run", tensorboard=True)
    run.log({"kind": "train", "epoch": 1, "loss": 2.5, "lr": 1e-3, "images_per_s": 80.0})
    run.log({"kind": "eval", "epoch": 1, "feature": "feat", "rank1": 40.0, "mAP": 20.0, "mINP": 5.0})
    run.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/images_per_s", "eval/feat/rank1", "eval/feat/mAP",
            "eval/feat/mINP"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("eval/feat/mAP")] == [(1, 20.0)]
    assert build_parser().parse_args(["train", "--tensorboard"]).tensorboard


def test_hacnn_trains_through_its_objective():
    """The real HACNN (loss="triplet" nests its outputs), one optimiser step with the zoo's objective."""
    from models.engine.zoo import build_model

    torch.manual_seed(0)
    built = build_model("hacnn", 4, backend="torch")
    built.model.train()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    terms = built.objective.losses(built.model(torch.randn(8, 3, 160, 64)), labels)
    assert set(terms) == {"ce", "triplet"} and all(torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert built.model.classifier_global.weight.grad is not None


def test_official_rga_c_checkpoint_loads(tmp_path):
    torch.manual_seed(3)
    model = RGANet(5, "rgac", H, W, scale=4, d_scale=2).eval()
    path = tmp_path / "checkpoint_ep1.pth.tar"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model(path, height=H, width=W)
    assert loaded.name == "rganet-c"
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))


def test_a_torchvision_named_file_must_match_its_hash(tmp_path):
    from torchvision.models import resnet50

    from models.networks.resnet import ResNet50, check_hash_in_name

    state = resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    import hashlib

    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    good = tmp_path / f"resnet50-{prefix}.pth"
    path.rename(good)
    check_hash_in_name(str(good))
    assert ResNet50().load_imagenet(good).ok
    bad = tmp_path / "resnet50-0676ba61.pth"
    good.rename(bad)
    with pytest.raises(ValueError, match="incomplete or not the published one"):
        ResNet50().load_imagenet(bad)
