"""What the CLI runs: data set preparation, a training run from a configuration, evaluation of a checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from rga_ops.backends import resolve_backend

from ..data.datasets import ReidDataset, load_dataset, load_market1501
from ..data.synthetic import SyntheticConfig, make_synthetic_market
from ..data.transforms import eval_transform
from ..evaluation import evaluate_rank, re_ranking_features
from .zoo import build_model
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, init_distributed
from .evaluator import (describe_protocol, evaluate_split_features, extract_features, format_results,
                        make_eval_loader, metrics_record)
from .run_folder import RunFolder
from .trainer import Trainer, format_duration

SYNTHETIC = "synthetic"


def prepare_dataset(name: str, root: str, ctx: DistributedContext, synthetic_seed: int = 0,
                    log: Callable[[str], None] = print) -> ReidDataset:
    """Load data set `name` from `root`; "synthetic" first draws the built-in set under `root` (main rank)."""
    if name != SYNTHETIC:
        return load_dataset(name, root)
    config = SyntheticConfig(seed=synthetic_seed)
    if ctx.is_main:
        start = time.perf_counter()
        folder = make_synthetic_market(root, config, progress=True)
        log(f"synthetic set ready in {time.perf_counter() - start:.1f} s: {folder}")
    ctx.barrier()
    dataset = load_market1501(make_synthetic_market(root, config))
    return ReidDataset("synthetic (Market-1501 layout)", dataset.root, dataset.train, dataset.query, dataset.gallery)


def build_for(config: TrainConfig, num_classes: int):
    return build_model(config.model, num_classes, config.height, config.width, config.backend, scale=config.scale,
                       d_scale=config.d_scale, dropout=config.dropout, label_smoothing=config.label_smoothing,
                       margin=config.margin, triplet_weight=config.triplet_weight,
                       identity_start=config.identity_start)


def run_folder_of(checkpoint: Path) -> Path:
    """`<run>/checkpoints/<name>.pt` -> `<run>`."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def resolve_resume(path: str) -> Path:
    """A checkpoint file, or a run folder (its checkpoints/last.pt)."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = candidate / "checkpoints" / "last.pt"
    if not candidate.is_file():
        raise FileNotFoundError(f"nothing to resume from: {candidate} does not exist")
    return candidate


def train(config: TrainConfig, resume: str | None = None, log: Callable[[str], None] = print) -> dict:
    """A full run: data, model, (untrained evaluation), training, evaluation. Returns the summary."""
    started = time.perf_counter()
    checkpoint = None
    if resume is not None:
        checkpoint_path = resolve_resume(resume)
        checkpoint = load_checkpoint(checkpoint_path)
        config = TrainConfig.from_dict(checkpoint["config"])
    config = config.resolved()
    ctx = init_distributed(config.device)
    log = log if ctx.is_main else (lambda _: None)
    dataset = prepare_dataset(config.dataset, config.data_root, ctx, config.synthetic_seed, log)
    log(dataset.summary())
    torch.manual_seed(config.seed)
    built = build_for(config, dataset.num_train_pids)
    config.height, config.width = built.height, built.width
    run = None
    if ctx.is_main:
        if checkpoint is not None:
            run = RunFolder(run_folder_of(checkpoint_path))
        else:
            run = RunFolder.create(config.output_dir, config.run_name or f"{config.model}-{config.dataset}")
            run.write_config(config.to_dict())
    trainer = Trainer(config, built.model, built.objective, dataset, ctx, run, log)
    if checkpoint is not None:
        trainer.load_state(checkpoint)
        log(f"resumed {run.path if run else ''} after epoch {trainer.epoch}")
    backend = getattr(built.model, "backend", config.backend)
    if backend == "auto":
        backend = f"auto = {resolve_backend('auto', ctx.device)}"
    log(f"model {config.model} ({sum(p.numel() for p in built.model.parameters()) / 1e6:.1f} M parameters, "
        f"input {config.height}x{config.width}, backend {backend}) on {ctx.device} x {ctx.world_size}; "
        f"{config.epochs} epochs of {len(trainer.sampler)} steps of {config.num_identities}x{config.num_instances} "
        f"images per process")
    summary = trainer.fit()
    summary["initial_metrics"] = trainer.initial_metrics
    summary["run"] = str(run.path) if run else None
    summary["seconds"] = time.perf_counter() - started
    if ctx.is_main:
        log(format_summary(summary, trainer.objective.feature_names[-1],
                           describe_protocol(config.metric, config.flip_eval)))
    return summary


def format_summary(summary: dict, feature: str, protocol: str) -> str:
    lines = ["== summary"]
    for label, metrics in (("untrained model", summary["initial_metrics"]), ("trained model", summary["metrics"])):
        if metrics:
            m = metrics[feature]
            lines.append(f"{label + ':':<17} rank-1 {m['rank1']:5.1f}%  mAP {m['mAP']:5.1f}%  "
                         f"({feature}, {protocol})")
    lines.append(f"training speed:   {summary['images_per_s']:.1f} images/s (median over epochs)")
    lines.append(f"run folder:       {summary['run']}")
    lines.append(f"wall time:        {format_duration(summary['seconds'])}")
    return "\n".join(lines)


def evaluate_checkpoint(path: str, dataset_name: str | None = None, data_root: str | None = None,
                        device: str | None = None, flip: bool = False, rerank: bool = False, batch_size: int = 64,
                        workers: int = 1, log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Metrics of a checkpoint on a data set (default: the one it was trained on)."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint["config"]).resolved()
    ctx = init_distributed(device or config.device)
    log = log if ctx.is_main else (lambda _: None)
    dataset = prepare_dataset(dataset_name or config.dataset, data_root or config.data_root, ctx,
                              config.synthetic_seed, log)
    log(dataset.summary())
    built = build_for(config, int(checkpoint["num_classes"]))
    built.model.load_state_dict(checkpoint["state_dict"])
    model = built.model.to(ctx.device)
    transform = eval_transform(built.height, built.width)
    query = extract_features(model, built.objective, make_eval_loader(dataset.query, transform, ctx, batch_size,
                                                                      workers), ctx, flip)
    gallery = extract_features(model, built.objective, make_eval_loader(dataset.gallery, transform, ctx,
                                                                        batch_size, workers), ctx, flip)
    if not ctx.is_main:
        return {}
    if rerank:
        results = {}
        for name in query:
            distances = re_ranking_features(query[name], gallery[name], config.metric)
            results[name] = evaluate_rank(distances, [r.pid for r in dataset.query], [r.pid for r in dataset.gallery],
                                          [r.camid for r in dataset.query], [r.camid for r in dataset.gallery],
                                          max_rank=10)
    else:
        results = evaluate_split_features(query, gallery, dataset.query, dataset.gallery, config.metric)
    log(f"{path} after epoch {checkpoint['epoch']}:\n"
        f"{format_results(results, describe_protocol(config.metric, flip, rerank))}")
    return {name: metrics_record(result) for name, result in results.items()}
