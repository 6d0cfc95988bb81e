"""Re-id evaluation (CMC, mAP, mINP) from a distance matrix or, chunk by chunk, from features.

Protocols (see docs/reid.md):

- "market": for each query, gallery items with the same pid *and* the same
  camera are junk and removed from its ranking; items of the same pid from
  another camera are its true matches. Queries without any true match are
  skipped and counted. Used for Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17.
- "cuhk03": the classic single-gallery-shot protocol. Junk is removed as
  above; then, in each of `num_repeats` repeats, every gallery identity is
  represented by one random gallery image and CMC is measured on that reduced
  gallery, averaged over repeats. AP and INP use the full gallery, as torchreid
  does. The random draw is one key per (repeat, gallery item) from a seeded
  CPU generator: an identity is represented by its valid item with the largest
  key, so every valid image is equally likely for every query, and the result
  depends only on `seed`, not on the chunk size or the device. (torchreid draws
  per query instead; the expected CMC is the same.)

Ties: the gallery of a query is ranked by (distance, gallery index), i.e. a
stable sort by distance, in both functions.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ._checks import as_ids, as_matrix, check_finite, one_of, positive_int
from .distance import METRICS, check_features, column_terms, distance_columns
from .ranking import GalleryIndex, MatchRanks, rank_matches

PROTOCOLS = ("market", "cuhk03")

# Default chunk: about 2^26 distances (256 MiB in float32) per block of query rows. Measured on the
# MSMT17-size problem: half of it costs 7% more time, twice as much saves 4% more.
_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True, eq=False)
class RankResult:
    """Ranking metrics as fractions in [0, 1] (the literature reports them x100).

    cmc: [max_rank] float64 CPU tensor, `cmc[k - 1]` = CMC@k, the fraction of
        valid queries whose first true match is within the top k. Ranks past the
        end of a query's (junk-free) gallery count it as found, so when
        `max_rank` exceeds the gallery size the curve stays at its final value.
    mAP: mean average precision over valid queries.
    mINP: mean inverse negative penalty over valid queries.
    num_valid_queries: queries with at least one true match.
    num_skipped_queries: queries without a true match, left out of every mean.
    """

    cmc: torch.Tensor
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int


def default_chunk(num_gallery: int) -> int:
    """Query rows per chunk when the caller gives none."""
    return max(1, _CHUNK_ELEMENTS // num_gallery)


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    protocol: str = "market",
    *,
    chunk: int | None = None,
    num_repeats: int = 10,
    seed: int = 0,
) -> RankResult:
    """Evaluate a distance matrix `distmat` [Q, G] (smaller = more similar).

    `q_pids`, `q_camids`: [Q]; `g_pids`, `g_camids`: [G] integer labels.
    Tensors or numpy arrays; the work runs on `distmat`'s device, `chunk`
    query rows at a time (default about 2^26 distances per chunk).
    `num_repeats` and `seed` are used by the "cuhk03" protocol only.
    Raises ValueError on NaN or infinite distances, mismatched lengths, or when
    no query has a true match.
    """
    dist = as_matrix("distmat", distmat)
    num_queries, num_gallery = dist.shape
    chunk = default_chunk(num_gallery) if chunk is None else positive_int("chunk", chunk)

    def rows() -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, num_queries, chunk):
            block = dist[start : start + chunk]
            check_finite("distmat", block, start)
            yield start, block

    with torch.no_grad():
        return _evaluate(rows, dist.device, num_queries, num_gallery, q_pids, g_pids, q_camids, g_camids,
                         max_rank, protocol, num_repeats, seed)


def evaluate_features(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "cosine",
    max_rank: int = 50,
    chunk: int | None = None,
    *,
    protocol: str = "market",
    num_repeats: int = 10,
    seed: int = 0,
) -> RankResult:
    """Evaluate query features `qf` [Q, D] against gallery features `gf` [G, D].

    Gives the result of `evaluate_rank(pairwise_distance(qf, gf, metric), ...)`
    (up to GEMM rounding of the distances) without the [Q, G] matrix: distances
    are computed for `chunk` query rows at a time on the features' device, so
    memory is bounded by `chunk * G` independently of Q (default chunk: about
    2^26 distances). `metric`: "cosine" (1 - cos) or "euclidean" (squared).
    """
    one_of("metric", metric, METRICS)
    x, y = check_features(qf, gf)
    num_queries, num_gallery = x.shape[0], y.shape[0]
    chunk = default_chunk(num_gallery) if chunk is None else positive_int("chunk", chunk)

    def rows() -> Iterator[tuple[int, torch.Tensor]]:
        terms = column_terms(y, metric)
        for start in range(0, num_queries, chunk):
            # Computed as [G, chunk] (the faster GEMM) and ranked in that layout, never transposed.
            block = distance_columns(x[start : start + chunk], y, terms, metric).t()
            check_finite("distances computed from qf and gf (check the features)", block, start)
            yield start, block

    with torch.no_grad():
        return _evaluate(rows, x.device, num_queries, num_gallery, q_pids, g_pids, q_camids, g_camids,
                         max_rank, protocol, num_repeats, seed)


def _evaluate(
    rows: Callable[[], Iterator[tuple[int, torch.Tensor]]],
    device: torch.device,
    num_queries: int,
    num_gallery: int,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int,
    protocol: str,
    num_repeats: int,
    seed: int,
) -> RankResult:
    one_of("protocol", protocol, PROTOCOLS)
    max_rank = positive_int("max_rank", max_rank)
    num_repeats = positive_int("num_repeats", num_repeats)
    q_pids = as_ids("q_pids", q_pids, num_queries, "query", device)
    g_pids = as_ids("g_pids", g_pids, num_gallery, "gallery item", device)
    q_camids = as_ids("q_camids", q_camids, num_queries, "query", device)
    g_camids = as_ids("g_camids", g_camids, num_gallery, "gallery item", device)

    gallery = GalleryIndex(q_pids, g_pids, g_camids)
    sampler = _SingleShotSampler(gallery, num_repeats, seed) if protocol == "cuhk03" else None
    # Counts, not fractions, so that the CMC does not depend on the chunking through rounding.
    found_by_rank = torch.zeros(max_rank, dtype=torch.int64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    num_valid = torch.zeros((), dtype=torch.int64, device=device)

    for start, dist in rows():
        q_labels = gallery.q_labels[start : start + dist.shape[0]]
        matches = rank_matches(dist, q_labels, q_camids[start : start + dist.shape[0]], gallery)
        valid = matches.count > 0
        if sampler is None:
            found_by_rank += _found_within(matches.first_rank()[valid], max_rank)
        else:
            found_by_rank += _found_within(sampler.first_ranks(dist, q_labels, matches)[:, valid], max_rank)
        ap_sum += matches.average_precision().sum()
        inp_sum += matches.inverse_negative_penalty().sum()
        num_valid += valid.sum()

    valid_count = int(num_valid)
    if valid_count == 0:
        raise ValueError(
            f"no query has a true match (same pid, another camera) in the gallery: all {num_queries} queries skipped; "
            "check q_pids/g_pids and q_camids/g_camids"
        )
    samples = valid_count * (num_repeats if sampler is not None else 1)
    return RankResult(
        cmc=(found_by_rank.to(torch.float64) / samples).cpu(),
        mAP=float(ap_sum) / valid_count,
        mINP=float(inp_sum) / valid_count,
        num_valid_queries=valid_count,
        num_skipped_queries=num_queries - valid_count,
    )


def _found_within(first: torch.Tensor, max_rank: int) -> torch.Tensor:
    """[max_rank] how many of the 0-based first-match ranks `first` (any shape) are < k + 1, for each k."""
    per_rank = torch.bincount(first.reshape(-1).clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    return per_rank.cumsum(0)


class _SingleShotSampler:
    """One random gallery image per identity and repeat, for the "cuhk03" protocol."""

    def __init__(self, gallery: GalleryIndex, num_repeats: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        device = gallery.labels.device
        self.keys = torch.rand(num_repeats, gallery.size, generator=generator, dtype=torch.float64).to(device)
        # Grouped by identity with the largest key first, each group's first item is its representative.
        by_key = torch.argsort(self.keys, dim=1, descending=True, stable=True)
        grouped = by_key.gather(1, torch.argsort(gallery.labels[by_key], dim=1, stable=True))
        self.labels = (gallery.count > 0).nonzero().squeeze(1)
        self.representatives = grouped[:, gallery.start[self.labels]]

    def first_ranks(self, dist: torch.Tensor, q_labels: torch.Tensor, matches: MatchRanks) -> torch.Tensor:
        """[R, C] 0-based rank of each query's sampled true match in each repeat's sampled gallery.

        The sample of the query's own identity is drawn among its true matches
        (junk excluded); the other identities' samples are shared by all queries.
        Meaningless for queries without a true match.
        """
        num_queries, width = matches.index.shape
        in_range = torch.arange(width, device=dist.device) < matches.count[:, None]
        match_keys = self.keys[:, matches.index.clamp(max=self.keys.shape[1] - 1)]
        pick = torch.where(in_range, match_keys, -1.0).argmax(dim=2)
        query = torch.arange(num_queries, device=dist.device)
        match_dist = matches.distance[query, pick][..., None]
        match_index = matches.index[query, pick][..., None]

        reps = self.representatives
        rep_dist = dist[:, reps.reshape(-1)].view(num_queries, *reps.shape).transpose(0, 1)
        other = (self.labels[None, :] != q_labels[:, None])[None]
        before = (rep_dist < match_dist) | ((rep_dist == match_dist) & (reps[:, None, :] < match_index))
        return (before & other).sum(2)
