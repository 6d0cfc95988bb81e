"""End to end: the built-in synthetic set, drawn to disk and read back by the Market-1501 loader, and a
short training run through the same pipeline as `python -m models train` (data, sampler, transforms,
losses, recipe, evaluation before and after, run folder), which must lift rank-1 and mAP well above the
untrained network's, both measured in the same run.

The network is a small conv net ending in an RGA module computed by our kernels (the "cpp" backend):
RGA-Net itself, a ResNet-50 trained from scratch, needs minutes on this CPU to learn (see README.md,
`python -m models train`), too long for the test suite.
"""

import json

import pytest

import models.engine.pipeline as pipeline
from models.data.synthetic import SyntheticConfig, make_synthetic_market
from models.engine.config import TrainConfig
from models.engine.objectives import BNNeckObjective
from models.engine.zoo import BuiltModel
from tests.models.tiny_models import TinyBNNeckNet

# 30 test identities: a chance rank-1 is a few percent, far below what training must reach.
SMALL_SET = SyntheticConfig(seed=1, num_train_ids=32, num_test_ids=30, num_cameras=3, max_cameras_per_id=3,
                            min_images_per_camera=2, max_images_per_camera=3, num_distractors=10, num_junk=4,
                            height=64, width=32)
EPOCHS = 20
MARGIN = 12.0  # percentage points; the run below gains about 25 (rank-1) and 32 (mAP) here


def build_small_rga_net(config: TrainConfig, num_classes: int, with_pretrained: bool = True) -> BuiltModel:
    model = TinyBNNeckNet(num_classes, width=64, rga_input=(config.height, config.width), backend="cpp")
    objective = BNNeckObjective(config.label_smoothing, config.margin, triplet_weight=config.triplet_weight)
    return BuiltModel(model, objective, config.height, config.width)


@pytest.mark.slow
def test_training_on_the_synthetic_set_raises_rank1_and_map(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "build_for", build_small_rga_net)
    folder = make_synthetic_market(tmp_path / "data", SMALL_SET)
    config = TrainConfig(dataset="market1501", data_root=str(folder), recipe="synthetic", height=64, width=32,
                         epochs=EPOCHS,
                         warmup_epochs=1, milestones=[EPOCHS - 2], lr=3e-3, num_identities=8, num_instances=4,
                         crop="none", erase_p=0.0,
                         eval_before=True, workers=0, ranked_lists=2, device="cpu",
                         output_dir=str(tmp_path / "runs"), run_name="e2e")
    summary = pipeline.train(config, log=lambda _: None)

    before, after = summary["initial_metrics"]["feat"], summary["metrics"]["feat"]
    assert after["rank1"] >= before["rank1"] + MARGIN, (before, after)
    assert after["mAP"] >= before["mAP"] + MARGIN, (before, after)

    (run,) = (tmp_path / "runs").iterdir()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "train"] == list(range(1, EPOCHS + 1))
    assert {(r["epoch"], r["feature"]) for r in records if r["kind"] == "eval"} == {
        (epoch, feature) for epoch in (0, EPOCHS) for feature in ("feat_", "feat")}
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "curves.png").is_file()
    assert len(list((run / "ranked_lists").glob("*.png"))) == 4
