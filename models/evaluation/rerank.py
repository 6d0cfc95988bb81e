"""k-reciprocal re-ranking from distance matrices or, with bounded memory, from features.

Both functions give the final distance of the standard implementation (Zhong
et al., CVPR 2017, as in the authors' code and torchreid's `re_ranking`): the
full matrix M = [[q_q, q_g], [q_g^T, g_g]] is squared (in the input dtype) and
cast to float32; each column is divided by its maximum over all Q + G rows and
the result transposed, giving O with O[i, j] = M[j, i] / max_r M[r, i]; then the
k-reciprocal steps of kreciprocal.py run on O. The two deliberate differences:
neighbours tied in O are ordered by index (the standard's np.argsort is
unstable, so its ties are arbitrary), and float32 sums are accumulated in
another order (differences of the order of 1e-7).

From features, `evaluate_re_ranked` evaluates the re-ranked distances chunk by
chunk of queries, so that not even the [Q, G] result is held (3.6 GiB at MSMT17
size): memory is then the features, one copy of them, one block of distances and
(Q + G) times the number of neighbours.
"""

from collections.abc import Iterator

import torch

from ._checks import as_matrix, check_finite, one_of, positive_int
from .distance import METRICS, check_features
from .evaluate import RankResult, _evaluate
from .kreciprocal import (
    blend,
    k_reciprocal_distance,
    k_reciprocal_features,
    neighbour_depth,
    shared_weights,
)
from .neighbours import CANDIDATE_MARGIN, FeatureNeighbours, aligned_addmm, block_edge, check_scale, squared32

# Default chunk: about 2^25 entries of O (128 MiB) per block of rows.
_CHUNK_ELEMENTS = 1 << 25


