"""Tests of models.evaluation: ranking metrics, chunked evaluation, re-ranking, ranked-list pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

import models.evaluation.evaluate as evaluate_module
import models.evaluation.ranking as ranking_module
from models.evaluation import (
    evaluate_features,
    evaluate_rank,
    pairwise_distance,
    ranked_gallery,
    re_ranking,
    re_ranking_features,
    save_ranked_list,
)

# ---------------------------------------------------------------------------------------------
# Plain references, written for clarity, one query at a time.


def reference_evaluation(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Market protocol with a stable argsort per query; CMC past the gallery end keeps its last value."""
    distmat = np.asarray(distmat)
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        junk = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        hits = (g_pids[order] == q_pids[i])[~junk]
        if not hits.any():
            continue
        positions = np.flatnonzero(hits)
        cmc = np.ones(max_rank)
        cmc[: positions[0]] = 0.0
        cmcs.append(cmc)
        aps.append(np.mean(np.arange(1, len(positions) + 1) / (positions + 1)))
        inps.append(len(positions) / (positions[-1] + 1))
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value):
    """The loop formulation of k-reciprocal re-ranking, with a stable argsort for ties."""
    num_query = q_g_dist.shape[0]
    full = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    original = np.power(full, 2).astype(np.float32)
    original = np.transpose(original / np.max(original, axis=0))
    num_all = original.shape[0]
    rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i, k):
        return np.array([c for c in rank[i, : k + 1] if i in rank[c, : k + 1]], dtype=np.int64)

    v = np.zeros((num_all, num_all), dtype=np.float32)
    for i in range(num_all):
        r = reciprocal(i, k1)
        expanded = list(r)
        for c in r:
            rc = reciprocal(c, int(np.around(k1 / 2.0)))
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expanded.extend(rc)
        expanded = np.unique(expanded)
        weight = np.exp(-original[i, expanded])
        v[i, expanded] = weight / np.sum(weight)
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(num_all)])
    jaccard = np.zeros((num_query, num_all), dtype=np.float32)
    for i in range(num_query):
        shared = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


def random_problem(seed, num_query=30, num_gallery=120, num_ids=8, num_cams=3, levels=None):
    """Random labels and distances; `levels` quantises the distances to force many ties."""
    g = torch.Generator().manual_seed(seed)
    q_pids = torch.randint(0, num_ids, (num_query,), generator=g)
    g_pids = torch.randint(0, num_ids, (num_gallery,), generator=g)
    q_camids = torch.randint(0, num_cams, (num_query,), generator=g)
    g_camids = torch.randint(0, num_cams, (num_gallery,), generator=g)
    if levels is None:
        distmat = torch.rand(num_query, num_gallery, generator=g, dtype=torch.float64)
    else:
        distmat = torch.randint(0, levels, (num_query, num_gallery), generator=g).to(torch.float64)
    return distmat, q_pids, g_pids, q_camids, g_camids


def clustered_features(seed, num_query, num_gallery, num_ids, dim, spread, dtype=torch.float64):
    """Features around identity centroids, so that most queries rank their matches early."""
    g = torch.Generator().manual_seed(seed)
    centroids = torch.randn(num_ids, dim, generator=g, dtype=dtype)
    q_pids = torch.randint(0, num_ids, (num_query,), generator=g)
    g_pids = torch.randint(0, num_ids, (num_gallery,), generator=g)
    qf = centroids[q_pids] + spread * torch.randn(num_query, dim, generator=g, dtype=dtype)
    gf = centroids[g_pids] + spread * torch.randn(num_gallery, dim, generator=g, dtype=dtype)
    q_camids = torch.randint(0, 4, (num_query,), generator=g)
    g_camids = torch.randint(0, 4, (num_gallery,), generator=g)
    return qf, gf, q_pids, g_pids, q_camids, g_camids


