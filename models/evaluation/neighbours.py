"""The original distance O of k-reciprocal re-ranking from features, each pair's distance computed once.

Re-ranking needs each point's nearest neighbours among all N = Q + G points,
hence every pairwise distance: at MSMT17 size (93,820 points, 2048-d) those
GEMMs are the whole cost. Distances are symmetric, so the points are cut into
square blocks and only the blocks on and above the diagonal are computed; each
block [I, J] serves the rows of I and, transposed, the rows of J. Every point
keeps its `width` nearest so far (a few more than re-ranking reads), replaced
only by distances below its current farthest kept one (after the first block,
a comparison and a handful of hits per row), plus its farthest distance, which
O divides by. Memory: one block, and N x width candidates.

O[i, j] = f(d_ij)^2 / max_r f(d_ir)^2, squared in the input dtype then cast to
float32 as in the standard code, with f(d) = |d| (cosine: 1 - cos may round
below 0) or max(d, 0) (squared Euclidean, clamped as `pairwise_distance` does).
O is a non-decreasing function of d for d >= 0 within a row, so a point's
nearest by O are among its nearest by d, except where rounding ties O beyond the
candidates: then, and only then (checked per point), the point's whole row is
recomputed.
"""

import math

import torch

from ._checks import check_finite
from .distance import _NORM_EPS
from .rowwise import smallest_k

# Candidates kept per point beyond the neighbours re-ranking reads: slack for ties of O.
CANDIDATE_MARGIN = 8

# Items per row of a product's output and per side of a block are multiples of this (64 bytes of float32):
# MKL's float32 GEMM ran at 166 GFLOP/s on 5787 x 5787 x 2048 blocks and 193 on 5776 x 5776 (2-core AMD EPYC),
# 148 vs 166 on 357 x 82,161 rows written with 82,161 vs 82,176 items between rows.
ALIGN = 16


def squared32(t: torch.Tensor) -> torch.Tensor:
    """Square in the input dtype, then float32, as `np.power(d, 2).astype(np.float32)`."""
    return t.square().to(torch.float32)


def check_scale(scale: torch.Tensor, start: int) -> None:
    if bool((scale <= 0).any()):
        point = int((scale <= 0).nonzero()[0, 0]) + start
        raise ValueError(
            f"point {point} (queries first, then gallery) is at distance 0 from every point: "
            "re-ranking divides each column by its maximum distance"
        )