def default_chunk(num_points: int) -> int:
    """Rows of O per chunk when the caller gives none, for Q + G = `num_points`."""
    return max(1, _CHUNK_ELEMENTS // num_points)


def re_ranking(
    q_g_dist,
    q_q_dist,
    g_g_dist,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Re-ranked distance [Q, G] float32 from `q_g_dist` [Q, G], `q_q_dist` [Q, Q], `g_g_dist` [G, G].

    Tensors or numpy arrays on one device; the result is a tensor on it. The
    inputs are read by blocks of `chunk` rows of O (default about 2^25 entries);
    besides them, memory is the [Q, G] result plus (Q + G) times the number of
    neighbours, never the (Q + G)^2 matrix of the standard code.
    """
    q_g = as_matrix("q_g_dist", q_g_dist)
    q_q = as_matrix("q_q_dist", q_q_dist)
    g_g = as_matrix("g_g_dist", g_g_dist)
    num_queries, num_gallery = q_g.shape
    for name, t, shape in (("q_q_dist", q_q, (num_queries, num_queries)), ("g_g_dist", g_g, (num_gallery, num_gallery))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match q_g_dist {tuple(q_g.shape)}, got {tuple(t.shape)}")
        if t.device != q_g.device:
            raise ValueError(f"{name} must be on the device of q_g_dist ({q_g.device}), got {t.device}")
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value)
    chunk = default_chunk(num_queries + num_gallery) if chunk is None else positive_int("chunk", chunk)
    with torch.no_grad():
        source = _MatrixSource(q_g, q_q, g_g, chunk)
        return k_reciprocal_distance(source, k1, k2, lambda_value, chunk)


def re_ranking_features(
    qf,
    gf,
    metric: str = "cosine",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """Re-ranked distance [Q, G] float32 from query features `qf` [Q, D] and gallery features `gf` [G, D].

    The result of `re_ranking(d(qf, gf), d(qf, qf), d(gf, gf), ...)` with
    `d = pairwise_distance(., ., metric)`, up to GEMM rounding, computed on the
    features' device without any (Q + G)^2 or Q x Q or G x G matrix: distances
    are computed by square blocks of about `chunk * (Q + G)` entries (default
    about 2^25), each pair of points once (distances are symmetric, so each
    column maximum of M is also its row's), and only each point's nearest are
    kept. Memory: the features and one copy of them, the [Q, G] result, one block
    of distances, and (Q + G) times the number of neighbours. `evaluate_re_ranked`
    evaluates the same distances without holding the [Q, G] result.
    """
    source, k1, k2, lambda_value, chunk = _feature_source(qf, gf, metric, k1, k2, lambda_value, chunk)
    with torch.no_grad():
        result = torch.empty(source.num_queries, source.num_points - source.num_queries, dtype=torch.float32,
                             device=source.device)
        for start, block in _re_ranked_rows(source, k1, k2, lambda_value, chunk):
            result[start : start + block.shape[0]] = block
        return result


def re_ranking_rows(
    qf,
    gf,
    metric: str = "cosine",
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The rows of `re_ranking_features(qf, gf, ...)`, `chunk` queries at a time: (start, block [rows, G]).

    The arguments are checked at once; nothing is computed until the first block
    is asked for, and the [Q, G] result is never held (each block is a new
    tensor). Arguments as in `re_ranking_features`. A block's rows are
    contiguous but padded to a multiple of 16 items (where the distance GEMM
    writes fastest): `block.stride(0)` may exceed G; `.contiguous()` packs it.
    """
    x, y, k1, k2, lambda_value, chunk = _feature_arguments(qf, gf, metric, k1, k2, lambda_value, chunk)

    def rows() -> Iterator[tuple[int, torch.Tensor]]:
        with torch.no_grad():
            source = FeatureNeighbours(x, y, metric, neighbour_depth(k1, k2, x.shape[0] + y.shape[0]), chunk)
            yield from _re_ranked_rows(source, k1, k2, lambda_value, chunk)

    return rows()


def evaluate_re_ranked(
    qf,
    gf,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    metric: str = "cosine",
    max_rank: int = 50,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk: int | None = None,
    protocol: str = "market",
    num_repeats: int = 10,
    seed: int = 0,
) -> RankResult:
    """Evaluate the re-ranked distances of `re_ranking_features(qf, gf, metric, k1, k2, lambda_value)`.

    Gives `evaluate_rank(re_ranking_features(...), q_pids, ...)` without the
    [Q, G] matrix: the re-ranked distances of `chunk` queries at a time (default
    about 2^25 / (Q + G)) are ranked as they are computed. Arguments as in
    `evaluate_features` and `re_ranking_features`.
    """
    source, k1, k2, lambda_value, chunk = _feature_source(qf, gf, metric, k1, k2, lambda_value, chunk)

    def rows() -> Iterator[tuple[int, torch.Tensor]]:
        yield from _re_ranked_rows(source, k1, k2, lambda_value, chunk)

    with torch.no_grad():
        return _evaluate(rows, source.device, source.num_queries, source.num_points - source.num_queries, q_pids,
                         g_pids, q_camids, g_camids, max_rank, protocol, num_repeats, seed)


def knn_products(qf, gf, metric: str = "cosine", k1: int = 20, k2: int = 6, *, chunk: int | None = None) -> float:
    """Compute, and discard, the matrix products of `re_ranking_features` alone; returns their FLOPs.

    For benchmarks: the GEMMs that re-ranking from features cannot avoid (every
    pair of points once, in the same blocks and output layout, then queries x
    gallery once more for the final distances), to time its other work against.
    """
    one_of("metric", metric, METRICS)
    x, y = check_features(qf, gf)
    num_queries, num_points = x.shape[0], x.shape[0] + y.shape[0]
    chunk = default_chunk(num_points) if chunk is None else positive_int("chunk", chunk)
    points = torch.cat([x, y])
    edge = block_edge(num_points, chunk, min(neighbour_depth(k1, k2, num_points) + CANDIDATE_MARGIN, num_points))
    one = torch.ones((1, 1), dtype=points.dtype, device=points.device)
    flop = 0.0
    with torch.no_grad():
        for a in range(0, num_points, edge):
            for c in range(a, num_points, edge):
                flop += 2.0 * points[a : a + edge].shape[0] * points[c : c + edge].shape[0] * x.shape[1]
                aligned_addmm(one, points[a : a + edge], points[c : c + edge], -1.0)
        for start in range(0, num_queries, chunk):
            flop += 2.0 * points[start : start + chunk].shape[0] * (num_points - num_queries) * x.shape[1]
            aligned_addmm(one, x[start : start + chunk], y, -1.0)
    return flop


def _feature_arguments(qf, gf, metric, k1, k2, lambda_value, chunk):
    one_of("metric", metric, METRICS)
    x, y = check_features(qf, gf)
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value)
    chunk = default_chunk(x.shape[0] + y.shape[0]) if chunk is None else positive_int("chunk", chunk)
    return x, y, k1, k2, lambda_value, chunk


def _feature_source(qf, gf, metric, k1, k2, lambda_value, chunk):
    x, y, k1, k2, lambda_value, chunk = _feature_arguments(qf, gf, metric, k1, k2, lambda_value, chunk)
    with torch.no_grad():
        source = FeatureNeighbours(x, y, metric, neighbour_depth(k1, k2, x.shape[0] + y.shape[0]), chunk)
    return source, k1, k2, lambda_value, chunk


def _re_ranked_rows(source: FeatureNeighbours, k1: int, k2: int, lambda_value: float, chunk: int):
    """(start, block): the re-ranked distances of queries start.. [rows, G], `chunk` rows at a time."""
    v = k_reciprocal_features(source.entries, source.neighbours, k1, k2)
    for start, stop, target, shared in shared_weights(v, source.num_queries, chunk):
        yield start, blend(source.rows(start, stop), target, shared, lambda_value)


def _check_parameters(k1, k2, lambda_value) -> tuple[int, int, float]:
    k1 = positive_int("k1", k1)
    k2 = positive_int("k2", k2)
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float)):
        raise TypeError(f"lambda_value must be a float, got {type(lambda_value).__name__}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    return k1, k2, float(lambda_value)


class _MatrixSource:
    """O from the three distance blocks, exactly as the standard code builds it."""

    def __init__(self, q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor, chunk: int) -> None:
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_queries = q_g.shape[0]
        self.num_points = q_g.shape[0] + q_g.shape[1]
        self.device = q_g.device
        # Column maxima of M: column i < Q holds q_q[:, i] and q_g[i, :]; column Q + g holds q_g[:, g] and g_g[:, g].
        # Rounding to float32 is monotone, so the maximum commutes with the cast.
        query_max = torch.maximum(self._column_max(q_q, "q_q_dist", chunk), self._row_max(q_g, chunk))
        gallery_max = torch.maximum(self._column_max(q_g, "q_g_dist", chunk), self._column_max(g_g, "g_g_dist", chunk))
        self.scale = torch.cat([query_max, gallery_max])
        check_scale(self.scale, 0)

    @staticmethod
    def _column_max(t: torch.Tensor, name: str, chunk: int) -> torch.Tensor:
        best = torch.zeros(t.shape[1], dtype=torch.float32, device=t.device)
        for start in range(0, t.shape[0], chunk):
            block = t[start : start + chunk]
            check_finite(name, block, start)
            torch.maximum(best, squared32(block).amax(0), out=best)
        return best

    @staticmethod
    def _row_max(t: torch.Tensor, chunk: int) -> torch.Tensor:
        return torch.cat([squared32(t[start : start + chunk]).amax(1) for start in range(0, t.shape[0], chunk)])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        q = self.num_queries
        parts = []
        if start < q:
            a, b = start, min(stop, q)
            parts.append(torch.cat([squared32(self.q_q[:, a:b].t()), squared32(self.q_g[a:b])], dim=1))
        if stop > q:
            a, b = max(start, q) - q, stop - q
            parts.append(torch.cat([squared32(self.q_g[:, a:b].t()), squared32(self.g_g[:, a:b].t())], dim=1))
        return torch.cat(parts).div_(self.scale[start:stop, None])

    def entries(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        q = self.num_queries
        # O[i, j] = M[j, i], looked up in the block of M that (j, i) falls in.
        lookups = (
            ((j < q) & (i < q), lambda jj, ii: self.q_q[jj, ii]),
            ((j < q) & (i >= q), lambda jj, ii: self.q_g[jj, ii - q]),
            ((j >= q) & (i < q), lambda jj, ii: self.q_g[ii, jj - q]),
            ((j >= q) & (i >= q), lambda jj, ii: self.g_g[jj - q, ii - q]),
        )
        value = torch.empty(i.shape, dtype=torch.float32, device=i.device)
        for pick, lookup in lookups:
            value[pick] = squared32(lookup(j[pick], i[pick]))
        return value.div_(self.scale[i])
