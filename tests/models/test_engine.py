"""Training engine: schedules, checkpoints (atomic, weights_only), exact resume, run folder, evaluation."""

import json

import pytest
import torch

import models.engine.checkpoint as checkpoint_module
from models.engine.checkpoint import load_checkpoint, save_checkpoint, strip_module_prefix
from models.engine.config import RECIPES, TrainConfig
from models.engine.distributed import init_distributed
from models.engine.evaluator import extract_features, make_eval_loader
from models.engine.run_folder import RunFolder
from models.engine.schedule import WarmupStepFactor, make_optimizer, make_scheduler
from models.engine.trainer import Trainer, resolve_amp
from models.data.transforms import eval_transform
from models.engine.objectives import BNNeckObjective, HACNNObjective
from tests.models.tiny_models import TinyBNNeckNet, TinyHACNNLike


def tiny_config(**overrides) -> TrainConfig:
    values = dict(dataset="market1501", height=64, width=32, epochs=3, num_identities=4, num_instances=2,
                  warmup_epochs=1, milestones=[2], workers=0, eval_before=False, ranked_lists=2, device="cpu")
    values.update(overrides)
    return TrainConfig(**values).resolved()


def make_trainer(data, config, run=None, model=None, objective=None):
    torch.manual_seed(config.seed)
    model = model or TinyBNNeckNet(data.num_train_pids)
    return Trainer(config, model, objective or BNNeckObjective(), data, init_distributed("cpu"), run,
                   log=lambda _: None)


def test_rga_recipe_schedule():
    recipe = RECIPES["rga"]
    factor = WarmupStepFactor(recipe["warmup_epochs"], recipe["warmup_factor"], recipe["milestones"], recipe["gamma"])
    lr = [recipe["lr"] * factor(e) for e in range(600)]
    assert lr[0] == pytest.approx(8e-6) and lr[10] == pytest.approx((8e-6 + 8e-4) / 2)
    assert lr[20] == lr[79] == pytest.approx(8e-4)
    assert lr[80] == lr[119] == pytest.approx(4e-4) and lr[120] == pytest.approx(2e-4)
    assert lr[360] == lr[599] == pytest.approx(8e-4 / 2**8)
    parameters = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = make_optimizer(parameters, "adam", 8e-4, 5e-4)
    scheduler = make_scheduler(optimizer, 20, 0.01, [80], 0.5)
    seen = []
    for _ in range(82):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(lr[:82])


def test_hacnn_recipe_and_frozen_parameters():
    recipe = RECIPES["hacnn"]
    factor = WarmupStepFactor(recipe["warmup_epochs"], recipe["warmup_factor"], recipe["milestones"], recipe["gamma"])
    assert [recipe["lr"] * factor(e) for e in (0, 149, 150, 225)] == pytest.approx([0.03, 0.03, 0.003, 0.0003])
    model = TinyBNNeckNet(5)
    optimizer = make_optimizer(model.parameters(), "sgd", 0.03, 5e-4)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0.9
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.feat_bn.bias) not in trained and id(model.feat_bn.weight) in trained
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):
        make_optimizer(model.parameters(), "lamb", 0.1, 0.0)


def test_amp_modes():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("half", cpu)


def test_checkpoint_round_trip_with_weights_only(small_set, tmp_path):
    trainer = make_trainer(small_set, tiny_config(epochs=1))
    trainer.fit()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, trainer.state())
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 1 and raw["config"]["epochs"] == 1 and raw["num_classes"] == 16
    assert set(raw["metrics"]) == {"feat_", "feat"} and isinstance(raw["metrics"]["feat"]["mAP"], float)
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    fresh = make_trainer(small_set, tiny_config(epochs=1))
    fresh.load_state(load_checkpoint(path))
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, fresh.model.state_dict()[key]), key
    assert fresh.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()
    assert fresh.scheduler.state_dict()["last_epoch"] == 1 and fresh.epoch == 1
    assert TrainConfig.from_dict(raw["config"]) == trainer.config


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.ones(3)}, "epoch": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"state_dict": {"w": torch.zeros(3)}, "epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_load_checkpoint_errors_and_prefixes(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")
    assert strip_module_prefix({"module.a.b": 1, "c": 2}) == {"a.b": 1, "c": 2}


class StopAt:
    """An objective that interrupts training at a given step, like a killed run."""

    def __init__(self, objective, step):
        self.objective, self.step, self.calls = objective, step, 0
        self.feature_names = objective.feature_names

    def losses(self, outputs, labels):
        self.calls += 1
        if self.calls == self.step:
            raise KeyboardInterrupt
        return self.objective.losses(outputs, labels)

    def features(self, outputs):
        return self.objective.features(outputs)


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_continues_exactly_where_the_run_stopped(small_set, tmp_path, workers):
    config = tiny_config(epochs=3, workers=workers, eval_every=1)
    straight = make_trainer(small_set, config)
    straight.fit()
    # Killed in the middle of epoch 3 (4 steps per epoch): the checkpoint of epoch 2 is the last one.
    run = RunFolder(tmp_path / "run")
    interrupted = make_trainer(small_set, config, run, objective=StopAt(BNNeckObjective(), 10))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    assert load_checkpoint(run.checkpoints / "last.pt")["epoch"] == 2
    run.log({"kind": "train", "epoch": 3, "loss": 1.0})  # logged just before the kill
    resumed = make_trainer(small_set, config, run)
    resumed.load_state(load_checkpoint(run.checkpoints / "last.pt"))
    assert max(r["epoch"] for r in run.records()) == 2
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.last_metrics == straight.last_metrics
    assert [r["epoch"] for r in run.records() if r["kind"] == "train"] == [1, 2, 3]


