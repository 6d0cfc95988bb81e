"""Tests of the fast paths of models.evaluation: the binned ranking (any layout, dtype and device),
the symmetric-block neighbour search of re-ranking from features, and the chunked re-ranked evaluation.

The references are the plain definitions of tests/models/test_evaluation.py (a stable sort per
query; the loop formulation of re-ranking)."""

import numpy as np
import pytest
import torch

import models.evaluation.kreciprocal as kreciprocal_module
import models.evaluation.neighbours as neighbours_module
import models.evaluation.ranking as ranking_module
from models.evaluation import (
    evaluate_features,
    evaluate_rank,
    evaluate_re_ranked,
    pairwise_distance,
    re_ranking,
    re_ranking_features,
    re_ranking_rows,
)
from models.evaluation.ranking import GalleryIndex, rank_matches
from tests.conftest import DEVICES
from tests.models.test_evaluation import (
    assert_same_result,
    clustered_features,
    random_problem,
    reference_evaluation,
    reference_re_ranking,
)


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    as_numpy = (np.asarray(t) for t in (q_pids, g_pids, q_camids, g_camids))
    return reference_evaluation(np.asarray(distmat, dtype=np.float64), *as_numpy, max_rank)


# ---------------------------------------------------------------------------------------------
# Ranking: every test runs the compiled one-pass kernel (CPU) and the PyTorch ops path.

HAS_KERNEL = ranking_module._kernel_available()


@pytest.fixture(params=["kernel", "ops"])
def count_path(request, monkeypatch):
    if request.param == "kernel" and not HAS_KERNEL:
        pytest.skip("rga_ops._C is not loaded: no ranking kernel")
    monkeypatch.setattr(ranking_module, "_FORCE_PATH", request.param)
    return request.param


def _kernel_and_ops(dist, q_pids, g_pids, q_camids, g_camids):
    gallery = GalleryIndex(q_pids, g_pids, g_camids)
    results = []
    for path in ("kernel", "ops"):
        ranking_module._FORCE_PATH = path
        try:
            results.append(rank_matches(dist, gallery.q_labels, q_camids, gallery))
        finally:
            ranking_module._FORCE_PATH = None
    return results


@pytest.mark.skipif(not HAS_KERNEL, reason="rga_ops._C is not loaded: no ranking kernel")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["rows", "columns", "strided"])
def test_ranking_kernel_equals_the_ops_path(dtype, layout):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(38, num_query=37, num_gallery=260, levels=40)
    distmat = distmat.to(dtype)
    if layout == "columns":
        distmat = distmat.t().contiguous().t()
    elif layout == "strided":
        distmat = torch.cat([distmat, distmat], 1)[:, ::2]
    kernel, ops = _kernel_and_ops(distmat, q_pids, g_pids, q_camids, g_camids)
    for name in ("count", "distance", "index", "rank"):
        assert torch.equal(getattr(kernel, name), getattr(ops, name)), name


@pytest.mark.skipif(not HAS_KERNEL, reason="rga_ops._C is not loaded: no ranking kernel")
def test_ranking_kernel_checks_its_arguments():
    op = torch.ops.rga_ops_eval.count_before
    dist = torch.rand(3, 10)
    distance, index, count = torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="dist must be \\[C, G\\]"):
        op(dist[0], distance, index, count)
    with pytest.raises(RuntimeError, match="distance must have dist's dtype"):
        op(dist, distance.double(), index, count)
    with pytest.raises(RuntimeError, match="index and count must be int64"):
        op(dist, distance, index.int(), count)
    with pytest.raises(RuntimeError, match="count must lie in"):
        op(dist, distance, index, count * 3)


@pytest.mark.parametrize("levels", [None, 4])
def test_ranking_reads_a_transposed_block_as_its_rows(levels, count_path):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(30, num_query=40, num_gallery=150, levels=levels)
    gallery = GalleryIndex(q_pids, g_pids, g_camids)
    rows = rank_matches(distmat.contiguous(), gallery.q_labels, q_camids, gallery)
    columns = distmat.t().contiguous().t()
    assert not columns.is_contiguous()
    transposed = rank_matches(columns, gallery.q_labels, q_camids, gallery)
    for name in ("count", "distance", "index", "rank"):
        assert torch.equal(getattr(rows, name), getattr(transposed, name)), name


