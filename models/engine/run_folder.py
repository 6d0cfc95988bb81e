"""A run's folder: config.json, metrics.jsonl, curves.png, checkpoints/, ranked_lists/, and
tensorboard/ with --tensorboard."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path


def require_tensorboard() -> None:
    """A one-line error when the tensorboard package (the `tensorboard` extra) is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ModuleNotFoundError('--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]" '
                                  '(or pip install tensorboard)')


class RunFolder:
    """Files of one training run. Metrics are JSON lines, one record per epoch and kind."""

    def __init__(self, path: str | os.PathLike, tensorboard: bool = False) -> None:
        self.path = Path(path)
        # --tensorboard: every record's numbers also as scalars in tensorboard/ (step = epoch).
        self.tensorboard = self.path / "tensorboard" if tensorboard else None
        self._writer = None
        self._purge_step = None
        if tensorboard:
            require_tensorboard()
        self.checkpoints = self.path / "checkpoints"
        self.ranked_lists = self.path / "ranked_lists"
        self.metrics_file = self.path / "metrics.jsonl"
        for folder in (self.path, self.checkpoints, self.ranked_lists):
            folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str, tensorboard: bool = False) -> RunFolder:
        """A new folder `output_dir/<date>-<time>-<name>` (a numeric suffix if that exists)."""
        stem = Path(output_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        path, number = stem, 1
        while path.exists():
            number += 1
            path = stem.with_name(f"{stem.name}-{number}")
        return cls(path, tensorboard)

    def write_config(self, config: dict) -> None:
        with open(self.path / "config.json", "w") as f:
            json.dump(config, f, indent=2)

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = None
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self._write_scalars(record)

    def _write_scalars(self, record: dict) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.tensorboard, purge_step=self._purge_step)
        kind, epoch = record.get("kind", "record"), int(record.get("epoch", 0))
        prefix = f"{kind}/{record['feature']}" if "feature" in record else kind
        for key, value in record.items():
            if key not in ("kind", "epoch", "feature") and isinstance(value, (int, float)) and value is not None:
                self._writer.add_scalar(f"{prefix}/{key}", value, epoch)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def records(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        with open(self.metrics_file) as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_records_until(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (logged by a run that stopped before checkpointing them)."""
        kept = [r for r in self.records() if r["epoch"] <= epoch]
        # TensorBoard hides what a killed run logged after this epoch.
        self._purge_step = epoch + 1
        temporary = self.metrics_file.with_suffix(".jsonl.tmp")
        with open(temporary, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(temporary, self.metrics_file)

    def plot(self) -> Path:
        """curves.png: training loss, learning rate, rank-1 and mAP against epochs."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = self.records()
        train = [r for r in records if r["kind"] == "train"]
        evals = [r for r in records if r["kind"] == "eval"]
        figure, axes = plt.subplots(1, 4, figsize=(16, 3.5))
        panels = (("loss", train, "loss"), ("learning rate", train, "lr"), ("rank-1 (%)", evals, "rank1"),
                  ("mAP (%)", evals, "mAP"))
        for axis, (title, rows, key) in zip(axes, panels):
            for feature in sorted({r.get("feature", "") for r in rows}):
                points = [(r["epoch"], r[key]) for r in rows if r.get("feature", "") == feature and r[key] is not None]
                if points:
                    axis.plot(*zip(*points), marker="o" if key in ("rank1", "mAP") else None, label=feature or None)
            if key in ("rank1", "mAP") and len({r.get("feature") for r in rows}) > 1:
                axis.legend()
            axis.set_title(title)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
        figure.tight_layout()
        target = self.path / "curves.png"
        figure.savefig(target, dpi=80)
        plt.close(figure)
        return target