def block_edge(num_points: int, chunk: int, width: int) -> int:
    """Points per side of the square blocks: at most `chunk` rows' worth of distances (chunk * N) per
    block, and at most N / 8 (down to 1024) so that the diagonal blocks, computed whole, add at most
    1/8 to the products; a multiple of `ALIGN` where that leaves at least `width`."""
    edge = min(math.isqrt(chunk * num_points), max(1024, -(-num_points // 8)))
    if edge > ALIGN:
        edge -= edge % ALIGN
    return min(num_points, max(width, edge))


def aligned_addmm(bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """bias + alpha * x @ y.T [len(x), len(y)], written into rows of a multiple of `ALIGN` items (the
    result is a view with stride (padded length, 1): row-contiguous, not contiguous)."""
    n = y.shape[0]
    out = torch.empty((x.shape[0], n + (-n) % ALIGN), dtype=x.dtype, device=x.device)[:, :n]
    return torch.addmm(bias, x, y.t(), alpha=alpha, out=out)


class FeatureNeighbours:
    """O from features `qf` [Q, D] and `gf` [G, D]: its rows by blocks and single entries, and every point's
    `depth` nearest neighbours by (O, index)."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str, depth: int, chunk: int) -> None:
        points = torch.cat([qf, gf])
        self.metric = metric
        if metric == "cosine":
            # Unit vectors: d = 1 - u_i . u_j, one GEMM with no correction but the subtraction.
            points.mul_(torch.linalg.vector_norm(points, dim=1, keepdim=True).clamp_min_(_NORM_EPS).reciprocal_())
            self.terms = None
        else:
            self.terms = torch.linalg.vector_norm(points, dim=1).square()
        self.points = points
        self.num_queries = qf.shape[0]
        self.num_points = points.shape[0]
        self.device = points.device
        self.depth = depth
        self.width = min(depth + CANDIDATE_MARGIN, self.num_points)
        self.block = block_edge(self.num_points, chunk, self.width)
        self._one = torch.ones((1, 1), dtype=points.dtype, device=self.device)
        self.scale = None
        self.neighbours = self._nearest()

    # -----------------------------------------------------------------------------------------
    # Distances and O

    def distances(self, a: int, b: int, c: int, e: int) -> torch.Tensor:
        """d between points a..b (rows) and c..e (columns), [b - a, e - c], unclamped."""
        x, y = self.points[a:b], self.points[c:e]
        if self.terms is None:
            return aligned_addmm(self._one, x, y, -1.0)
        return aligned_addmm(self.terms[None, c:e], x, y, -2.0).add_(self.terms[a:b, None])

    def _f(self, d: torch.Tensor) -> torch.Tensor:
        # Cosine: |d|, only ever squared, and d^2 = |d|^2 exactly.
        return d if self.terms is None else d.clamp(min=0.0)

    def _original(self, d: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        """O from distances d [r, m] of rows `rows` (float32)."""
        return squared32(self._f(d)).div_(self.scale[rows, None])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """O[start:stop, Q:] (queries x gallery) float32: the distances recomputed, then scaled (rows padded
        as `aligned_addmm`'s)."""
        d = self.distances(start, stop, self.num_queries, self.num_points)
        check_finite("distances computed from qf and gf (check the features)", d, start)
        # As `_original`, in place where the dtype allows.
        if d.dtype != torch.float32:
            return self._original(d, slice(start, stop))
        if self.terms is not None:
            d.clamp_(min=0.0)
        return d.square_().div_(self.scale[start:stop, None])

    def entries(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """O[i, j] [n] float32: from the kept candidates where (i, j) or (j, i) is one, else computed."""
        n = self.num_points
        position = torch.searchsorted(self._keys, i * n + j).clamp_(max=self._keys.numel() - 1)
        found = self._keys[position] == i * n + j
        d = torch.where(found, self._values[position], 0)
        missing = (~found).nonzero().squeeze(1)
        if missing.numel():
            d[missing] = self._paired(i[missing], j[missing])
        return squared32(self._f(d)).div_(self.scale[i])

    def _paired(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        step = max(1, (1 << 23) // self.points.shape[1])
        parts = []
        for a, b in zip(i.split(step), j.split(step)):
            dot = torch.bmm(self.points[a].unsqueeze(1), self.points[b].unsqueeze(2)).view(-1)
            if self.terms is None:
                parts.append(1.0 - dot)
            else:
                parts.append((self.terms[b] - 2.0 * dot).add_(self.terms[a]))
        return torch.cat(parts)

    # -----------------------------------------------------------------------------------------
    # Nearest neighbours

    def _nearest(self) -> torch.Tensor:
        n, width, edge = self.num_points, self.width, self.block
        dtype = self.points.dtype
        self._kept = torch.full((n, width), float("inf"), dtype=dtype, device=self.device)
        self._kept_index = torch.zeros((n, width), dtype=torch.int64, device=self.device)
        farthest = torch.full((n,), -float("inf"), dtype=dtype, device=self.device)
        starts = list(range(0, n, edge))
        for a in starts:
            b = min(a + edge, n)
            for c in starts:
                if c < a:
                    continue
                e = min(c + edge, n)
                d = self.distances(a, b, c, e)
                torch.maximum(farthest[a:b], d.amax(1), out=farthest[a:b])
                self._keep(d, a, c, by_rows=True)
                if c != a:
                    torch.maximum(farthest[c:e], d.amax(0), out=farthest[c:e])
                    self._keep(d, c, a, by_rows=False)
                del d
        kept, kept_index = self._kept, self._kept_index
        check_finite("distances computed from qf and gf (check the features)", farthest[:, None], 0)
        check_finite("distances computed from qf and gf (check the features)", kept, 0)
        # The largest f(d) of a row: its largest d, or (cosine, rounding below 0) minus its smallest.
        if self.terms is None:
            self.scale = squared32(torch.maximum(farthest.abs(), kept[:, 0].abs()))
        else:
            self.scale = squared32(farthest.clamp(min=0.0))
        check_scale(self.scale, 0)

        # Entries by (i * N + j), for `entries`: each kept pair in both directions.
        keys = torch.cat([torch.arange(n, device=self.device)[:, None] * n + kept_index,
                          kept_index * n + torch.arange(n, device=self.device)[:, None]]).view(-1)
        self._keys, order = torch.sort(keys)
        self._values = torch.cat([kept, kept]).view(-1)[order]

        # The candidates in (O, index) order.
        by_index = kept_index.argsort(1)
        kept_index = kept_index.gather(1, by_index)
        kept = kept.gather(1, by_index)
        original = self._original(kept, slice(None))
        order = torch.sort(original, dim=1, stable=True).indices
        nearest = kept_index.gather(1, order[:, : self.depth])
        if width < n:
            # Every point not kept is at a distance >= the farthest kept one (`edge`), so at an O of
            # at least its O: the nearest are exact unless that O ties with the depth-th smallest one.
            edge_d = kept.amax(1)
            edge_o = self._original(edge_d[:, None], slice(None)).squeeze(1)
            depth_o = original.gather(1, order[:, self.depth - 1 : self.depth]).squeeze(1)
            exact = (edge_o > depth_o) & ((edge_d >= 0) | (self.terms is not None))
            redo = (~exact).nonzero().squeeze(1)
            for rows in redo.split(max(1, (1 << 22) // n)) if redo.numel() else ():
                nearest[rows] = smallest_k(self._original_rows(rows), self.depth)
        del self._kept, self._kept_index
        return nearest

    def _original_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Whole rows of O [r, N] for the points `rows`."""
        x = self.points[rows]
        if self.terms is None:
            d = aligned_addmm(self._one, x, self.points, -1.0)
        else:
            d = aligned_addmm(self.terms[None, :], x, self.points, -2.0).add_(self.terms[rows, None])
        return self._original(d, rows)

    def _keep(self, d: torch.Tensor, target: int, partner: int, by_rows: bool) -> None:
        """Merge block `d` into the candidates of points target.. (its rows if `by_rows`, else its columns),
        whose partners are the points partner.. (its other side)."""
        size = d.shape[0] if by_rows else d.shape[1]
        kept, kept_index = self._kept[target : target + size], self._kept_index[target : target + size]
        edge = kept[:, -1]
        if not bool(torch.isfinite(edge).all()):
            # First block of these points: the `width` smallest of each.
            k = min(self.width, d.shape[1] if by_rows else d.shape[0])
            values, index = d.topk(k, dim=1 if by_rows else 0, largest=False, sorted=True)
            if not by_rows:
                values, index = values.t(), index.t()
            merged = torch.cat([kept, values], 1)
            merged_index = torch.cat([kept_index, index + partner], 1)
            top, at = merged.topk(self.width, dim=1, largest=False, sorted=True)
            kept.copy_(top)
            kept_index.copy_(merged_index.gather(1, at))
            return
        # Only distances below a point's farthest kept one can enter its candidates.
        if by_rows:
            row, col = (d < edge[:, None]).nonzero(as_tuple=True)
            point, other = row, col
        else:
            row, col = (d < edge[None, :]).nonzero(as_tuple=True)
            order = torch.argsort(col, stable=True)
            row, col = row[order], col[order]
            point, other = col, row
        if point.numel() == 0:
            return
        values = d[row, col]
        points, group = torch.unique_consecutive(point, return_inverse=True)
        per_point = torch.bincount(group, minlength=points.numel())
        slot = torch.arange(point.numel(), device=d.device) - (per_point.cumsum(0) - per_point)[group]
        new = torch.full((points.numel(), int(per_point.max())), float("inf"), dtype=d.dtype, device=d.device)
        new_index = torch.zeros(new.shape, dtype=torch.int64, device=d.device)
        new[group, slot] = values
        new_index[group, slot] = other + partner
        merged = torch.cat([kept[points], new], 1)
        merged_index = torch.cat([kept_index[points], new_index], 1)
        top, at = merged.topk(self.width, dim=1, largest=False, sorted=True)
        kept[points] = top
        kept_index[points] = merged_index.gather(1, at)
