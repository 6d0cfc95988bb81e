"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) with sparse neighbour sets.

Notation of the standard implementation: N = Q + G points, queries first; O
[N, N] the "original distance" (squared input distance, each column divided by
its maximum, transposed); V [N, N] the k-reciprocal feature, whose rows are
sparse (at most (k1 + 1) * (round(k1 / 2) + 2) non-zeros before query
expansion, k2 times that after). O is never held here: a source gives it by row
blocks and by single entries, and V is kept in CSR form, so memory grows with
N times the number of neighbours, plus the [Q, G] result.

Steps, as in the standard code: the forward neighbours of a point are its
k1 + 1 nearest under O (ties by index); its k-reciprocal set R(i) those of them
that have i among their own k1 + 1 nearest; every c in R(i) whose half-size set
R(c) (round(k1 / 2) + 1 neighbours) shares more than 2/3 of its members with
R(i) adds that set; V[i] is exp(-O[i, j]) over the union, normalised to sum 1;
query expansion replaces V[i] by the mean of V over the k2 nearest of i; the
Jaccard distance is 1 - s / (2 - s) with s[i, j] = sum_k min(V[i, k], V[j, k]);
the result is (1 - lambda) * Jaccard + lambda * O, query rows x gallery columns.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from .rowwise import smallest_k, split_by_budget, split_work

# Work items (pairs, gathered entries) per vectorised step of the sparse stages.
_STEP_ELEMENTS = 1 << 22