def assert_same_result(result, cmc, mean_ap, mean_inp, num_valid, atol=1e-12):
    np.testing.assert_allclose(result.cmc.numpy(), cmc, atol=atol, rtol=0)
    assert result.mAP == pytest.approx(mean_ap, abs=atol)
    assert result.mINP == pytest.approx(mean_inp, abs=atol)
    assert result.num_valid_queries == num_valid


@pytest.fixture(params=["default", "one_row_per_step", "four_bins", "one_item_per_bin"])
def binning(request, monkeypatch):
    """Run a test with each way of binning the distance rows (ranking.py): the defaults, one row
    per step, four bins per row (almost every item compared exactly) and as many bins as items."""
    if request.param == "one_row_per_step":
        monkeypatch.setattr(ranking_module, "_BLOCK_ELEMENTS", 1)
        monkeypatch.setattr(ranking_module, "_MIN_STEP", 1)
    elif request.param == "four_bins":
        monkeypatch.setattr(ranking_module, "_DISTANCES_PER_BIN", 10**9)
    elif request.param == "one_item_per_bin":
        monkeypatch.setattr(ranking_module, "_DISTANCES_PER_BIN", 1)
    return request.param


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_single_query_by_hand(binning):
    # Gallery ranked by distance: g2 (junk: same pid and camera), g0 (wrong), g1 (match), g3 (wrong), g4 (match).
    distmat = [[0.1, 0.2, 0.05, 0.3, 0.4]]
    result = evaluate_rank(distmat, [1], [2, 1, 1, 3, 1], [0], [1, 1, 0, 0, 2], max_rank=4)
    # Without the junk: wrong, match, wrong, match -> matches at ranks 2 and 4.
    np.testing.assert_array_equal(result.cmc.numpy(), [0.0, 1.0, 1.0, 1.0])
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 0)


@pytest.mark.parametrize(
    ("g_pids", "expected_ap", "expected_cmc1"),
    [
        ([2, 1, 2, 1], (1 / 2 + 2 / 4) / 2, 0.0),  # ties ranked by index: wrong, match, wrong, match
        ([1, 2, 2, 1], (1 / 1 + 2 / 4) / 2, 1.0),  # match, wrong, wrong, match
    ],
)
def test_ties_are_ranked_by_gallery_index(binning, g_pids, expected_ap, expected_cmc1):
    result = evaluate_rank([[0.5, 0.5, 0.5, 0.5]], [1], g_pids, [0], [1, 1, 1, 1], max_rank=2)
    assert result.mAP == pytest.approx(expected_ap)
    assert result.mINP == pytest.approx(2 / 4)
    assert result.cmc[0].item() == expected_cmc1


def test_tie_between_a_match_and_a_negative_before_it_by_index(binning):
    # g1 (negative) ties with g2 (match) and comes first by index; g0 is a closer match.
    result = evaluate_rank([[0.1, 0.3, 0.3, 0.9]], [7], [7, 5, 7, 5], [0], [1, 1, 1, 1], max_rank=3)
    assert result.mAP == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result.mINP == pytest.approx(2 / 3)


def test_exact_for_distances_spanning_many_orders_of_magnitude(binning):
    # Neighbouring float64 values around 1 next to a distance of 1e12: the search keys of the
    # implementation merge the small ones, and the exact comparisons must still order them.
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(20, num_query=12, num_gallery=60, levels=6)
    distmat = 1.0 + distmat * np.finfo(np.float64).eps
    distmat[:, 7] = 1e12
    distmat[3, :] *= -1.0
    expected = reference_evaluation(distmat, q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy(), 10)
    for chunk in (1, 5, 12):
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10, chunk=chunk)
        assert_same_result(result, *expected)


