"""A training run's configuration: one flat dataclass, saved as config.json in the run folder and in checkpoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Optimiser, schedule, batch and augmentation of each recipe; explicit options override them.
RECIPES: dict[str, dict] = {
    # The RGA paper's (docs/reid.md, Recipes): Adam 8e-4 after a 20-epoch linear warm-up from 8e-6, halved at 80, 120, ..., 360; 600 epochs.
    "rga": dict(optimizer="adam", lr=8e-4, weight_decay=5e-4, warmup_epochs=20, warmup_factor=0.01,
                milestones=list(range(80, 361, 40)), gamma=0.5, epochs=600, num_identities=16, num_instances=4,
                crop="enlarge", erase_p=0.5, identity_start=False, model="rganet", height=256, width=128, scale=8,
                d_scale=8, flip_eval=False),
    # torchreid's HA-CNN reproduction (docs/reid.md, Recipes): SGD 0.03 from scratch, x0.1 at 50% and 75% of 300 epochs,
    # batch 32, flip + random crop.
    "hacnn": dict(optimizer="sgd", lr=0.03, weight_decay=5e-4, warmup_epochs=0, warmup_factor=1.0,
                  milestones=[150, 225], gamma=0.1, epochs=300, num_identities=8, num_instances=4,
                  crop="enlarge", erase_p=0.0, identity_start=False, model="hacnn", height=160, width=64, scale=8,
                  d_scale=8, flip_eval=False),
    # The built-in synthetic set on a CPU: the RGA recipe compressed into minutes of training, from scratch
    # (no ImageNet weights), so the network starts near the identity (zoo.build_model's identity_start).
    # RGA-S at 32x16: on a 2-core CPU RGA-SC at 64x32 trains at ~14 images/s, RGA-S at 32x16 at ~75 with
    # 8x4 batches and ~110 with 16x4 (an earlier version; layer3/layer4 GEMMs have B x 2 rows: bigger batches run faster).
    # Evaluation averages each feature with its mirror image's (the set has left- and right-facing views).
    "synthetic": dict(optimizer="adam", lr=8e-4, weight_decay=5e-4, warmup_epochs=2, warmup_factor=0.01,
                      milestones=[45, 54], gamma=0.5, epochs=60, num_identities=16, num_instances=4,
                      crop="enlarge", erase_p=0.2, identity_start=True, model="rganet-s", height=32, width=16,
                      scale=2, d_scale=2, flip_eval=True),
}


@dataclass
class TrainConfig:
    # data
    dataset: str = "synthetic"
    data_root: str = "data"
    synthetic_seed: int = 0
    workers: int = 1
    # model
    model: str | None = None
    height: int | None = None
    width: int | None = None
    scale: int | None = None
    d_scale: int | None = None
    dropout: float = 0.0
    backend: str = "auto"
    # a torchvision ResNet-50 ImageNet state_dict file for RGA-Net's trunk (never downloaded)
    pretrained: str | None = None
    # recipe (filled from RECIPES[recipe] where left None)
    recipe: str = "synthetic"
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: int | None = None
    warmup_factor: float | None = None
    milestones: list[int] | None = None
    gamma: float | None = None
    epochs: int | None = None
    num_identities: int | None = None
    num_instances: int | None = None
    crop: str | None = None
    erase_p: float | None = None
    identity_start: bool | None = None
    label_smoothing: float = 0.1
    margin: float = 0.3
    triplet_weight: float = 1.0
    # evaluation
    eval_every: int = 0
    eval_before: bool | None = None
    flip_eval: bool | None = None
    metric: str = "cosine"
    ranked_lists: int = 4
    # run
    seed: int = 0
    device: str | None = None
    amp: str = "auto"
    sync_bn: bool = False
    save_every: int = 0
    # last.pt (and curves.png) at most this often in seconds, and at every evaluation and at the end; 0: every epoch
    checkpoint_interval: float = 60.0
    output_dir: str = "runs"
    tensorboard: bool = False
    run_name: str | None = None

    def resolved(self) -> TrainConfig:
        """A copy with every recipe field filled in."""
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPES)}")
        values = dataclasses.asdict(self)
        values["model"] = values["model"] or RECIPES[self.recipe]["model"]
        if values["model"] == "hacnn":
            # HA-CNN is built for one input size, whatever the recipe's.
            values["height"], values["width"] = values["height"] or 160, values["width"] or 64
        for key, default in RECIPES[self.recipe].items():
            if values[key] is None:
                values[key] = list(default) if isinstance(default, list) else default
        if values["eval_before"] is None:
            # Scoring the untrained model is cheap on the synthetic set and shows what training adds.
            values["eval_before"] = values["dataset"] == "synthetic"
        return TrainConfig(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}")
        return cls(**values)
