"""What the CLI runs: data set preparation, a training run from a configuration, evaluation of a checkpoint."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from rga_ops.backends import resolve_backend

from ..data.datasets import ReidDataset, load_dataset, load_market1501
from ..data.synthetic import SyntheticConfig, make_synthetic_market
from ..data.transforms import eval_transform
from ..evaluation import evaluate_rank, re_ranking_features
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import DistributedContext, init_distributed
from .evaluator import (
    describe_protocol,
    evaluate_split_features,
    extract_features,
    format_results,
    make_eval_loader,
    metrics_record,
    save_ranked_lists,
)
from .run_folder import RunFolder
from .trainer import Trainer, format_duration
from .zoo import build_model

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


SCRATCH_WARNING = (
    "WARNING: {model} on {dataset} starts from random weights: the RGA recipe and every published score start "
    "the ResNet-50 trunk from ImageNet. Pass --pretrained PATH (a torchvision ResNet-50 state_dict file, e.g. "
    "resnet50-0676ba61.pth; see the README's 'ImageNet weights') unless training from scratch is what you want.")


def scratch_warning(config: TrainConfig, resuming: bool = False) -> str | None:
    """The warning for an RGA-Net run on real data that starts from random weights (None otherwise)."""
    if resuming or config.pretrained is not None or not config.model.startswith("rganet") or config.dataset == SYNTHETIC:
        return None
    return SCRATCH_WARNING.format(model=config.model, dataset=config.dataset)


def build_for(config: TrainConfig, num_classes: int, with_pretrained: bool = True):
    """The configured model; `with_pretrained` False leaves out the ImageNet weights (a checkpoint follows)."""
    return build_model(config.model, num_classes, config.height, config.width, config.backend, scale=config.scale,
                       d_scale=config.d_scale, dropout=config.dropout, label_smoothing=config.label_smoothing,
                       margin=config.margin, triplet_weight=config.triplet_weight,
                       identity_start=config.identity_start,
                       pretrained=config.pretrained if with_pretrained else None)


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
    if not dataset.train:
        raise ValueError(f"{dataset.name}: no training split (a train/ folder or train.csv) to train on")
    warning = scratch_warning(config, resuming=checkpoint is not None)
    if warning:
        log(warning)
        warnings.warn(warning, stacklevel=2)
    torch.manual_seed(config.seed)
    built = build_for(config, dataset.num_train_pids, with_pretrained=checkpoint is None)
    report = getattr(built.model, "imagenet_report", None)
    if report is not None:
        log(str(report))
    config.height, config.width = built.height, built.width
    run = None
    if ctx.is_main:
        if checkpoint is not None:
            run = RunFolder(run_folder_of(checkpoint_path), config.tensorboard)
        else:
            run = RunFolder.create(config.output_dir, config.run_name or f"{config.model}-{config.dataset}",
                                   config.tensorboard)
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
    try:
        summary = trainer.fit()
    finally:
        if run is not None:
            run.close()
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
                        workers: int = 1, log: Callable[[str], None] = print, *, model: str | None = None,
                        height: int | None = None, width: int | None = None, scale: int | None = None,
                        d_scale: int | None = None, protocol: str = "market",
                        metric: str | None = None, ranked_lists: int = 0, ranked_lists_dir: str = "ranked_lists",
                        save_features: str | None = None, trust: bool = False) -> dict[str, dict[str, float]]:
    """Metrics of a checkpoint on a data set (default: the one it was trained on).

    `path`: this project's checkpoint, or the official RGA code's / torchreid's HA-CNN checkpoint
    (then `dataset_name` is needed, and `model`, `height`, `width` where the file cannot tell them;
    see models.inference.loading). `protocol`: "market" or "cuhk03" (single gallery shot).
    `ranked_lists`: pictures of that many queries' top-10 into `ranked_lists_dir`. `save_features`:
    an .npz file with the query and gallery features, pids, cameras and paths."""
    from ..inference.loading import load_model

    loaded = load_model(path, model, height, width, scale=scale, d_scale=d_scale, trust=trust)
    config = loaded.config
    if dataset_name is None and config is None:
        raise ValueError(f"{path} is not a checkpoint of this project (it holds no configuration): name the data "
                         "set to evaluate on (--dataset) and its folder (--data-root)")
    metric = metric or loaded.metric
    ctx = init_distributed(device or (config.device if config else None))
    log = log if ctx.is_main else (lambda _: None)
    dataset = prepare_dataset(dataset_name or config.dataset, data_root or (config.data_root if config else "data"),
                              ctx, config.synthetic_seed if config else 0, log)
    log(dataset.summary())
    network = loaded.model.to(ctx.device)
    transform = eval_transform(loaded.height, loaded.width)
    query = extract_features(network, loaded.objective, make_eval_loader(dataset.query, transform, ctx, batch_size,
                                                                         workers), ctx, flip)
    gallery = extract_features(network, loaded.objective, make_eval_loader(dataset.gallery, transform, ctx,
                                                                           batch_size, workers), ctx, flip)
    if not ctx.is_main:
        return {}
    q_pids, g_pids = [r.pid for r in dataset.query], [r.pid for r in dataset.gallery]
    q_cams, g_cams = [r.camid for r in dataset.query], [r.camid for r in dataset.gallery]
    if rerank:
        results = {name: evaluate_rank(re_ranking_features(query[name], gallery[name], metric), q_pids, g_pids,
                                       q_cams, g_cams, max_rank=10, protocol=protocol)
                   for name in query}
    else:
        results = evaluate_split_features(query, gallery, dataset.query, dataset.gallery, metric, protocol)
    epoch = f" after epoch {loaded.epoch}" if loaded.epoch is not None else ""
    log(f"{path} ({loaded.name}, {loaded.source} checkpoint){epoch}:\n"
        f"{format_results(results, describe_protocol(metric, flip, rerank) + ('' if protocol == 'market' else ', ' + protocol + ' protocol'))}")
    name = loaded.objective.feature_names[-1]
    if ranked_lists:
        Path(ranked_lists_dir).mkdir(parents=True, exist_ok=True)
        pictures = save_ranked_lists(Path(ranked_lists_dir), Path(path).stem, query[name], gallery[name],
                                     dataset.query, dataset.gallery, ranked_lists, metric)
        log(f"{len(pictures)} ranked lists in {ranked_lists_dir}/")
    if save_features:
        import numpy as np

        Path(save_features).parent.mkdir(parents=True, exist_ok=True)
        np.savez(save_features, query_features=query[name].cpu().numpy(), gallery_features=gallery[name].cpu().numpy(),
                 query_pids=np.array(q_pids), gallery_pids=np.array(g_pids), query_camids=np.array(q_cams),
                 gallery_camids=np.array(g_cams), query_paths=np.array([r.path for r in dataset.query]),
                 gallery_paths=np.array([r.path for r in dataset.gallery]))
        log(f"features ({name}) saved to {save_features}")
    return {name: metrics_record(result) for name, result in results.items()}