def test_queries_without_a_match_are_skipped_and_counted():
    distmat = [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.1, 0.3]]
    q_pids = [1, 2, 9]  # query 1 sees its pid only from its own camera; pid 9 is not in the gallery
    result = evaluate_rank(distmat, q_pids, [1, 2, 3], [0, 0, 0], [1, 0, 1], max_rank=3)
    assert (result.num_valid_queries, result.num_skipped_queries) == (1, 2)
    np.testing.assert_array_equal(result.cmc.numpy(), [1.0, 1.0, 1.0])
    assert result.mAP == pytest.approx(1.0)


def test_gallery_that_is_all_junk_raises():
    with pytest.raises(ValueError, match="no query has a true match.*all 2 queries skipped"):
        evaluate_rank([[0.1, 0.2], [0.3, 0.4]], [1, 1], [1, 1], [0, 0], [0, 0])


def test_max_rank_larger_than_gallery_keeps_the_final_value():
    result = evaluate_rank([[0.3, 0.1, 0.2]], [1], [1, 2, 3], [0], [1, 1, 1], max_rank=10)
    assert result.cmc.shape == (10,)
    np.testing.assert_array_equal(result.cmc.numpy(), [0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    assert result.mAP == pytest.approx(1 / 3)


def test_numpy_inputs_and_float32():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(3)
    expected = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    result = evaluate_rank(distmat.numpy(), q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy())
    assert torch.equal(result.cmc, expected.cmc)
    assert (result.mAP, result.mINP) == (expected.mAP, expected.mINP)
    as_float32 = evaluate_rank(distmat.float(), q_pids, g_pids, q_camids, g_camids)
    assert as_float32.mAP == pytest.approx(expected.mAP, abs=1e-6)


def test_distmat_is_not_modified():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(4)
    before = distmat.clone()
    evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, chunk=7)
    assert torch.equal(distmat, before)


# ---------------------------------------------------------------------------------------------
# Random problems against the reference.


@pytest.mark.parametrize("levels", [None, 3, 50])
@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_random_problems(binning, seed, levels):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed, levels=levels)
    expected = reference_evaluation(distmat, q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy(), 20)
    for chunk in (1, 7, 30, 100):
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, chunk=chunk)
        assert_same_result(result, *expected)


def test_matches_reference_when_most_queries_are_easy():
    # Mostly easy queries (few negatives before the last match) and a few random ones.
    qf, gf, q_pids, g_pids, q_camids, g_camids = clustered_features(0, 60, 400, 20, 16, spread=0.4)
    distmat = pairwise_distance(qf, gf, "euclidean")
    distmat[:5] = torch.rand(5, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = reference_evaluation(distmat, q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy(), 10)
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    assert_same_result(result, *expected)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 7, 40, 1000])
def test_features_chunked_equal_matrix(metric, chunk):
    qf, gf, q_pids, g_pids, q_camids, g_camids = clustered_features(2, 40, 300, 12, 32, spread=0.8)
    expected = evaluate_rank(pairwise_distance(qf, gf, metric), q_pids, g_pids, q_camids, g_camids)
    result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, chunk=chunk)
    assert torch.equal(result.cmc, expected.cmc)
    assert result.mAP == pytest.approx(expected.mAP, abs=1e-12)
    assert result.mINP == pytest.approx(expected.mINP, abs=1e-12)
    assert result.num_valid_queries == expected.num_valid_queries


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_features_with_exact_ties_equal_reference(metric):
    # Features whose distances are exact in float64 (small integers; for cosine, scaled one-hot
    # vectors with power-of-two norms), so ties are exact whatever the GEMM blocking.
    g = torch.Generator().manual_seed(5)
    if metric == "euclidean":
        qf = torch.randint(0, 3, (25, 4), generator=g).double()
        gf = torch.randint(0, 3, (90, 4), generator=g).double()
    else:
        eye = torch.eye(4, dtype=torch.float64)
        qf = eye[torch.randint(0, 4, (25,), generator=g)] * 2.0 ** torch.randint(0, 3, (25, 1), generator=g)
        gf = eye[torch.randint(0, 4, (90,), generator=g)] * 2.0 ** torch.randint(0, 3, (90, 1), generator=g)
    _, q_pids, g_pids, q_camids, g_camids = random_problem(5, num_query=25, num_gallery=90)
    distmat = pairwise_distance(qf, gf, metric)
    assert len(torch.unique(distmat)) < distmat.numel() / 10
    expected = reference_evaluation(distmat, q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy(), 15)
    for chunk in (1, 6, 25):
        result = evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, max_rank=15, chunk=chunk)
        assert_same_result(result, *expected)