def test_ranking_does_not_modify_its_rows(count_path):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(31)
    before = distmat.clone()
    gallery = GalleryIndex(q_pids, g_pids, g_camids)
    rank_matches(distmat, gallery.q_labels, q_camids, gallery)
    assert torch.equal(distmat, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_distances_with_many_ties(dtype, count_path):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(32, num_query=25, num_gallery=200)
    distmat = distmat.to(dtype)  # rounding to few significant bits: many exact ties
    expected = reference(distmat.double(), q_pids, g_pids, q_camids, g_camids, 20)
    assert_same_result(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20), *expected)


@pytest.mark.parametrize("case", ["all_equal", "one_match_each", "huge_and_tiny", "negative"])
def test_degenerate_distance_rows(case, count_path):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(33, num_query=20, num_gallery=90, num_ids=30)
    if case == "all_equal":
        distmat = torch.full_like(distmat, 0.25)
    elif case == "one_match_each":
        g_pids = torch.arange(90) % 30 + 100
        g_pids[:20] = q_pids
        g_camids[:20] = (q_camids + 1) % 3
    elif case == "huge_and_tiny":
        distmat = distmat * 1e-30
        distmat[:, ::7] = 1e30
    else:
        distmat = -distmat * 1e6
    expected = reference(distmat, q_pids, g_pids, q_camids, g_camids, 10)
    for chunk in (1, 20):
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10, chunk=chunk)
        assert_same_result(result, *expected)