class OriginalDistance(Protocol):
    """The normalised distance O of the standard formulation, by blocks."""

    num_queries: int
    num_points: int
    device: torch.device

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """O[start:stop] as a finite float32 block [stop - start, N]."""

    def entries(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """O[i, j] [n] float32; `rows` has been called for every row in `i`."""


@dataclass
class _SparseRows:
    """CSR matrix [N, N]: row i holds columns col[start[i]:start[i + 1]] (ascending) with values val."""

    start: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor

    @staticmethod
    def from_entries(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, num_rows: int) -> "_SparseRows":
        """From entries sorted by (row, col)."""
        start = torch.zeros(num_rows + 1, dtype=torch.int64, device=rows.device)
        start[1:] = torch.bincount(rows, minlength=num_rows).cumsum(0)
        return _SparseRows(start, cols, vals)

    def entries_of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The entries of rows `rows` [m]: for each, which of `rows` holds it [n] and its position in col/val [n]."""
        return _expand(self.start[rows + 1] - self.start[rows], self.start[rows])


def k_reciprocal_distance(
    source: OriginalDistance, k1: int, k2: int, lambda_value: float, chunk: int
) -> torch.Tensor:
    """Re-ranked distance [Q, G] float32; `chunk` rows of O are held at a time."""
    num_queries, num_points = source.num_queries, source.num_points
    depth = neighbour_depth(k1, k2, num_points)
    neighbours = torch.empty(num_points, depth, dtype=torch.int64, device=source.device)
    result = torch.empty(num_queries, num_points - num_queries, dtype=torch.float32, device=source.device)
    for start in range(0, num_points, chunk):
        stop = min(start + chunk, num_points)
        block = source.rows(start, stop)
        neighbours[start:stop] = smallest_k(block, depth)
        if start < num_queries:
            result[start : min(stop, num_queries)] = block[: num_queries - start, num_queries:]
        del block

    v = k_reciprocal_features(source.entries, neighbours, k1, k2)
    for start, stop, target, shared in shared_weights(v, num_queries, chunk):
        blend(result[start:stop], target, shared, lambda_value)
    return result


def neighbour_depth(k1: int, k2: int, num_points: int) -> int:
    """How many nearest neighbours of each point (itself included) the re-ranking reads."""
    return min(max(k1 + 1, k2), num_points)


def blend(original: torch.Tensor, target: torch.Tensor, shared: torch.Tensor, lambda_value: float) -> torch.Tensor:
    """The final distance (1 - lambda) * Jaccard + lambda * O, in place of `original` (O) [rows, G].

    The Jaccard distance is 1 - s / (2 - s), where s is `shared` [n] at the flat
    positions `target` [n] and 0 elsewhere (where it is 1). Same arithmetic as
    the dense formula, entry by entry. `original` may have padded rows (stride(1) 1, any stride(0)).
    """
    width = original.shape[1]
    at = (torch.div(target, width, rounding_mode="floor"), torch.remainder(target, width))
    kept = original[at].mul_(lambda_value)
    original.mul_(lambda_value).add_(1.0 - lambda_value)
    jaccard = shared.div_(torch.sub(2.0, shared)).neg_().add_(1.0)
    original[at] = kept.add_(jaccard.mul_(1.0 - lambda_value))
    return original


def k_reciprocal_features(
    entries: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], neighbours: torch.Tensor, k1: int, k2: int
) -> "_SparseRows":
    """V after query expansion, from each point's nearest neighbours [N, depth] (in (O, index) order)
    and `entries(i, j)`, the entries O[i, j] of the original distance."""
    # round() rounds half to even, like the np.around of the standard code.
    half = round(k1 / 2)
    v = _k_reciprocal_features(entries, neighbours[:, : k1 + 1], neighbours[:, : half + 1])
    if k2 != 1:
        v = _query_expansion(v, neighbours[:, :k2])
    return v


def _reciprocal(forward: torch.Tensor) -> torch.Tensor:
    """[N, k] bool: whether point i is among the forward neighbours of its neighbour forward[i, a]."""
    num_points, k = forward.shape
    out = torch.empty(num_points, k, dtype=torch.bool, device=forward.device)
    step = max(1, _STEP_ELEMENTS // (k * k))
    for start in range(0, num_points, step):
        stop = min(start + step, num_points)
        point = torch.arange(start, stop, device=forward.device)
        out[start:stop] = (forward[forward[start:stop]] == point[:, None, None]).any(2)
    return out


def _k_reciprocal_features(
    entries: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], forward: torch.Tensor, forward_half: torch.Tensor
) -> _SparseRows:
    """The rows of V: Gaussian weights over each point's expanded k-reciprocal set."""
    num_points, k = forward.shape
    k_half = forward_half.shape[1]
    reciprocal = _reciprocal(forward)
    reciprocal_half = _reciprocal(forward_half)
    step = max(1, _STEP_ELEMENTS // (k * k * k_half))
    ranges = [(start, min(start + step, num_points)) for start in range(0, num_points, step)]

    def weights(group: list[tuple[int, int]]) -> tuple[list, list, list]:
        rows, cols, vals = [], [], []
        for start, stop in group:
            _k_reciprocal_step(entries, forward, forward_half, reciprocal, reciprocal_half, start, stop, rows, cols, vals)
        return rows, cols, vals

    parts = split_work(weights, ranges, forward.device)
    rows, cols, vals = (torch.cat([t for part in parts for t in part[i]]) for i in range(3))
    return _SparseRows.from_entries(rows, cols, vals, num_points)


def _k_reciprocal_step(entries, forward, forward_half, reciprocal, reciprocal_half, start, stop, rows, cols, vals):
    """Append to rows, cols, vals the entries of V of points start..stop."""
    num_points = forward.shape[0]
    candidate, is_reciprocal = forward[start:stop], reciprocal[start:stop]
    half, half_ok = forward_half[candidate], reciprocal_half[candidate]
    shared = ((half[..., None] == candidate[:, None, None, :]) & is_reciprocal[:, None, None, :]).any(3)
    overlap = (shared & half_ok).sum(2)
    size = half_ok.sum(2)
    # The standard's test `len(overlap) > 2. / 3 * len(set)`, in the same float64 arithmetic.
    accept = is_reciprocal & (overlap.double() > (2.0 / 3.0) * size.double())
    members = torch.cat(
        [
            torch.where(is_reciprocal, candidate, num_points),
            torch.where(accept[..., None] & half_ok, half, num_points).flatten(1),
        ],
        dim=1,
    )
    members = _unique_per_row(members, num_points)
    local, slot = (members < num_points).nonzero(as_tuple=True)
    point = local + start
    member = members[local, slot]
    weight = torch.exp(-entries(point, member))
    total = torch.zeros(stop - start, dtype=weight.dtype, device=weight.device).index_add_(0, local, weight)
    rows.append(point)
    cols.append(member)
    vals.append(weight / total[local])


def _unique_per_row(values: torch.Tensor, sentinel: int) -> torch.Tensor:
    """Each row's distinct values ascending, then `sentinel` (which must exceed every value) as padding."""
    values = values.sort(dim=1).values
    repeated = torch.zeros_like(values, dtype=torch.bool)
    repeated[:, 1:] = values[:, 1:] == values[:, :-1]
    return values.masked_fill(repeated, sentinel).sort(dim=1).values


def _query_expansion(v: _SparseRows, nearest: torch.Tensor) -> _SparseRows:
    """Row i of the result is the mean of the rows of `v` at `nearest[i]` [N, k2]."""
    num_points, k2 = nearest.shape
    mean_nnz = max(1, v.col.numel() // num_points)
    step = max(1, _STEP_ELEMENTS // (k2 * mean_nnz))
    ranges = [(start, min(start + step, num_points)) for start in range(0, num_points, step)]

    def means(group: list[tuple[int, int]]) -> tuple[list, list, list]:
        rows, cols, vals = [], [], []
        for start, stop in group:
            owner, position = v.entries_of(nearest[start:stop].reshape(-1))
            key = (owner // k2) * num_points + v.col[position]
            key, inverse = torch.unique(key, sorted=True, return_inverse=True)
            total = torch.zeros(key.numel(), dtype=v.val.dtype, device=key.device)
            total.index_add_(0, inverse, v.val[position])
            rows.append(key // num_points + start)
            cols.append(key % num_points)
            vals.append(total / k2)
        return rows, cols, vals

    parts = split_work(means, ranges, nearest.device)
    rows, cols, vals = (torch.cat([t for part in parts for t in part[i]]) for i in range(3))
    return _SparseRows.from_entries(rows, cols, vals, num_points)


def shared_weights(
    v: _SparseRows, num_queries: int, chunk: int
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """s[q, g] = sum_k min(V[q, k], V[Q + g, k]) for `chunk` queries at a time, where it is not 0:
    (start, stop, target, shared), `target` [n] ascending flat positions in the [stop - start, G] block."""
    num_points = v.start.numel() - 1
    num_gallery = num_points - num_queries
    device = v.start.device
    # Inverted index of the gallery rows of V: for each column, the gallery points with a non-zero there.
    gallery_owner, gallery_position = v.entries_of(torch.arange(num_queries, num_points, device=device))
    gallery_col = v.col[gallery_position]
    order = torch.argsort(gallery_col, stable=True)
    holder = gallery_owner[order]
    held = v.val[gallery_position[order]]
    column_count = torch.bincount(gallery_col, minlength=num_points)
    column_start = column_count.cumsum(0) - column_count

    for start in range(0, num_queries, chunk):
        stop = min(start + chunk, num_queries)
        owner, position = v.entries_of(torch.arange(start, stop, device=device))
        col, val = v.col[position], v.val[position]
        targets, weights = [], []
        for first, last in split_by_budget(column_count[col], _STEP_ELEMENTS):
            entry, at = _expand(column_count[col[first:last]], column_start[col[first:last]])
            entry += first
            targets.append(owner[entry] * num_gallery + holder[at])
            weights.append(torch.minimum(val[entry], held[at]))
        target, slot = torch.unique(torch.cat(targets), sorted=True, return_inverse=True)
        # Summed in the order of the entries, as a dense index_add_ would.
        shared = torch.zeros(target.numel(), dtype=torch.float32, device=device).index_add_(0, slot, torch.cat(weights))
        yield start, stop, target, shared


def _expand(count: torch.Tensor, begin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All of the ranges [begin[r], begin[r] + count[r]) ([m] each), concatenated: range r [n] and element [n]."""
    entry = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)
    offset = torch.arange(entry.numel(), device=count.device) - (count.cumsum(0) - count)[entry]
    return entry, begin[entry] + offset