def test_features_hold_one_chunk_of_distances(monkeypatch):
    qf, gf, q_pids, g_pids, q_camids, g_camids = clustered_features(3, 50, 200, 10, 8, spread=0.5)
    blocks = []
    compute = evaluate_module.distance_columns

    def recording(x, *args):
        out = compute(x, *args)
        blocks.append(tuple(out.shape))
        return out

    monkeypatch.setattr(evaluate_module, "distance_columns", recording)
    evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, chunk=16)
    # [gallery, chunk]: each chunk's distances, ranked without a transposed copy.
    assert blocks == [(200, 16), (200, 16), (200, 16), (200, 2)]


def test_pairwise_distance_formulas():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(9, 5, generator=g, dtype=torch.float64)
    cosine = 1 - torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    torch.testing.assert_close(pairwise_distance(x, y, "cosine"), cosine)
    torch.testing.assert_close(pairwise_distance(x, y, "euclidean"), torch.cdist(x, y) ** 2)
    blocks = torch.cat([pairwise_distance(x[i : i + 3], y, "cosine") for i in range(0, 7, 3)])
    torch.testing.assert_close(blocks, cosine)


# ---------------------------------------------------------------------------------------------
# CUHK03 single-gallery-shot protocol.


def test_cuhk03_is_reproducible_from_the_seed():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(7, num_query=40, num_gallery=200)
    first = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, protocol="cuhk03", seed=3)
    again = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, protocol="cuhk03", seed=3, chunk=9)
    other = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, protocol="cuhk03", seed=4)
    assert torch.equal(first.cmc, again.cmc)
    assert not torch.equal(first.cmc, other.cmc)
    market = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    assert first.mAP == pytest.approx(market.mAP)  # AP uses the full gallery, as in torchreid
    assert first.num_valid_queries == market.num_valid_queries


def test_cuhk03_matches_a_direct_sampling():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(8, num_query=20, num_gallery=80, levels=5)
    num_repeats, seed, max_rank = 4, 11, 10
    result = evaluate_rank(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, "cuhk03", num_repeats=num_repeats, seed=seed
    )
    # Documented sampling: one key per (repeat, gallery item); each identity is represented by its
    # valid (non-junk) item with the largest key; rank by (distance, index) among the representatives.
    keys = torch.rand(num_repeats, 80, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    d, qp, gp, qc, gc = distmat.numpy(), q_pids.numpy(), g_pids.numpy(), q_camids.numpy(), g_camids.numpy()
    cmcs = []
    for i in range(20):
        valid = ~((gp == qp[i]) & (gc == qc[i]))
        if not (valid & (gp == qp[i])).any():
            continue
        cmc = np.zeros(max_rank)
        for r in range(num_repeats):
            chosen = [max(np.flatnonzero(valid & (gp == p)), key=lambda j: keys[r, j]) for p in np.unique(gp[valid])]
            ranked = sorted(chosen, key=lambda j: (d[i, j], j))
            first = next(k for k, j in enumerate(ranked) if gp[j] == qp[i])
            cmc[first:] += 1.0 / num_repeats
        cmcs.append(cmc)
    np.testing.assert_allclose(result.cmc.numpy(), np.mean(cmcs, axis=0), atol=1e-12)


def test_cuhk03_with_one_image_per_identity_equals_market():
    distmat, q_pids, _, q_camids, _ = random_problem(9, num_query=15, num_gallery=6, num_ids=6)
    g_pids, g_camids = torch.arange(6), torch.ones(6, dtype=torch.int64)
    q_camids = torch.zeros_like(q_camids)
    market = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=6)
    cuhk03 = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=6, protocol="cuhk03")
    torch.testing.assert_close(cuhk03.cmc, market.cmc)