def test_run_folder_contents(small_set, tmp_path):
    run = RunFolder.create(tmp_path, "tiny")
    run.write_config(tiny_config().to_dict())
    trainer = make_trainer(small_set, tiny_config(epochs=2, save_every=1, eval_every=1, eval_before=True), run)
    summary = trainer.fit()
    assert summary["epoch"] == 2 and summary["images_per_s"] > 0
    assert trainer.initial_metrics.keys() == {"feat_", "feat"}
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["best.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    best = load_checkpoint(run.checkpoints / "best.pt")
    assert best["best"]["epoch"] == best["epoch"] and best["best"]["score"] == max(
        r["mAP"] for r in run.records() if r["kind"] == "eval" and r["feature"] == "feat" and r["epoch"] > 0)
    records = run.records()
    assert [(r["kind"], r["epoch"]) for r in records if r.get("feature") != "feat_"] == [
        ("eval", 0), ("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    train = next(r for r in records if r["kind"] == "train")
    assert {"loss", "ce", "triplet", "lr", "images_per_s", "seconds"} <= train.keys()
    assert json.loads((run.path / "config.json").read_text())["epochs"] == 3
    assert (run.path / "curves.png").stat().st_size > 0
    assert len(list(run.ranked_lists.glob("epoch0002_query*.png"))) == 2
    assert RunFolder.create(tmp_path, "tiny").path != run.path


def test_flip_averaged_features(small_set):
    ctx = init_distributed("cpu")
    model = TinyBNNeckNet(16).eval()
    objective = BNNeckObjective()
    loader = make_eval_loader(small_set.query, eval_transform(64, 32), ctx, batch_size=5, workers=0)
    plain = extract_features(model, objective, loader, ctx)
    flipped = extract_features(model, objective, loader, ctx, flip=True)
    images = torch.stack([loader.dataset[i][0] for i in range(len(loader.dataset))])
    with torch.no_grad():
        expected = (model(images)[1] + model(images.flip(3))[1]) / 2
    torch.testing.assert_close(flipped["feat"], expected)
    torch.testing.assert_close(plain["feat_"], model(images)[0].detach())
    assert plain["feat"].shape == (len(small_set.query), 64)


def test_hacnn_convention_trains(small_set):
    for triplet in (False, True):
        model = TinyHACNNLike(small_set.num_train_pids, triplet=triplet)
        trainer = make_trainer(small_set, tiny_config(epochs=1), model=model, objective=HACNNObjective())
        summary = trainer.fit()
        assert summary["metrics"].keys() == {"feat"}


def test_non_finite_loss_stops_training(small_set):
    config = tiny_config(epochs=1, lr=1e30, optimizer="sgd")
    with pytest.raises(FloatingPointError, match="loss is .* at epoch 1, step"):
        make_trainer(small_set, config).fit()


def test_sync_bn_needs_gpus(small_set):
    with pytest.raises(ValueError, match="SyncBatchNorm runs on GPUs only"):
        make_trainer(small_set, tiny_config(sync_bn=True))


def test_last_checkpoint_is_written_at_most_once_per_interval(small_set, tmp_path, monkeypatch):
    import models.engine.trainer as trainer_module

    written = []
    real_save = trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda path, state: (written.append((path.name, state["epoch"])), real_save(path, state)))
    # An hour between saves and no evaluation before the end: last.pt only after the last epoch.
    trainer = make_trainer(small_set, tiny_config(epochs=3, checkpoint_interval=3600.0), RunFolder(tmp_path / "a"))
    trainer.fit()
    assert written == [("last.pt", 3), ("best.pt", 3)]
    # Every epoch with 0, and always after an evaluation.
    written.clear()
    trainer = make_trainer(small_set, tiny_config(epochs=3, checkpoint_interval=0.0), RunFolder(tmp_path / "b"))
    trainer.fit()
    assert [w for w in written if w[0] == "last.pt"] == [("last.pt", 1), ("last.pt", 2), ("last.pt", 3)]
    written.clear()
    trainer = make_trainer(small_set, tiny_config(epochs=3, checkpoint_interval=3600.0, eval_every=2),
                           RunFolder(tmp_path / "c"))
    trainer.fit()
    assert [w for w in written if w[0] == "last.pt"] == [("last.pt", 2), ("last.pt", 3)]
    assert (tmp_path / "c" / "curves.png").stat().st_size > 0
