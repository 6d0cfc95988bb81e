"""Where each query's true matches fall in its ranked gallery, for one chunk of queries.

Tie rule (see rowwise.py): a query's gallery is ranked by (distance, gallery
index), ascending, i.e. a stable sort by distance. Every function here follows
it exactly, so the matrix-based and the feature-based evaluations agree on ties.

No row is sorted, and no row is searched. A query has few true matches: they
are sorted, and the rank of each is the number of gallery items that precede it
(by distance, then index), less the junk among them. Those numbers come from a
histogram of each distance row over a few thousand bins spanning the query's
matches (`_count_before`): the bin of a distance is a monotone function of it,
computed in a handful of elementwise passes, so every item in a bin below a
match's bin precedes the match, and only the items that share a bin with some
match (a few per match) are compared with the matches exactly.

On the CPU a compiled kernel (`torch.ops.rga_ops_eval.count_before`, built with
the extension) does it in one read of the distances: items before a query's
first match or after its last are counted with vector compares, only those in
between are binned and placed. Elsewhere (CUDA, or without the extension) the
same algorithm runs in PyTorch ops, a few elementwise passes per block of rows,
at a cost per distance that is the same for an easy query (matches at the top)
and a hopeless one (matches all through its ranking).
"""

from dataclasses import dataclass

import torch

from .rowwise import split_work

# The compiled one-pass kernel (csrc/cpu/rank_count.cpp) for CPU tensors, where the extension is
# loaded; `_count_before_ops` below is the same computation in PyTorch ops, for every device.
_KERNEL = "kernel"
_OPS = "ops"
# Tests set this to "ops" to run the PyTorch path on the CPU too.
_FORCE_PATH: str | None = None


def _kernel_available() -> bool:
    try:
        from rga_ops._extension import STATUS
    except ImportError:
        return False
    return STATUS.loaded and hasattr(torch.ops, "rga_ops_eval") and hasattr(torch.ops.rga_ops_eval, "count_before")


def count_path(device: torch.device) -> str:
    """Which implementation of `_count_before` runs on `device`: "kernel" or "ops"."""
    if _FORCE_PATH is not None:
        return _FORCE_PATH
    return _KERNEL if device.type == "cpu" and _kernel_available() else _OPS

# Distances binned per step: small enough for the working buffers (a [rows, G] float and int64 pair)
# to stay in the caches, at least _MIN_STEP rows (a 64-byte line of float32 in a column-major block).
_BLOCK_ELEMENTS = 1 << 18
_MIN_STEP = 16
# Items compared exactly per batch: bounds their memory where many share a bin with a match (ties).
_EXACT_ELEMENTS = 1 << 20
# Bins per row: one per this many gallery items (at least 4). Fewer bins mean more items compared exactly.
_DISTANCES_PER_BIN = 4


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
    """Ranks of the true matches of C queries, from their finite distance rows `dist` [C, G] (not modified).

    `dist` may be a transposed view of a [G, C] block (as `evaluate_features` passes it): the
    binning reads it in that layout, so that it is never copied to rows.
    """
    num_gallery = dist.shape[1]
    members, present = gallery.members(q_labels)
    is_match = present & (gallery.camids[members] != q_camids[:, None])
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    # The query's own identity (its matches and its junk) in ranking order: members are in ascending
    # gallery order, so a stable sort by distance gives the (distance, index) order.
    own, order = torch.sort(torch.where(present, dist.gather(1, members), inf), dim=1, stable=True)
    own_match = is_match.gather(1, order)
    own_junk = present.gather(1, order) & ~own_match
    junk_before = own_junk.cumsum(1) - own_junk.long()
    count = is_match.sum(1)
    width = max(int(count.max()), 1)
    # The matches first, still in ranking order.
    pick = torch.sort((~own_match).to(torch.int8), dim=1, stable=True).indices[:, :width]
    in_range = torch.arange(width, device=dist.device) < count[:, None]
    distance = torch.where(in_range, own.gather(1, pick), inf)
    index = torch.where(in_range, members.gather(1, order.gather(1, pick)), num_gallery)
    rank = _count_before(dist, distance, index, count) - junk_before.gather(1, pick)
    # Past `count` the numbers mean nothing; keep them positive so that no metric sees a division by zero.
    rank = torch.where(in_range, rank, num_gallery)
    return MatchRanks(count, distance, index, rank)


