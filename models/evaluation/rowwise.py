"""Row-wise helpers on blocks of distance rows.

Tie rule shared by the whole package: within a row, entries are ordered by
(value, column index), i.e. a stable ascending sort.
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")


def pack_by_row(rows: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, int]:
    """Slots that pack ragged entries into a padded [num_rows, width] block.

    `rows`: [n] ascending row of each entry (as `nonzero` returns them). Returns
    each entry's column `slot` [n] in the padded block and the block's `width`
    (the largest number of entries in one row).
    """
    per_row = torch.bincount(rows, minlength=num_rows)
    slot = torch.arange(rows.numel(), device=rows.device) - (per_row.cumsum(0) - per_row)[rows]
    return slot, int(per_row.max()) if rows.numel() else 0


def smallest_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices [C, k] of the k smallest entries of each row of `values` [C, N] (finite), in order.

    Same as `torch.sort(values, stable=True).indices[:, :k]` without sorting the
    rows: topk finds each row's k-th value, and only the entries up to it (k of
    them unless there are ties) are sorted.
    """
    num_rows, num_cols = values.shape
    kth = values.topk(k, dim=1, largest=False, sorted=True).values[:, -1:]
    rows, cols = (values <= kth).nonzero(as_tuple=True)
    slot, width = pack_by_row(rows, num_rows)
    padded = torch.full((num_rows, width), float("inf"), dtype=values.dtype, device=values.device)
    padded[rows, slot] = values[rows, cols]
    index = torch.full((num_rows, width), num_cols, dtype=torch.int64, device=values.device)
    index[rows, slot] = cols
    order = torch.argsort(padded, dim=1, stable=True)[:, :k]
    return index.gather(1, order)


def split_by_budget(counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive ranges [start, stop) of `counts` [n] whose sums stay within `budget`.

    A single element larger than the budget gets a range of its own.
    """
    ends = counts.cumsum(0)
    ranges = []
    start = 0
    while start < counts.numel():
        done = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, done + budget, right=True)))
        ranges.append((start, stop))
        start = stop
    return ranges


def split_work(work: Callable[[list[tuple[int, int]]], T], ranges: list[tuple[int, int]], device: torch.device) -> list[T]:
    """[work(group) for group in groups], the consecutive ranges `ranges` cut into consecutive groups.

    On the CPU there is one group per intra-op thread, each run in its own Python
    thread with single-threaded ops (ops release the GIL): the many small ops of
    a step then never wait for one another's threads, which on a loaded machine
    (a core taken by another process) costs a scheduler time slice per op. Elsewhere,
    one group, run here.
    """
    workers = min(torch.get_num_threads(), len(ranges)) if device.type == "cpu" else 1
    if workers <= 1:
        return [work(ranges)]
    share = -(-len(ranges) // workers)

    def run(group: list[tuple[int, int]]) -> T:
        with torch.no_grad():
            return work(group)

    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        jobs = [pool.submit(run, ranges[i : i + share]) for i in range(0, len(ranges), share)]
        return [job.result() for job in jobs]
