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
"""

import torch

from ._checks import as_matrix, check_finite, one_of, positive_int
from .distance import (
    METRICS,
    check_features,
    column_terms,
    distance_rows,
    paired_distance,
)
from .kreciprocal import k_reciprocal_distance

# Default chunk: about 2^25 entries of O (128 MiB) per block of rows.
_CHUNK_ELEMENTS = 1 << 25
# Feature pairs gathered per step when recomputing single entries of O.
_PAIR_ELEMENTS = 1 << 23


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
    features' device without any (Q + G)^2 or Q x Q or G x G matrix: rows of O
    are computed `chunk` at a time (default about 2^25 entries) and only each
    point's neighbours are kept. Distances are symmetric, so each column maximum
    of M is the maximum of the corresponding row, taken over all Q + G points
    while the row is computed. Memory: the features and one copy of them, the
    [Q, G] result, one chunk of rows, and (Q + G) times the number of neighbours.
    """
    one_of("metric", metric, METRICS)
    x, y = check_features(qf, gf)
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value)
    chunk = default_chunk(x.shape[0] + y.shape[0]) if chunk is None else positive_int("chunk", chunk)
    with torch.no_grad():
        source = _FeatureSource(x, y, metric)
        return k_reciprocal_distance(source, k1, k2, lambda_value, chunk)


def _check_parameters(k1, k2, lambda_value) -> tuple[int, int, float]:
    k1 = positive_int("k1", k1)
    k2 = positive_int("k2", k2)
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float)):
        raise TypeError(f"lambda_value must be a float, got {type(lambda_value).__name__}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    return k1, k2, float(lambda_value)


def _squared32(t: torch.Tensor) -> torch.Tensor:
    """Square in the input dtype, then float32, as `np.power(d, 2).astype(np.float32)`."""
    return t.square().to(torch.float32)


def _check_scale(scale: torch.Tensor, start: int) -> None:
    if bool((scale <= 0).any()):
        point = int((scale <= 0).nonzero()[0, 0]) + start
        raise ValueError(
            f"point {point} (queries first, then gallery) is at distance 0 from every point: "
            "re-ranking divides each column by its maximum distance"
        )


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
        _check_scale(self.scale, 0)

    @staticmethod
    def _column_max(t: torch.Tensor, name: str, chunk: int) -> torch.Tensor:
        best = torch.zeros(t.shape[1], dtype=torch.float32, device=t.device)
        for start in range(0, t.shape[0], chunk):
            block = t[start : start + chunk]
            check_finite(name, block, start)
            torch.maximum(best, _squared32(block).amax(0), out=best)
        return best

    @staticmethod
    def _row_max(t: torch.Tensor, chunk: int) -> torch.Tensor:
        return torch.cat([_squared32(t[start : start + chunk]).amax(1) for start in range(0, t.shape[0], chunk)])

    def rows(self, start: int, stop: int) -> torch.Tensor:
        q = self.num_queries
        parts = []
        if start < q:
            a, b = start, min(stop, q)
            parts.append(torch.cat([_squared32(self.q_q[:, a:b].t()), _squared32(self.q_g[a:b])], dim=1))
        if stop > q:
            a, b = max(start, q) - q, stop - q
            parts.append(torch.cat([_squared32(self.q_g[:, a:b].t()), _squared32(self.g_g[:, a:b].t())], dim=1))
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
            value[pick] = _squared32(lookup(j[pick], i[pick]))
        return value.div_(self.scale[i])


class _FeatureSource:
    """O from features: rows by GEMM, single entries by dot products."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, metric: str) -> None:
        self.points = torch.cat([qf, gf])
        self.metric = metric
        self.terms = column_terms(self.points, metric)
        self.num_queries = qf.shape[0]
        self.num_points = self.points.shape[0]
        self.device = qf.device
        self.scale = torch.empty(self.num_points, dtype=torch.float32, device=self.device)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        d = distance_rows(self.points[start:stop], self.points, self.terms, self.metric)
        check_finite("distances computed from qf and gf (check the features)", d, start)
        block = _squared32(d)
        del d
        scale = block.amax(1)
        _check_scale(scale, start)
        self.scale[start:stop] = scale
        return block.div_(scale[:, None])

    def entries(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        step = max(1, _PAIR_ELEMENTS // self.points.shape[1])
        value = torch.cat(
            [
                _squared32(paired_distance(self.points[a], self.points[b], self.terms[b], self.metric))
                for a, b in zip(i.split(step), j.split(step))
            ]
        )
        return value.div_(self.scale[i])
