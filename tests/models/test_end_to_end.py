"""End to end: the built-in synthetic set, drawn to disk, read back by the Market-1501 loader, and a short
training run of RGA-Net (our kernels) through the same pipeline as `python -m models train`, which must
lift rank-1 and mAP well above the untrained network's, both measured in the same run."""

import json

import pytest

from models.data.synthetic import SyntheticConfig, make_synthetic_market
from models.engine.config import TrainConfig
from models.engine.pipeline import train

# Small enough for well under a minute on 2 CPU cores; 24 test identities, so that a chance
# rank-1 is around 1/24 and a lucky untrained network cannot pass.
SMALL_SET = SyntheticConfig(seed=1, num_train_ids=16, num_test_ids=24, num_cameras=3, max_cameras_per_id=3,
                            min_images_per_camera=2, max_images_per_camera=3, num_distractors=10, num_junk=4)
MARGIN = 15.0  # percentage points


@pytest.mark.slow
def test_training_on_the_synthetic_set_raises_rank1_and_map(tmp_path):
    folder = make_synthetic_market(tmp_path / "data", SMALL_SET)
    config = TrainConfig(dataset="market1501", data_root=str(folder), model="rganet-s", height=32, width=16,
                         scale=2, d_scale=2, backend="cpp", recipe="synthetic", epochs=8, warmup_epochs=1,
                         milestones=[6], num_identities=8, num_instances=4, eval_before=True, workers=0,
                         ranked_lists=2, device="cpu", output_dir=str(tmp_path / "runs"), run_name="e2e")
    summary = train(config, log=lambda _: None)

    before, after = summary["initial_metrics"]["feat"], summary["metrics"]["feat"]
    assert after["rank1"] >= before["rank1"] + MARGIN, (before, after)
    assert after["mAP"] >= before["mAP"] + MARGIN, (before, after)

    run = tmp_path / "runs"
    (folder_of_run,) = run.iterdir()
    records = [json.loads(line) for line in (folder_of_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    assert (folder_of_run / "checkpoints" / "best.pt").is_file()
