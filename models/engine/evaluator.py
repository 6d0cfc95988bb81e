"""Feature extraction (optionally flip-averaged, gathered across ranks) and evaluation with models.evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data.datasets import ImageRecord
from ..data.image_dataset import ImageDataset
from ..evaluation import (
    RankResult,
    evaluate_features,
    pairwise_distance,
    ranked_gallery,
    save_ranked_list,
)
from .distributed import DistributedContext, gather_rows


def make_eval_loader(records: Sequence[ImageRecord], transform, ctx: DistributedContext, batch_size: int,
                     workers: int) -> DataLoader:
    """Loader over `records` in order; under DDP each rank reads its own share (padded to equal lengths)."""
    dataset = ImageDataset(records, transform)
    sampler = DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=False) if ctx.enabled else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=ctx.device.type == "cuda")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on CUDA when `dtype` is given; nothing otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def extract_features(model: torch.nn.Module, objective, loader: DataLoader, ctx: DistributedContext,
                     flip: bool = False, amp_dtype: torch.dtype | None = None,
                     desc: str = "features") -> dict[str, torch.Tensor]:
    """{feature name: [N, D] float32 on ctx.device} for every item of loader's dataset, in dataset order,
    on every rank. With `flip`, each feature is the mean of the picture's and its mirror image's."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in objective.feature_names}
    indices = []
    for images, _, _, index in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not ctx.is_main,
                                    dynamic_ncols=True):
        images = images.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, amp_dtype):
            features = objective.features(model(images))
            if flip:
                mirrored = objective.features(model(images.flip(3)))
                features = {name: (value + mirrored[name]) / 2 for name, value in features.items()}
        for name, value in features.items():
            parts[name].append(value.float())
        indices.append(index.to(ctx.device))
    model.train(was_training)
    order = gather_rows(torch.cat(indices))
    result = {}
    for name, chunks in parts.items():
        gathered = gather_rows(torch.cat(chunks))
        # DistributedSampler pads with repeated items: they land on the same row with the same value.
        ordered = gathered.new_empty((len(loader.dataset), gathered.shape[1]))
        ordered[order] = gathered
        result[name] = ordered
    return result


def evaluate_split_features(
    query_features: dict[str, torch.Tensor],
    gallery_features: dict[str, torch.Tensor],
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    metric: str = "cosine",
    protocol: str = "market",
) -> dict[str, RankResult]:
    """Ranking metrics for each feature set (`protocol`: "market", or "cuhk03" single gallery shot)."""
    q_pids = torch.tensor([r.pid for r in query])
    q_camids = torch.tensor([r.camid for r in query])
    g_pids = torch.tensor([r.pid for r in gallery])
    g_camids = torch.tensor([r.camid for r in gallery])
    return {name: evaluate_features(query_features[name], gallery_features[name], q_pids, g_pids, q_camids,
                                    g_camids, metric=metric, max_rank=10, protocol=protocol)
            for name in query_features}


def metrics_record(result: RankResult) -> dict[str, float]:
    """Percentages, as the literature reports them (plain floats: JSON- and weights_only-safe)."""
    return {"rank1": 100 * float(result.cmc[0]), "rank5": 100 * float(result.cmc[4]),
            "rank10": 100 * float(result.cmc[9]), "mAP": 100 * result.mAP, "mINP": 100 * result.mINP}


def describe_protocol(metric: str, flip: bool = False, rerank: bool = False) -> str:
    """How the scores were obtained, e.g. 'cosine distance, flip-averaged', for every table and summary."""
    return f"{metric} distance" + (", flip-averaged" if flip else "") + (", re-ranked" if rerank else "")


def format_results(results: dict[str, RankResult], protocol: str) -> str:
    """A table of rank-1/5/10, mAP and mINP per feature; `protocol` comes from describe_protocol."""
    lines = [f"  {'feature':<8}| {'rank-1':>6} | {'rank-5':>6} | {'rank-10':>7} | {'mAP':>6} | {'mINP':>6}   "
             f"({protocol})"]
    for name, result in results.items():
        m = metrics_record(result)
        lines.append(f"  {name:<8}| {m['rank1']:6.1f} | {m['rank5']:6.1f} | {m['rank10']:7.1f} | {m['mAP']:6.1f} | "
                     f"{m['mINP']:6.1f}")
    return "\n".join(lines)


def save_ranked_lists(folder: Path, prefix: str, query_features: torch.Tensor, gallery_features: torch.Tensor,
                      query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], count: int, metric: str,
                      topk: int = 10) -> list[Path]:
    """Pictures of the top-`topk` gallery of `count` queries spread over the query list."""
    if count <= 0:
        return []
    g_pids = torch.tensor([r.pid for r in gallery])
    g_camids = torch.tensor([r.camid for r in gallery])
    chosen = torch.linspace(0, len(query) - 1, min(count, len(query))).round().long().unique().tolist()
    paths = []
    for i in chosen:
        distances = pairwise_distance(query_features[i:i + 1], gallery_features, metric)[0].cpu()
        order, labels = ranked_gallery(distances, query[i].pid, query[i].camid, g_pids, g_camids, topk)
        path = folder / f"{prefix}_query{i:05d}.png"
        save_ranked_list(path, query[i].path, [gallery[j].path for j in order], labels,
                         [float(distances[j]) for j in order])
        paths.append(path)
    return paths
