"""Where each query's true matches fall in its ranked gallery, for one chunk of queries.

Tie rule (see rowwise.py): a query's gallery is ranked by (distance, gallery
index), ascending, i.e. a stable sort by distance. Every function here follows
it exactly, so the matrix-based and the feature-based evaluations agree on ties.

No row is sorted. A query has few true matches: they are sorted, and each
negative closer than the last match is counted in the gap between consecutive
matches it falls into. The rank of the k-th match is then k plus the number of
negatives in the gaps before it. Negatives beyond the last match cannot change
any metric. For a query with few negatives before its last match (most queries
of a reasonable model) those few are picked out and placed by one binary search
over the matches of all queries of the chunk; a query with many is searched
whole, against its own matches.
"""

import math
from dataclasses import dataclass

import torch

# Negatives placed per vectorised step, which bounds the memory of the per-negative lists.
_STEP_ELEMENTS = 1 << 20
# A query is searched whole when more than 1/_WHOLE_ROW_FRACTION of its gallery precedes its last match.
_WHOLE_ROW_FRACTION = 4


class GalleryIndex:
    """Gallery items grouped by identity.

    Each query then finds its own identity's items (its true matches and its
    junk) by lookup instead of comparing its pid with the whole gallery.
    Identities are relabelled 0..P-1 over the union of query and gallery pids.
    """

    def __init__(self, q_pids: torch.Tensor, g_pids: torch.Tensor, g_camids: torch.Tensor) -> None:
        _, labels = torch.unique(torch.cat([q_pids, g_pids]), return_inverse=True)
        self.size = g_pids.numel()
        self.q_labels = labels[: q_pids.numel()]
        self.labels = labels[q_pids.numel():]
        self.camids = g_camids
        # Stable, so that the items of one identity stay in ascending gallery order.
        self.by_label = torch.argsort(self.labels, stable=True)
        self.count = torch.bincount(self.labels, minlength=int(labels.max()) + 1)
        self.start = torch.cumsum(self.count, 0) - self.count

    def members(self, q_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gallery indices [C, L] of each query's identity, ascending, and which of them exist [C, L]."""
        count = self.count[q_labels]
        width = max(int(count.max()), 1)
        offset = torch.arange(width, device=q_labels.device)
        present = offset < count[:, None]
        position = (self.start[q_labels][:, None] + offset).clamp_(max=self.size - 1)
        return self.by_label[position], present


@dataclass
class MatchRanks:
    """The true matches of C queries, at most L per query.

    count: [C] number of true matches (same pid, other camera).
    distance: [C, L] their distances in ranking order; +inf past `count`.
    index: [C, L] their gallery indices in ranking order; G past `count`.
    rank: [C, L] 0-based position of each match in the query's ranked gallery
        once its junk (same pid, same camera) is removed; meaningless past `count`.
    """

    count: torch.Tensor
    distance: torch.Tensor
    index: torch.Tensor
    rank: torch.Tensor

    def _in_range(self) -> torch.Tensor:
        return torch.arange(self.rank.shape[1], device=self.rank.device) < self.count[:, None]

    def first_rank(self) -> torch.Tensor:
        """[C] 0-based rank of the first true match."""
        return self.rank[:, 0]

    def average_precision(self) -> torch.Tensor:
        """[C] float64 non-interpolated AP: mean over matches of precision at the match; 0 without matches."""
        hits = torch.arange(1, self.rank.shape[1] + 1, device=self.rank.device, dtype=torch.float64)
        precision = hits / (self.rank + 1).to(torch.float64)
        return (precision * self._in_range()).sum(1) / self.count.clamp(min=1)

    def inverse_negative_penalty(self) -> torch.Tensor:
        """[C] float64 INP (Ye et al.): matches / (1-based rank of the last match); 0 without matches."""
        last = self.rank.gather(1, (self.count - 1).clamp(min=0)[:, None]).squeeze(1)
        return self.count.to(torch.float64) / (last + 1).to(torch.float64) * (self.count > 0)


def rank_matches(dist: torch.Tensor, q_labels: torch.Tensor, q_camids: torch.Tensor, gallery: GalleryIndex) -> MatchRanks:
    """Ranks of the true matches of C queries, from their finite distance rows `dist` [C, G].

    `dist` is overwritten: the items of each query's own identity are set to +inf.
    """
    num_queries, num_gallery = dist.shape
    members, present = gallery.members(q_labels)
    is_match = present & (gallery.camids[members] != q_camids[:, None])
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    # Members are in ascending gallery order, so a stable sort gives the (distance, index) order.
    distance, order = torch.sort(torch.where(is_match, dist.gather(1, members), inf), dim=1, stable=True)
    count = is_match.sum(1)
    width = distance.shape[1]
    in_range = torch.arange(width, device=dist.device) < count[:, None]
    index = torch.where(in_range, members.gather(1, order), num_gallery)

    # Every distance of these queries is at least `low`: see _MatchSequence.
    low = dist.amin()
    # What is left are the negatives: the own identity's items are matches (placed above) or junk (not ranked).
    row, slot = present.nonzero(as_tuple=True)
    dist[row, members[row, slot]] = inf
    last = torch.where(count > 0, distance.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1), -inf)
    sequence = _MatchSequence(distance, index, count, low, last)
    per_gap = torch.zeros(num_queries * (width + 1), dtype=torch.int64, device=dist.device)
    # Negatives after the last match change no rank. With a reasonable model they are the great
    # majority: the few before it are picked out and placed one by one, in steps of bounded size.
    # A query with many before it (a hard query, or a poor model) is searched whole instead.
    candidate = dist <= last[:, None]
    whole = (candidate.sum(1, dtype=torch.int32) * _WHOLE_ROW_FRACTION > num_gallery).nonzero().squeeze(1)
    for rows in whole.split(max(1, _STEP_ELEMENTS // num_gallery)):
        candidate[rows] = False
        _count_whole_rows(per_gap, dist[rows], rows, distance, count, sequence)
    flat = candidate.view(-1).nonzero().squeeze(1)
    flat_dist = dist.view(-1)
    for step in flat.split(_STEP_ELEMENTS):
        row = torch.div(step, num_gallery, rounding_mode="floor")
        gap = sequence.matches_before(row, step - row * num_gallery, flat_dist.gather(0, step))
        per_gap += torch.bincount(row.mul_(width + 1).add_(gap), minlength=per_gap.numel())
    negatives_before = per_gap.view(num_queries, width + 1).cumsum(1)[:, :width]
    rank = torch.arange(width, device=dist.device) + negatives_before
    return MatchRanks(count, distance, index, rank)


def _count_whole_rows(
    per_gap: torch.Tensor,
    dist: torch.Tensor,
    rows: torch.Tensor,
    distance: torch.Tensor,
    count: torch.Tensor,
    sequence: "_MatchSequence",
) -> None:
    """Add to `per_gap` the negatives of queries `rows` [h], from their whole rows `dist` [h, G]."""
    width = distance.shape[1]
    distance, count = distance[rows], count[rows]
    gap = torch.searchsorted(distance, dist, side="left")
    # Exact except where a negative's distance equals a match's: those are placed again exactly.
    tied_row, tied_col = ((gap < count[:, None]) & (distance.gather(1, gap.clamp(max=width - 1)) == dist)).nonzero(
        as_tuple=True
    )
    bucket = gap.add_(rows[:, None] * (width + 1))
    per_gap += torch.bincount(bucket.view(-1), minlength=per_gap.numel())
    query = rows[tied_row]
    exact = sequence.matches_before(query, tied_col, dist[tied_row, tied_col])
    per_gap.index_add_(0, bucket[tied_row, tied_col], torch.full_like(exact, -1))
    per_gap.index_add_(0, query * (width + 1) + exact, torch.ones_like(exact))


class _MatchSequence:
    """The matches of all C queries as one sorted sequence, to place any negative with one binary search.

    Query q's match at distance d gets the float64 key q * K + (d - low), where
    `low` bounds every distance from below and K exceeds twice their spread, so
    the keys increase with the query and, within a query, never decrease with
    the distance. Rounding may merge keys of nearby distances, and equal
    distances need the index rule: both are settled by exact comparisons.
    """

    def __init__(self, distance: torch.Tensor, index: torch.Tensor, count: torch.Tensor, low, last) -> None:
        valid = torch.arange(distance.shape[1], device=distance.device) < count[:, None]
        self.distance = distance[valid]
        self.index = index[valid]
        self.start = count.cumsum(0) - count
        self.count = count
        spread = float((last[count > 0].max() - low).clamp(min=0)) if bool((count > 0).any()) else 0.0
        self.low = low.to(torch.float64)
        self.scale = 2.0 ** (math.frexp(spread)[1] + 1)
        if not math.isfinite(self.scale * (count.numel() + 1)):
            raise ValueError(f"distances must span less than about 1e300 to be ranked, got a span of {spread}")
        query = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
        self.keys = self._key(query, self.distance)

    def _key(self, query: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        return (distance.to(torch.float64) - self.low).add_(query.to(torch.float64), alpha=self.scale)

    def matches_before(self, row: torch.Tensor, col: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """[n] how many matches of query `row` precede its negative `col` at distance `value` (all [n])."""
        if self.keys.numel() == 0:
            return torch.zeros_like(row)
        key = self._key(row, value)
        position = torch.searchsorted(self.keys, key, side="left")
        last = self.keys.numel() - 1
        # Matches before `position` have smaller keys, hence smaller distances. Those from `position`
        # on with an equal key (necessarily of the same query) may still precede the negative:
        # rounding merged their distances, or the distances are equal and the match has the
        # smaller gallery index.
        # gather, not indexing: far faster for long index lists on the CPU.
        undecided = (self.keys.gather(0, position.clamp(max=last)) == key).nonzero().squeeze(1)
        end = self.start[row[undecided]] + self.count[row[undecided]]
        while undecided.numel() > 0:
            at = position[undecided]
            d = self.distance[at.clamp(max=last)]
            v = value[undecided]
            precedes = (at < end) & ((d < v) | ((d == v) & (self.index[at.clamp(max=last)] < col[undecided])))
            undecided, end = undecided[precedes], end[precedes]
            position[undecided] += 1
        return position.sub_(self.start.gather(0, row))