# ---------------------------------------------------------------------------------------------
# Re-ranking.


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(
    ("num_query", "num_gallery", "k1", "k2", "lambda_value"),
    [(12, 40, 20, 6, 0.3), (10, 30, 5, 3, 0.5), (8, 25, 7, 1, 0.0), (4, 6, 20, 30, 1.0)],
)
def test_re_ranking_matches_reference(metric, num_query, num_gallery, k1, k2, lambda_value):
    qf, gf, *_ = clustered_features(10, num_query, num_gallery, 5, 6, spread=0.7)
    q_g, q_q, g_g = (pairwise_distance(a, b, metric) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    expected = reference_re_ranking(q_g.numpy(), q_q.numpy(), g_g.numpy(), k1, k2, lambda_value)
    for chunk in (1, 9, 1000):
        result = re_ranking(q_g, q_q, g_g, k1, k2, lambda_value, chunk=chunk)
        assert result.dtype == torch.float32 and result.shape == (num_query, num_gallery)
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-6, rtol=0)
        from_features = re_ranking_features(qf, gf, metric, k1, k2, lambda_value, chunk=chunk)
        np.testing.assert_allclose(from_features.numpy(), expected, atol=1e-6, rtol=0)


def test_re_ranking_follows_the_column_maxima_of_a_non_symmetric_matrix():
    g = torch.Generator().manual_seed(12)
    q_g = torch.rand(6, 15, generator=g, dtype=torch.float64)
    q_q = torch.rand(6, 6, generator=g, dtype=torch.float64)
    g_g = torch.rand(15, 15, generator=g, dtype=torch.float64)
    expected = reference_re_ranking(q_g.numpy(), q_q.numpy(), g_g.numpy(), 4, 3, 0.3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, 4, 3, 0.3, chunk=4).numpy(), expected, atol=1e-6, rtol=0)


def test_re_ranking_numpy_float32_inputs():
    qf, gf, *_ = clustered_features(13, 10, 30, 4, 5, spread=0.5, dtype=torch.float32)
    q_g, q_q, g_g = (pairwise_distance(a, b, "euclidean").numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    expected = reference_re_ranking(q_g, q_q, g_g, 6, 3, 0.3)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, 6, 3, 0.3).numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_re_ranking_features_on_a_larger_problem():
    qf, gf, *_ = clustered_features(14, 60, 300, 30, 32, spread=0.6)
    q_g, q_q, g_g = (pairwise_distance(a, b, "cosine") for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    expected = reference_re_ranking(q_g.numpy(), q_q.numpy(), g_g.numpy(), 20, 6, 0.3)
    np.testing.assert_allclose(re_ranking_features(qf, gf, chunk=50).numpy(), expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# Bad input.


def test_mismatched_lengths_raise():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(15, num_query=5, num_gallery=10)
    with pytest.raises(ValueError, match=r"q_pids must have one entry per query \(5\), got 4"):
        evaluate_rank(distmat, q_pids[:4], g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match=r"g_camids must have one entry per gallery item \(10\), got 11"):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, torch.zeros(11, dtype=torch.int64))
    with pytest.raises(ValueError, match="same feature dimension, got 3 and 4"):
        evaluate_features(torch.randn(5, 3), torch.randn(10, 4), q_pids, g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match=r"g_g_dist must have shape \(10, 10\)"):
        re_ranking(distmat, torch.rand(5, 5), torch.rand(9, 10))


def test_nan_distances_raise():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(16, num_query=5, num_gallery=10)
    distmat[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"distmat contains NaN or infinite values \(first in row 3\)"):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, chunk=2)
    qf = torch.randn(5, 4)
    qf[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"distances computed from qf and gf .* \(first in row 1\)"):
        evaluate_features(qf, torch.randn(10, 4), q_pids, g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match="q_g_dist contains NaN"):
        re_ranking(distmat, torch.rand(5, 5, dtype=torch.float64), torch.rand(10, 10, dtype=torch.float64))


