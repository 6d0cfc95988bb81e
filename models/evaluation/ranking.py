"""Where each query's true matches fall in its ranked gallery, for one chunk of queries.

Tie rule (see rowwise.py): a query's gallery is ranked by (distance, gallery
index), ascending, i.e. a stable sort by distance. Every function here follows
it exactly, so the matrix-based and the feature-based evaluations agree on ties.

No row is sorted. A query has few true matches: they are sorted, and each
negative closer than the last match is counted in the gap between consecutive
matches it falls into. The rank of the k-th match is then k plus the number of
negatives in the gaps before it. Negatives beyond the last match cannot change
any metric, so only the usually few closer ones are looked at.
"""

from dataclasses import dataclass

import torch

from .rowwise import pack_by_row


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
    """Ranks of the true matches of C queries, from their distance rows `dist` [C, G] (finite)."""
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

    last = distance.gather(1, (count - 1).clamp(min=0)[:, None])
    last = torch.where(count[:, None] > 0, last, -inf)
    rows, cols = (dist <= last).nonzero(as_tuple=True)
    # Items of the query's own identity are either matches (placed already) or junk (not ranked).
    negative = gallery.labels[cols] != q_labels[rows]
    rows, cols = rows[negative], cols[negative]
    gap = _matches_before(distance, index, rows, cols, dist[rows, cols])

    per_gap = torch.bincount(rows * (width + 1) + gap, minlength=num_queries * (width + 1))
    negatives_before = per_gap.view(num_queries, width + 1).cumsum(1)[:, :width]
    rank = torch.arange(width, device=dist.device) + negatives_before
    return MatchRanks(count, distance, index, rank)


def _matches_before(
    distance: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """[n] how many matches of query `rows[i]` precede negative `cols[i]` (distance `values[i]`).

    `distance`, `index`: [C, L] matches in ranking order; `rows` ascending.
    """
    num_queries, width = distance.shape
    if rows.numel() == 0:
        return rows
    # Pack each query's negatives into one padded row for a batched searchsorted.
    slot, packed_width = pack_by_row(rows, num_queries)
    padded = torch.full((num_queries, packed_width), float("inf"), dtype=values.dtype, device=values.device)
    padded[rows, slot] = values
    gap = torch.searchsorted(distance, padded, side="left")[rows, slot]

    # A negative at exactly a match's distance goes after the tied matches with smaller gallery index.
    flat_distance = distance.reshape(-1)
    flat_index = index.reshape(-1)
    first_tied = rows * width + gap.clamp(max=width - 1)
    tied = ((gap < width) & (flat_distance[first_tied] == values)).nonzero().squeeze(1)
    base = gap[tied]
    extra = torch.zeros_like(base)
    active = torch.arange(tied.numel(), device=rows.device)
    step = 0
    while active.numel() > 0:
        element = tied[active]
        k = base[active] + step
        position = rows[element] * width + k.clamp(max=width - 1)
        precedes = (k < width) & (flat_distance[position] == values[element]) & (flat_index[position] < cols[element])
        active = active[precedes]
        extra[active] += 1
        step += 1
    gap[tied] = base + extra
    return gap
