"""Search: the closest gallery pictures of each query picture, in bounded memory.

The distances are computed one chunk of query rows at a time (models.evaluation's distance
code), and each chunk keeps only its top `topk`; no query x gallery matrix exists beyond one
chunk. The order is the evaluation's: by distance, ties by gallery index. With `rerank`,
k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) replaces the distances first."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..evaluation import re_ranking_features, save_ranked_list
from ..evaluation.distance import check_features, column_terms, distance_rows

# Distances per chunk of query rows (64 Mi floats: 256 MiB).
_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class SearchResult:
    """`indices[i]`: the gallery rows of query i in rank order (topk of them); `distances[i]` theirs."""

    query: tuple[str, ...]
    gallery: tuple[str, ...]
    indices: torch.Tensor
    distances: torch.Tensor


def top_matches(query_features: torch.Tensor, gallery_features: torch.Tensor, topk: int = 10,
                metric: str = "cosine", chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [Q, k], distances [Q, k]) of the k = min(topk, G) closest gallery rows of each query,
    ordered by (distance, gallery index), one chunk of query rows at a time."""
    qf, gf = check_features(query_features, gallery_features, "query_features", "gallery_features")
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    k = min(topk, gf.shape[0])
    rows = chunk_rows or max(1, _CHUNK_ELEMENTS // max(gf.shape[0], 1))
    terms = column_terms(gf, metric)
    indices, distances = [], []
    for start in range(0, qf.shape[0], rows):
        block = distance_rows(qf[start:start + rows], gf, terms, metric)
        # A stable sort keeps equal distances in gallery order (topk does not promise it).
        order = torch.sort(block, dim=1, stable=True).indices[:, :k]
        indices.append(order)
        distances.append(block.gather(1, order))
    return torch.cat(indices), torch.cat(distances)


def search(extractor, query: Sequence[str | os.PathLike], gallery: Sequence[str | os.PathLike], topk: int = 10,
           rerank: bool = False, metric: str = "cosine") -> SearchResult:
    """Rank `gallery` pictures (files or folders) for each `query` picture with `extractor`
    (a models.FeatureExtractor)."""
    from .extract import image_files

    query_files = [str(p) for p in image_files(query)]
    gallery_files = [str(p) for p in image_files(gallery)]
    qf, gf = extractor(query_files), extractor(gallery_files)
    if rerank:
        matrix = re_ranking_features(qf, gf, metric)
        k = min(topk, gf.shape[0])
        indices = torch.sort(matrix, dim=1, stable=True).indices[:, :k]
        distances = matrix.gather(1, indices)
    else:
        indices, distances = top_matches(qf, gf, topk, metric)
    return SearchResult(tuple(query_files), tuple(gallery_files), indices, distances)


def write_search(result: SearchResult, out: str | os.PathLike, pictures: bool = True) -> Path:
    """`out`/ranked.csv (query, rank, gallery, distance: one row per query and rank) and, with `pictures`,
    one PNG strip per query (`out`/query<i>_<name>.png). Returns the CSV's path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "ranked.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "rank", "gallery", "distance"])
        for i, query in enumerate(result.query):
            for rank, (j, d) in enumerate(zip(result.indices[i].tolist(), result.distances[i].tolist()), start=1):
                writer.writerow([query, rank, result.gallery[j], f"{d:.6f}"])
    if pictures:
        for i, query in enumerate(result.query):
            order = result.indices[i].tolist()
            save_ranked_list(folder / f"query{i:05d}_{Path(query).stem}.png", query,
                             [result.gallery[j] for j in order], ["unknown"] * len(order),
                             result.distances[i].tolist())
    return table
