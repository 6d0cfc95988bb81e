"""The training loop: P x K batches, the objective's losses, per-epoch schedule, evaluation, checkpoints.

Reproducibility: a run is a function of its configuration. The batches and
their augmentations depend on (seed, epoch) only (`IdentityBatchSampler`), and
the process's random generator is re-seeded from (seed, epoch, rank) at the
start of every epoch, so resuming from the checkpoint written at the end of
epoch e continues exactly as the uninterrupted run would have. `last.pt` is
written after an epoch when `checkpoint_interval` seconds have passed since the
last one (default 60; 0: every epoch), after every evaluation and at the end, so
a killed run loses at most about that much training plus the epoch in flight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.datasets import ReidDataset
from ..data.image_dataset import ImageDataset
from ..data.sampler import IdentityBatchSampler
from ..data.transforms import eval_transform, train_transform
from ..evaluation import RankResult
from .checkpoint import save_checkpoint, unwrapped_state_dict
from .config import TrainConfig
from .distributed import DistributedContext
from .evaluator import (
    autocast,
    describe_protocol,
    evaluate_split_features,
    extract_features,
    format_results,
    make_eval_loader,
    metrics_record,
    save_ranked_lists,
)
from .run_folder import RunFolder
from .schedule import make_optimizer, make_scheduler

CHECKPOINT_FORMAT = 1
AMP_MODES = ("auto", "off", "bf16", "fp16")


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: "auto" = bfloat16 on GPUs that support it, float16 on older ones, off on the CPU."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise ValueError(f"amp={mode!r} needs a CUDA device (this run is on {device})")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Trainer:
    """Trains `model` with `objective` on `dataset.train` and evaluates it on query/gallery.

    `config` must be resolved (`TrainConfig.resolved()`). Only the main rank
    writes to `run` (which may be None: nothing is written) and prints.
    """

    def __init__(self, config: TrainConfig, model: torch.nn.Module, objective, dataset: ReidDataset,
                 ctx: DistributedContext, run: RunFolder | None, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.objective = objective
        self.dataset = dataset
        self.ctx = ctx
        self.run = run if ctx.is_main else None
        self.log = log if ctx.is_main else (lambda _: None)
        if config.sync_bn:
            if ctx.device.type != "cuda":
                raise ValueError("sync_bn: torch's SyncBatchNorm runs on GPUs only; this run is on the CPU")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(ctx.device)
        self.network = self.model
        if ctx.enabled:
            self.network = DistributedDataParallel(self.model, device_ids=[ctx.device.index]
                                                   if ctx.device.type == "cuda" else None)
        self.optimizer = make_optimizer(self.model.parameters(), config.optimizer, config.lr, config.weight_decay,
                                        config.momentum)
        self.scheduler = make_scheduler(self.optimizer, config.warmup_epochs, config.warmup_factor,
                                        config.milestones, config.gamma)
        self.amp_dtype = resolve_amp(config.amp, ctx.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.sampler = IdentityBatchSampler([r.pid for r in dataset.train], config.num_identities,
                                            config.num_instances, config.seed, ctx.rank, ctx.world_size)
        transform = train_transform(config.height, config.width, config.crop, erase_p=config.erase_p)
        self.train_loader = DataLoader(ImageDataset(dataset.train, transform), batch_sampler=self.sampler,
                                       num_workers=config.workers, persistent_workers=config.workers > 0,
                                       pin_memory=ctx.device.type == "cuda")
        plain = eval_transform(config.height, config.width)
        batch = 2 * self.sampler.batch_size
        self.query_loader = make_eval_loader(dataset.query, plain, ctx, batch, config.workers)
        self.gallery_loader = make_eval_loader(dataset.gallery, plain, ctx, batch, config.workers)
        self.epoch = 0
        self.best = {"score": -1.0, "epoch": 0}
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.initial_metrics: dict[str, dict[str, float]] = {}
        # time.monotonic() of the last last.pt; fit() restarts it (0.0: long ago, the next epoch saves).
        self._last_saved = 0.0

    # ---- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict:
        """The checkpoint of the run after `self.epoch` epochs."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "state_dict": unwrapped_state_dict(self.network),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": dict(self.best),
            "metrics": {name: dict(values) for name, values in self.last_metrics.items()},
            "num_classes": self.dataset.num_train_pids,
            "config": self.config.to_dict(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state(self, checkpoint: dict) -> None:
        """Continue from a checkpoint written by `state()` of a run with the same configuration."""
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.best = dict(checkpoint["best"])
        self.last_metrics = {name: dict(values) for name, values in checkpoint["metrics"].items()}
        if self.run is not None:
            self.run.keep_records_until(self.epoch)

    def _save(self, evaluated: bool) -> bool:
        """Write the checkpoints due after this epoch; True when last.pt was written."""
        if self.run is None:
            return False
        config = self.config
        keep = bool(config.save_every) and self.epoch % config.save_every == 0
        best = evaluated and self.best["epoch"] == self.epoch
        # An evaluated epoch always writes last.pt, so best.pt never comes without it.
        last = (evaluated or keep or self.epoch == config.epochs
                or time.monotonic() - self._last_saved >= config.checkpoint_interval)
        if not last:
            return False
        state = self.state()
        save_checkpoint(self.run.checkpoints / "last.pt", state)
        self._last_saved = time.monotonic()
        if keep:
            save_checkpoint(self.run.checkpoints / f"epoch_{self.epoch:04d}.pt", state)
        if best:
            save_checkpoint(self.run.checkpoints / "best.pt", state)
        return True

    # ---- training ----------------------------------------------------------------------------

    def train_epoch(self) -> dict[str, float]:
        """One pass of the identity sampler; returns the epoch's mean losses, lr and throughput."""
        config, ctx = self.config, self.ctx
        torch.manual_seed(epoch_seed(config.seed, self.epoch, ctx.rank))
        self.sampler.set_epoch(self.epoch)
        self.network.train()
        lr = self.optimizer.param_groups[0]["lr"]
        sums: dict[str, torch.Tensor] = {}
        steps, images_seen = 0, 0
        remaining_epochs = config.epochs - self.epoch - 1
        start = time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{config.epochs}", leave=False,
                   disable=not ctx.is_main, dynamic_ncols=True)
        for images, pids, _, _ in bar:
            images = images.to(ctx.device, non_blocking=True)
            pids = pids.to(ctx.device, non_blocking=True)
            with autocast(ctx.device, self.amp_dtype):
                terms = self.objective.losses(self.network(images), pids)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1}, step {steps + 1} "
                                         f"({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())})")
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float()
            steps += 1
            images_seen += images.shape[0] * ctx.world_size
            elapsed = time.perf_counter() - start
            per_step = elapsed / steps
            eta = per_step * (len(self.train_loader) - steps + remaining_epochs * len(self.train_loader))
            bar.set_postfix_str(f"loss {loss.item():.3f} lr {lr:.2e} {images_seen / elapsed:.1f} img/s "
                                f"run ETA {format_duration(eta)}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        names = sorted(sums)
        means = torch.stack([sums[n] for n in names]) / max(steps, 1)
        if ctx.enabled:
            torch.distributed.all_reduce(means)
            means /= ctx.world_size
        self.scheduler.step()
        self.epoch += 1
        record = {name: float(v) for name, v in zip(names, means.tolist())}
        return {**record, "lr": lr, "images_per_s": images_seen / seconds, "seconds": seconds}

    def evaluate(self, tag: str, ranked_lists: int | None = None) -> dict[str, RankResult] | None:
        """Rank the gallery for every query with every feature of the objective; results on the main rank."""
        config = self.config
        start = time.perf_counter()
        query = extract_features(self.model, self.objective, self.query_loader, self.ctx, config.flip_eval,
                                 self.amp_dtype, "query features")
        gallery = extract_features(self.model, self.objective, self.gallery_loader, self.ctx, config.flip_eval,
                                   self.amp_dtype, "gallery features")
        if not self.ctx.is_main:
            return None
        results = evaluate_split_features(query, gallery, self.dataset.query, self.dataset.gallery, config.metric)
        table = format_results(results, describe_protocol(config.metric, config.flip_eval))
        self.log(f"{tag} (epoch {self.epoch}, {len(self.dataset.query)} queries, {len(self.dataset.gallery)} "
                 f"gallery, {time.perf_counter() - start:.1f} s):\n{table}")
        count = config.ranked_lists if ranked_lists is None else ranked_lists
        if self.run is not None and count:
            name = self.objective.feature_names[-1]
            save_ranked_lists(self.run.ranked_lists, f"epoch{self.epoch:04d}", query[name], gallery[name],
                              self.dataset.query, self.dataset.gallery, count, config.metric)
        return results

    def _record_evaluation(self, results: dict[str, RankResult]) -> None:
        self.last_metrics = {name: metrics_record(result) for name, result in results.items()}
        score = self.last_metrics[self.objective.feature_names[-1]]["mAP"]
        # The untrained network (epoch 0) has no checkpoint, so it is never the best.
        if self.epoch > 0 and score > self.best["score"]:
            self.best = {"score": score, "epoch": self.epoch}
        if self.run is not None:
            for name, values in self.last_metrics.items():
                self.run.log({"kind": "eval", "epoch": self.epoch, "feature": name, **values})

    def fit(self) -> dict:
        """Train from `self.epoch` to `config.epochs`, evaluating every `eval_every` epochs and at the end."""
        config = self.config
        if self.epoch == 0 and config.eval_before:
            results = self.evaluate("untrained model")
            if results is not None:
                self._record_evaluation(results)
                self.initial_metrics = self.last_metrics
        throughput = []
        # The interval of last.pt counts from the start of training (the first epochs are not saved at once).
        self._last_saved = time.monotonic()
        while self.epoch < config.epochs:
            record = self.train_epoch()
            throughput.append(record["images_per_s"])
            self.log(f"epoch {self.epoch}/{config.epochs}: loss {record['loss']:.3f} "
                     + " ".join(f"{k} {record[k]:.3f}" for k in record if k not in ("loss", "lr", "images_per_s",
                                                                                    "seconds"))
                     + f" lr {record['lr']:.2e} {record['images_per_s']:.1f} img/s {record['seconds']:.1f} s")
            if self.run is not None:
                self.run.log({"kind": "train", "epoch": self.epoch, **record})
            evaluated = self.epoch == config.epochs or (config.eval_every and self.epoch % config.eval_every == 0)
            if evaluated:
                results = self.evaluate("evaluation")
                if results is not None:
                    self._record_evaluation(results)
            if self._save(bool(evaluated)):
                self.run.plot()
        return {"epoch": self.epoch, "metrics": self.last_metrics, "best": self.best,
                "images_per_s": float(np.median(throughput)) if throughput else math.nan}