def test_bad_options_raise():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(17, num_query=5, num_gallery=10)
    qf, gf = torch.randn(5, 3), torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"metric must be one of \('cosine', 'euclidean'\), got 'cosin'"):
        evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric="cosin")
    with pytest.raises(ValueError, match="metric must be one of"):
        re_ranking_features(qf, gf, metric="l2")
    with pytest.raises(ValueError, match=r"protocol must be one of \('market', 'cuhk03'\), got 'duke'"):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, protocol="duke")
    with pytest.raises(ValueError, match="max_rank must be >= 1, got 0"):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=0)
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, chunk=0)
    with pytest.raises(ValueError, match=r"lambda_value must be in \[0, 1\], got 1.5"):
        re_ranking_features(qf, gf, lambda_value=1.5)
    with pytest.raises(TypeError, match="q_pids must hold integers, got dtype torch.float32"):
        evaluate_rank(distmat, q_pids.float(), g_pids, q_camids, g_camids)
    with pytest.raises(TypeError, match="distmat must be a floating-point tensor or array, got dtype torch.int64"):
        evaluate_rank(distmat.long(), q_pids, g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match=r"distmat must be 2-D, got shape \(10,\)"):
        evaluate_rank(distmat[0], q_pids, g_pids, q_camids, g_camids)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_features(torch.randn(2, 3), torch.randn(4, 3), [1, 2], [3, 3, 4, 4], [0, 0], [1, 1, 1, 1])


def test_points_at_distance_zero_from_all_raise_in_re_ranking():
    with pytest.raises(ValueError, match="point 0 .* is at distance 0 from every point"):
        re_ranking_features(torch.ones(2, 3), torch.ones(3, 3), metric="euclidean")


# ---------------------------------------------------------------------------------------------
# Ranked-list picture.


def test_ranked_gallery_labels_and_order():
    order, labels = ranked_gallery([0.4, 0.1, 0.1, 0.3, 0.2], 1, 0, [1, 2, 1, 1, 3], [1, 0, 0, 2, 1], topk=4)
    assert order == [1, 2, 4, 3]
    assert labels == ["wrong", "junk", "wrong", "match"]


def test_save_ranked_list_writes_a_png(tmp_path):
    paths = []
    for i, colour in enumerate(["red", "blue"]):
        paths.append(tmp_path / f"g{i}.jpg")
        Image.new("RGB", (40, 90), colour).save(paths[-1])
    gallery = [paths[0], torch.rand(3, 100, 50), Image.new("RGB", (30, 60), "green"), paths[1]]
    out = tmp_path / "ranked.png"
    save_ranked_list(out, torch.randint(0, 255, (3, 128, 64), dtype=torch.uint8), gallery,
                     ["match", "wrong", "junk", "match"], [0.1, 0.2, 0.3, 0.4], size=(64, 128), border=4)
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.size == (5 * (72 + 8), 136 + 14)
        assert picture.getpixel((80 + 1, 1)) == (30, 170, 60)  # first gallery image: a true match, green
        assert picture.getpixel((240 + 1, 1)) == (160, 160, 160)  # third: junk, grey


def test_save_ranked_list_rejects_unknown_labels(tmp_path):
    with pytest.raises(ValueError, match=r"labels must be in \('match', 'wrong', 'junk', 'unknown'\), got 'ok'"):
        save_ranked_list(tmp_path / "x.png", torch.rand(3, 8, 4), [torch.rand(3, 8, 4)], ["ok"])