def _count_before(dist: torch.Tensor, distance: torch.Tensor, index: torch.Tensor, count: torch.Tensor,
                  path: str | None = None) -> torch.Tensor:
    """[C, L] for each match k of each query, how many gallery items precede it: (d_j, j) < (distance, index).

    `dist` [C, G] finite; `distance`, `index` [C, L]: each query's matches in ranking order, the
    first `count` [C] of each row valid. Meaningless past `count`. `path`: "kernel" (the compiled
    one-pass kernel, CPU tensors), "ops" (PyTorch ops, any device) or None (`count_path`).
    """
    if (path or count_path(dist.device)) == _KERNEL:
        return torch.ops.rga_ops_eval.count_before(dist, distance, index, count)
    return _count_before_ops(dist, distance, index, count)


def _count_before_ops(dist: torch.Tensor, distance: torch.Tensor, index: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
    """`_count_before` in PyTorch ops (the kernel's algorithm in a few passes per block of rows).

    Each row is binned on its own scale: the item at distance d goes to bin
    floor(clamp((d - origin) * scale, 0, B)) with `origin` just below the first
    match and `scale` putting the last match just below bin B, so bin 0 holds
    the items before the first match and bin B those after the last one. Every
    step (a subtraction, a multiplication, a clamp, a truncation) is rounded
    monotonically, so the bin never decreases with the distance; it is the same
    function for every item of the row, the matches included (their bins are
    read from the binned row, not recomputed). Hence an item in a bin below a
    match's bin precedes the match, one in a bin above follows it, and only the
    items of the bins that hold a match are compared with the matches exactly.
    Rounding can only make bins coarser, never wrong.
    """
    num_queries, num_gallery = dist.shape
    width = distance.shape[1]
    device = dist.device
    bins = max(4, num_gallery // _DISTANCES_PER_BIN)
    step = min(num_queries, max(_MIN_STEP, _BLOCK_ELEMENTS // num_gallery))
    origin, scale = _bin_scale(distance, count, bins)
    work = torch.float64 if dist.dtype == torch.float64 else torch.float32
    origin, scale = origin.to(work)[:, None], scale.to(work)[:, None]
    out = torch.empty(num_queries, width, dtype=torch.int64, device=device)
    ranges = [(start, min(start + step, num_queries)) for start in range(0, num_queries, step)]
    split_work(lambda group: _count_rows(dist, distance, index, count, origin, scale, bins, group, out), ranges, device)
    return out


def _count_rows(
    dist: torch.Tensor,
    distance: torch.Tensor,
    index: torch.Tensor,
    count: torch.Tensor,
    origin: torch.Tensor,
    scale: torch.Tensor,
    bins: int,
    ranges: list[tuple[int, int]],
    out: torch.Tensor,
) -> None:
    """`_count_before` for the consecutive row ranges `ranges` (start, stop), into their rows of `out`."""
    num_gallery = dist.shape[1]
    width = distance.shape[1]
    device = dist.device
    first, last = ranges[0][0], ranges[-1][1]
    step = max(stop - start for start, stop in ranges)
    # Reused working buffers: fresh large allocations cost page faults on every step. The float one
    # has the layout of `dist`, so that the first pass reads it in order; the int64 one is by rows.
    if dist.stride(1) == 1 or dist.shape[0] == 1:
        binned = torch.empty(step, num_gallery, dtype=origin.dtype, device=device)
    else:
        binned = torch.empty(num_gallery, step, dtype=origin.dtype, device=device).t()
    bin_of = torch.empty(step, num_gallery, dtype=torch.int64, device=device)
    one = torch.ones((), dtype=torch.int64, device=device)
    valid = torch.arange(width, device=device) < count[:, None]
    match_col = index.clamp(max=num_gallery - 1)
    exact, pending = [], 0

    def place_exact_items() -> None:
        # Each of those items precedes exactly the matches from `placed` on.
        row, col, placed, in_bin = (torch.cat(parts) for parts in zip(*exact))
        value = _entries(dist, row, col)
        _place_exactly(placed, in_bin, row, col, value, distance, index)
        rows = last - first
        after = torch.bincount((row - first) * (width + 1) + placed, minlength=rows * (width + 1))
        out[first:last] += after.view(rows, width + 1).cumsum(1)[:, :width]
        exact.clear()

    for start, stop in ranges:
        rows = stop - start
        d, v, u = dist[start:stop], binned[:rows], bin_of[:rows]
        torch.sub(d, origin[start:stop], out=v)
        v.mul_(scale[start:stop]).clamp_(0, bins)
        u.copy_(v)
        histogram = torch.zeros(rows, bins + 1, dtype=torch.int64, device=device)
        histogram.scatter_add_(1, u, one.expand(rows, num_gallery))

        # Bins of the matches (past `count`: an extra bin, bins + 1, that no item is in).
        match_bin = u.gather(1, match_col[start:stop]).masked_fill_(~valid[start:stop], bins + 1)
        per_bin = torch.zeros(rows, bins + 2, dtype=torch.int64, device=device)
        per_bin.scatter_add_(1, match_bin, valid[start:stop].long())
        shared = per_bin[:, : bins + 1] > 0
        # Items in bins without a match, in the bins before each match's.
        plain = histogram.masked_fill_(shared, 0)
        out[start:stop] = (plain.cumsum(1) - plain).gather(1, match_bin.clamp_(max=bins))

        # Items in a bin with a match, to be compared exactly with the matches of that bin: from
        # the first of them on (`placed`, counted from the row's first match), `in_bin` of them.
        flat = shared.gather(1, u).view(-1).nonzero().squeeze(1)
        row = torch.div(flat, num_gallery, rounding_mode="floor")
        col = flat - row * num_gallery
        at = row * (bins + 2) + u.view(-1).gather(0, flat)
        placed = (per_bin.cumsum(1) - per_bin).view(-1).gather(0, at)
        exact.append((row + start, col, placed, per_bin.view(-1).gather(0, at)))
        pending += flat.numel()
        if pending >= _EXACT_ELEMENTS:
            place_exact_items()
            pending = 0
    if exact:
        place_exact_items()


def _entries(t: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """t[row, col] [n] for a 2-D `t`; by a flat gather where `t` or its transpose is contiguous (far faster)."""
    if t.is_contiguous():
        return t.view(-1).gather(0, row * t.shape[1] + col)
    if t.t().is_contiguous():
        return t.t().reshape(-1).gather(0, col * t.shape[0] + row)
    return t[row, col]


def _bin_scale(t: torch.Tensor, n: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the `origin` and `scale` [rows] (float64) of the bins, from its sorted matches `t` [rows, L].

    The first match lands at 1.5 and the last at bins - 0.5 (up to rounding). A
    span of zero (one match, or all tied) is widened to 2^-8 of the distances'
    magnitude, so that only the items close to them share their bin.
    """
    has = n > 0
    first = torch.where(has, t[:, 0], 0).to(torch.float64)
    last = torch.where(has, t.gather(1, (n - 1).clamp(min=0)[:, None]).squeeze(1), 0).to(torch.float64)
    finfo = torch.finfo(torch.float32 if t.dtype != torch.float64 else torch.float64)
    floor = torch.maximum(first.abs(), last.abs()).mul_(2.0**-8).clamp_(min=finfo.tiny * 4 * bins)
    span = torch.maximum(last - first, floor).clamp_(max=torch.finfo(torch.float64).max)
    scale = (bins - 2) / span
    return first - 1.5 / scale, scale


def _place_exactly(
    placed: torch.Tensor,
    in_bin: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    value: torch.Tensor,
    t: torch.Tensor,
    m: torch.Tensor,
) -> None:
    """Advance `placed` [n] past the matches of its bin that are at or before item (row, col) at distance `value`.

    `placed` starts at the first match of the item's bin, `in_bin` [n] how many
    matches the bin holds; `t`, `m` [rows, L]: the matches' distances and indices.
    A match (distance, index) is at or before the item when (distance, index) <= (value, col).
    Matches are in ranking order, so this is a binary search, one step for a bin with one match.
    """
    width = t.shape[1]
    end = placed + in_bin
    steps = int(in_bin.max()).bit_length() if in_bin.numel() else 0
    for _ in range(steps):
        middle = torch.div(placed + end, 2, rounding_mode="floor")
        at = (row * width + middle).clamp_(max=t.numel() - 1)
        d, i = t.view(-1).gather(0, at), m.view(-1).gather(0, at)
        before = (middle < end) & ((d < value) | ((d == value) & (i <= col)))
        torch.where(before, middle + 1, placed, out=placed)
        torch.where(before, end, middle, out=end)