def test_ties_across_many_matches_of_one_bin(monkeypatch, count_path):
    # Four bins per row (the ops path) and quantised distances: bins hold many matches and many
    # items, so the exact placement searches through long runs of tied matches, in several batches.
    monkeypatch.setattr(ranking_module, "_DISTANCES_PER_BIN", 10**9)
    monkeypatch.setattr(ranking_module, "_EXACT_ELEMENTS", 100)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(34, num_query=30, num_gallery=300, num_ids=3,
                                                                 levels=6)
    expected = reference(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    assert_same_result(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20), *expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_features_on_each_device_equal_the_reference(device, metric):
    qf, gf, q_pids, g_pids, q_camids, g_camids = clustered_features(35, 50, 400, 15, 16, spread=1.5)
    expected = reference(pairwise_distance(qf, gf, metric), q_pids, g_pids, q_camids, g_camids, 10)
    to = {"device": device}
    result = evaluate_features(qf.to(**to), gf.to(**to), q_pids.to(**to), g_pids.to(**to), q_camids, g_camids,
                               metric=metric, max_rank=10, chunk=17)
    assert_same_result(result, *expected, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_matrix_on_each_device_equals_the_reference(device):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(36, levels=20)
    expected = reference(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    result = evaluate_rank(distmat.to(device), q_pids, g_pids, q_camids, g_camids, max_rank=20, chunk=7)
    assert_same_result(result, *expected)


# ---------------------------------------------------------------------------------------------
# Re-ranking from features.


def re_ranking_reference(qf, gf, metric, k1=20, k2=6, lambda_value=0.3):
    q_g, q_q, g_g = (pairwise_distance(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    return reference_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 4, 30])
def test_re_ranking_features_by_many_blocks(metric, chunk):
    # 30 + 90 points, 29 candidates per point: blocks of 29 (chunks 1, 4) or 48 points (chunk 30: 60, aligned).
    qf, gf, *_ = clustered_features(40, 30, 90, 8, 6, spread=0.8)
    expected = re_ranking_reference(qf, gf, metric)
    np.testing.assert_allclose(re_ranking_features(qf, gf, metric, chunk=chunk).numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_re_ranked_rows_are_padded_for_the_gemm_and_equal_the_reference(metric):
    # float32 (O is then computed in place), 90 gallery items: each block's rows hold 96 (a multiple of 16),
    # the block is a view of its 90.
    qf, gf, *_ = clustered_features(40, 30, 90, 8, 6, spread=0.8)
    qf, gf = qf.float(), gf.float()
    blocks = list(re_ranking_rows(qf, gf, metric, chunk=7))
    assert [start for start, _ in blocks] == list(range(0, 30, 7))
    assert all(block.shape[1] == 90 and block.stride() == (96, 1) for _, block in blocks)
    np.testing.assert_allclose(torch.cat([b for _, b in blocks]).numpy(), re_ranking_reference(qf, gf, metric),
                               atol=1e-5, rtol=0)


def test_aligned_blocks_and_products():
    assert neighbours_module.block_edge(93820, 357, 36) == 5776  # isqrt(357 * 93820) = 5787
    assert neighbours_module.block_edge(120, 1, 29) == 29  # never below the candidates' width
    assert neighbours_module.block_edge(200, 2, 5) == 16 and neighbours_module.block_edge(20, 100, 5) == 20
    x, y, bias = torch.randn(5, 3, dtype=torch.float64), torch.randn(17, 3, dtype=torch.float64), torch.randn(1, 17)
    out = neighbours_module.aligned_addmm(bias.double(), x, y, -2.0)
    assert out.shape == (5, 17) and out.stride() == (32, 1)
    torch.testing.assert_close(out, torch.addmm(bias.double(), x, y.t(), alpha=-2.0), rtol=0, atol=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_re_ranking_features_with_tied_distances(metric, monkeypatch):
    # Small integer features (and repeated ones): many distances tie exactly, also at the edge of
    # the kept candidates, so those points' rows are recomputed whole; no margin makes it common.
    monkeypatch.setattr(neighbours_module, "CANDIDATE_MARGIN", 0)
    recomputed = []
    whole_rows = neighbours_module.FeatureNeighbours._original_rows

    def spy(self, rows):
        recomputed.append(rows.numel())
        return whole_rows(self, rows)

    monkeypatch.setattr(neighbours_module.FeatureNeighbours, "_original_rows", spy)
    g = torch.Generator().manual_seed(41)
    qf = torch.randint(0, 3, (20, 4), generator=g).double() + 1.0
    gf = torch.cat([torch.randint(0, 3, (50, 4), generator=g).double() + 1.0, qf[:5]])
    expected = re_ranking_reference(qf, gf, metric, k1=6, k2=3)
    result = re_ranking_features(qf, gf, metric, k1=6, k2=3, chunk=2)
    assert sum(recomputed) > 0
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_re_ranked_equals_evaluating_the_matrix(metric):
    qf, gf, q_pids, g_pids, q_camids, g_camids = clustered_features(42, 40, 160, 10, 8, spread=1.0)
    expected = evaluate_rank(re_ranking_features(qf, gf, metric, chunk=9), q_pids, g_pids, q_camids, g_camids)
    for chunk in (9, 1000):
        result = evaluate_re_ranked(qf, gf, q_pids, g_pids, q_camids, g_camids, metric, chunk=chunk)
        assert torch.equal(result.cmc, expected.cmc)
        # Sums over other chunks of queries: equal up to float64 rounding.
        assert result.mAP == pytest.approx(expected.mAP, abs=1e-12)
        assert result.mINP == pytest.approx(expected.mINP, abs=1e-12)
        assert result.num_valid_queries == expected.num_valid_queries


@pytest.mark.parametrize("device", DEVICES)
def test_re_ranking_features_on_each_device(device):
    qf, gf, *_ = clustered_features(43, 12, 40, 5, 6, spread=0.7, dtype=torch.float32)
    expected = re_ranking_features(qf, gf, chunk=3)
    result = re_ranking_features(qf.to(device), gf.to(device), chunk=3)
    assert result.device.type == device
    np.testing.assert_allclose(result.cpu().numpy(), expected.numpy(), atol=1e-5, rtol=0)


def test_re_ranking_features_rejects_non_finite_features():
    qf, gf, *_ = clustered_features(44, 5, 20, 3, 4, spread=0.5)
    gf[3, 1] = float("inf")
    with pytest.raises(ValueError, match="distances computed from qf and gf .* contains NaN or infinite"):
        re_ranking_features(qf, gf)


def test_ranking_split_over_worker_threads(monkeypatch):
    # One row per step and three threads: three workers, each with its own rows and batches (the ops path).
    monkeypatch.setattr(ranking_module, "_FORCE_PATH", "ops")
    monkeypatch.setattr(ranking_module, "_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(ranking_module, "_MIN_STEP", 1)
    monkeypatch.setattr(ranking_module, "_EXACT_ELEMENTS", 50)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(37, num_query=31, num_gallery=120, levels=30)
    expected = reference(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)
    finally:
        torch.set_num_threads(threads)
    assert_same_result(result, *expected)


@pytest.mark.parametrize("from_features", [False, True])
def test_re_ranking_sparse_steps_split_over_worker_threads(from_features, monkeypatch):
    # Small steps: the k-reciprocal sets and the query expansion run in many steps over two workers.
    monkeypatch.setattr(kreciprocal_module, "_STEP_ELEMENTS", 3000)
    qf, gf, *_ = clustered_features(45, 20, 70, 6, 6, spread=0.8)
    expected = re_ranking_reference(qf, gf, "cosine")
    if from_features:
        result = re_ranking_features(qf, gf, chunk=5)
    else:
        q_g, q_q, g_g = (pairwise_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
        result = re_ranking(q_g, q_q, g_g, chunk=5)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-6, rtol=0)
