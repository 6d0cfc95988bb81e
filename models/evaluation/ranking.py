"""Where each query's true matches fall in its ranked gallery, for one chunk of queries.

Tie rule (see rowwise.py): a query's gallery is ranked by (distance, gallery
index), ascending, i.e. a stable sort by distance. Every function here follows
it exactly, so the matrix-based and the feature-based evaluations agree on ties.

No row is sorted. A query has few true matches: they are sorted, and each
negative closer than the last match is counted in the gap between consecutive
matches it falls into. The rank of the k-th match is then k plus the number of
negatives in the gaps before it. Negatives beyond the last match cannot change
any metric; when they are the great majority (a reasonable model), topk picks
out the closer ones and only those are searched.
"""

from dataclasses import dataclass

import torch

# A query's negatives are picked out with topk when at most 1/_TOPK_FRACTION of them precede its last match.
_TOPK_FRACTION = 4


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

    # What is left are the negatives: the own identity's items are matches (placed above) or junk (not ranked).
    row, slot = present.nonzero(as_tuple=True)
    dist[row, members[row, slot]] = inf
    last = torch.where(count > 0, distance.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1), -inf)
    # Negatives after the last match change no rank. Where a query has few before its last match,
    # topk picks them out far more cheaply than searching its whole row; the extra ones it returns
    # land after the last match and are ignored like the rest. Queries are grouped by the power of
    # two of that number so that one hard query does not make topk slow for the others.
    within = (dist <= last[:, None]).sum(1, dtype=torch.int32)
    group = torch.where(within * _TOPK_FRACTION <= num_gallery, torch.log2(within + 1.0).ceil().long(), -1)
    per_gap = torch.zeros(num_queries * (width + 1), dtype=torch.int64, device=dist.device)
    for g in group.unique().tolist():
        rows = (group == g).nonzero().squeeze(1)
        block = dist[rows]
        if g >= 0:
            values, cols = block.topk(int(within[rows].max()), dim=1, largest=False, sorted=False)
        else:
            values = block
            cols = torch.arange(num_gallery, device=dist.device).expand_as(block)
        gap = _matches_before(distance[rows], index[rows], count[rows], values, cols)
        per_gap += torch.bincount((gap + rows[:, None] * (width + 1)).view(-1), minlength=per_gap.numel())
    negatives_before = per_gap.view(num_queries, width + 1).cumsum(1)[:, :width]
    rank = torch.arange(width, device=dist.device) + negatives_before
    return MatchRanks(count, distance, index, rank)


def _matches_before(
    distance: torch.Tensor, index: torch.Tensor, count: torch.Tensor, values: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """[C, K] how many matches of each query precede its negative `cols` (distance `values`), both [C, K].

    `distance`, `index`: [C, L] the matches in ranking order, `count` [C] of them.
    """
    width = distance.shape[1]
    gap = torch.searchsorted(distance, values, side="left")
    # A negative at exactly a match's distance goes after the tied matches with smaller gallery index.
    tied = (gap < count[:, None]) & (distance.gather(1, gap.clamp(max=width - 1)) == values)
    row, slot = tied.nonzero(as_tuple=True)
    value, col, base = values[row, slot], cols[row, slot], gap[row, slot]
    extra = torch.zeros_like(base)
    active = torch.arange(row.numel(), device=row.device)
    step = 0
    while active.numel() > 0:
        k = base[active] + step
        position = k.clamp(max=width - 1)
        precedes = (
            (k < width)
            & (distance[row[active], position] == value[active])
            & (index[row[active], position] < col[active])
        )
        active = active[precedes]
        extra[active] += 1
        step += 1
    gap[row, slot] = base + extra
    return gap
