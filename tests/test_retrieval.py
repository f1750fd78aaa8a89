"""Chunked retrieval equals the full-matrix metrics; verification pair sampling."""

import numpy as np
import pytest

from mami_jax.evaluate import metrics, retrieval

KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP", "num_valid_queries", "num_skipped_queries")


def problem(seed, q=70, g=150, dim=12, patients=25, studies=3, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: every dot product and distance is exact, many ties
        qe = rng.integers(-2, 3, (q, dim)).astype(np.float32)
        ge = rng.integers(-2, 3, (g, dim)).astype(np.float32)
    else:
        qe = rng.normal(size=(q, dim)).astype(np.float32)
        ge = rng.normal(size=(g, dim)).astype(np.float32)
    # Query pids 0..patients+2: the extra patients have no gallery image (skipped queries).
    ids = dict(query_pids=rng.integers(0, patients + 3, q), gallery_pids=rng.integers(0, patients, g),
               query_studies=rng.integers(0, studies, q),
               gallery_studies=rng.integers(0, studies, g))
    return qe, ge, ids


def assert_same(a, b):
    for key in KEYS:
        assert a[key] == b[key], (key, a[key], b[key])
    np.testing.assert_array_equal(a["cmc"], b["cmc"])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunked_equals_full_matrix(metric):
    qe, ge, ids = problem(0)
    full = metrics.reid_metrics(retrieval.pairwise_similarity(qe, ge, metric), **ids)
    assert full["num_valid_queries"] > 40 and full["num_skipped_queries"] > 0
    for chunk in (1, 7, 64, 500):
        got = retrieval.chunked_reid_metrics(qe, ge, **ids, chunk_size=chunk, metric=metric)
        assert_same(got, full)
        assert got["metric"] == metric and got["chunk_size"] == chunk


def test_chunked_equals_independent_full_matrix_with_ties():
    # Integer embeddings, euclidean: the test builds S itself in numpy (exact integers),
    # independent of the JAX scoring; ties are everywhere, so tie-breaking must agree.
    qe, ge, ids = problem(1, integer=True, patients=6)  # 6 patients: ~17 matches per query
    d2 = ((qe[:, None, :] - ge[None, :, :]) ** 2).sum(-1)
    full = metrics.reid_metrics(-d2, **ids)
    got = retrieval.chunked_reid_metrics(qe, ge, **ids, chunk_size=16, metric="euclidean")
    assert_same(got, full)
    # A gallery that contains the queries themselves: each query's own copy is in its
    # own study and must be excluded, not counted as a rank-1 hit.
    gallery = np.concatenate([ge, qe])
    gp = np.concatenate([ids["gallery_pids"], ids["query_pids"]])
    gs = np.concatenate([ids["gallery_studies"], ids["query_studies"]])
    d2 = ((qe[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    args = (ids["query_pids"], gp, ids["query_studies"], gs)
    full = metrics.reid_metrics(-d2, *args)
    got = retrieval.chunked_reid_metrics(qe, gallery, *args, chunk_size=32, metric="euclidean")
    assert_same(got, full)
    assert full["rank1"] < 1.0


@pytest.mark.parametrize("scale", [3e3, 1e4])
def test_euclidean_ranks_survive_a_large_common_component(scale):
    """Euclidean distances ignore a vector added to every embedding; scored as
    |q|^2 + |g|^2 - 2 q.g in float32 they did not (Rank-1 fell to chance when the common
    part was a thousand times the spread): the scorer measures from the gallery's mean."""
    qe, ge, ids = problem(2, dim=64)
    common = np.random.default_rng(3).normal(size=64).astype(np.float32) * scale
    plain = retrieval.chunked_reid_metrics(qe, ge, **ids, chunk_size=16, metric="euclidean")
    moved = retrieval.chunked_reid_metrics(qe + common, ge + common, **ids, chunk_size=16,
                                           metric="euclidean")
    assert plain["rank1"] > 0.1            # before: 0.015 (3e3) and 0.0 (1e4)
    assert moved["rank1"] == plain["rank1"]
    assert moved["mAP"] == pytest.approx(plain["mAP"], abs=1e-4)


@pytest.mark.parametrize("scale", [300, 1000])
def test_cosine_ranks_survive_a_shared_direction(scale):
    """Un-normalised embeddings sharing one large direction have cosines a few float32 steps
    below 1: scored as q.g / (|q||g|) they lost their order (Rank-1 0.104 -> 0.060 at a
    thousand times the spread). The scorer ranks them by the distance of the unit vectors
    from their mean, and gives the same numbers as the cosines computed in float64; the
    score matrix stays the cosines."""
    qe, ge, ids = problem(2, dim=64)
    common = np.random.default_rng(3).normal(size=64) * scale
    q, g = (qe + common).astype(np.float32), (ge + common).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)   # noqa: E731
    exact = unit(q.astype(np.float64)) @ unit(g.astype(np.float64)).T
    want = metrics.reid_metrics(exact, **ids)
    got = retrieval.chunked_reid_metrics(q, g, **ids, chunk_size=16, metric="cosine")
    assert want["rank1"] > 0.1 and got["rank1"] == want["rank1"]
    assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6)
    np.testing.assert_allclose(retrieval.pairwise_similarity(q, g), exact, atol=1e-6)
    q[1] = 0.0                                       # no direction: named, not NaN scores
    with pytest.raises(ValueError, match="query_emb row 1 is all zeros"):
        retrieval.pairwise_similarity(q, g)


def test_pair_distances_survive_a_large_common_component():
    from mami_jax.train.losses import pairwise_euclidean_distances
    x = np.random.default_rng(4).normal(size=(16, 256)).astype(np.float32)
    exact = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    common = np.random.default_rng(5).normal(size=256).astype(np.float32) * 100
    got = np.asarray(pairwise_euclidean_distances(x + common))
    off = ~np.eye(16, dtype=bool)
    assert np.max(np.abs(got - exact)[off] / exact[off]) < 1e-3


def test_perfect_embeddings_score_one():
    # Each patient has its own direction: every query ranks its matches first.
    rng = np.random.default_rng(2)
    basis = np.eye(8, dtype=np.float32)
    qp, gp = rng.integers(0, 8, 30), rng.integers(0, 8, 60)
    qe = basis[qp] + 0.01 * rng.normal(size=(30, 8)).astype(np.float32)
    ge = basis[gp] + 0.01 * rng.normal(size=(60, 8)).astype(np.float32)
    m = retrieval.chunked_reid_metrics(qe, ge, qp, gp, np.zeros(30), np.ones(60), chunk_size=8)
    assert m["rank1"] == m["mAP"] == m["mINP"] == 1.0
    assert m["num_valid_queries"] == 30


def test_bad_embeddings_raise():
    qe, ge, ids = problem(3, q=4, g=6)
    zero = qe.copy()
    zero[2] = 0
    with pytest.raises(ValueError, match="query_emb row 2 is all zeros"):
        retrieval.chunked_reid_metrics(zero, ge, **ids)
    nan = ge.copy()
    nan[5, 1] = np.nan
    with pytest.raises(ValueError, match="gallery_emb row 5 has non-finite"):
        retrieval.chunked_reid_metrics(qe, nan, **ids)
    with pytest.raises(ValueError, match="dim"):
        retrieval.chunked_reid_metrics(qe, ge[:, :5], **ids)
    with pytest.raises(ValueError, match="metric"):
        retrieval.chunked_reid_metrics(qe, ge, **ids, metric="dot")
    with pytest.raises(ValueError, match="gallery ids"):
        retrieval.chunked_reid_metrics(qe, ge[:5], **ids)


# ----------------------------------------------------------------------------- verification

def test_pairs_enumerated_when_small():
    # patients: a a a b b c ; studies: a:1,1,2  b:1,2  c:1
    pids = np.array(["a", "a", "a", "b", "b", "c"])
    studies = np.array(["1", "1", "2", "1", "2", "1"])
    pairs = retrieval.sample_verification_pairs(pids, studies, num_negatives=100)
    pos = set(zip(pairs.first[pairs.same].tolist(), pairs.second[pairs.same].tolist()))
    # (0,1) is one study of patient a: left out.
    assert pos == {(0, 2), (1, 2), (3, 4)}
    neg = set(zip(pairs.first[~pairs.same].tolist(), pairs.second[~pairs.same].tolist()))
    # 15 pairs in all, 4 same-patient -> 11 negatives.
    assert len(neg) == 11 and pairs.num_negative_available == 11
    assert all(pids[i] != pids[j] for i, j in neg)
    assert pairs.num_positive_available == 3


def test_pairs_sampled_when_large():
    rng = np.random.default_rng(4)
    pids = rng.integers(0, 300, 2000)
    studies = rng.integers(0, 2, 2000)
    a = retrieval.sample_verification_pairs(pids, studies, num_negatives=5000, seed=1)
    b = retrieval.sample_verification_pairs(pids, studies, num_negatives=5000, seed=1)
    c = retrieval.sample_verification_pairs(pids, studies, num_negatives=5000, seed=2)
    neg = ~a.same
    assert neg.sum() == 5000
    keys = a.first[neg] * 2000 + a.second[neg]
    assert np.unique(keys).size == 5000  # distinct pairs
    assert np.all(pids[a.first[neg]] != pids[a.second[neg]])
    assert np.all(a.first < a.second)
    np.testing.assert_array_equal(a.first, b.first)  # seeded
    assert not np.array_equal(a.first, c.first)
    assert np.all(pids[a.first[a.same]] == pids[a.second[a.same]])
    assert np.all(studies[a.first[a.same]] != studies[a.second[a.same]])
    capped = retrieval.sample_verification_pairs(pids, studies, 5000, max_positives=100, seed=1)
    assert capped.same.sum() == 100 and capped.num_positive_available == a.same.sum()


def test_chunked_verification_matches_direct_computation():
    rng = np.random.default_rng(5)
    pids = rng.integers(0, 20, 120)
    studies = rng.integers(0, 3, 120)
    emb = rng.normal(size=(120, 6)).astype(np.float32) + 2 * np.eye(20, 6)[pids % 20]
    m = retrieval.chunked_verification_metrics(emb, pids, studies, far=1e-2, num_negatives=3000)
    pairs = retrieval.sample_verification_pairs(pids, studies, num_negatives=3000)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.sum(unit[pairs.first] * unit[pairs.second], axis=1)
    ref = metrics.verification_metrics(scores, pairs.same, far=1e-2)
    assert m["auc"] == pytest.approx(ref["auc"], abs=1e-6)
    assert m["eer"] == pytest.approx(ref["eer"], abs=1e-4)
    assert m["num_negative_pairs"] == 3000
    assert 0.5 < m["auc"] <= 1.0
    euclid = retrieval.pair_scores(emb, [0, 1], [2, 3], metric="euclidean")
    np.testing.assert_allclose(euclid, -np.sum((emb[[0, 1]] - emb[[2, 3]]) ** 2, axis=1),
                               rtol=1e-5)


def test_pairs_of_a_patient_of_thousands_of_images_are_sampled_not_listed():
    """One patient of 6000 tiles in two slides has 9 million positive pairs and, beside a
    patient of 20, few enough negatives to be listed: every pair of the 6020 images (18
    million) was enumerated first (840 MB). Now a seeded uniform sample of max_positives
    is drawn from the 9 million without listing them, and the negatives are listed from
    the pairs that exist."""
    import tracemalloc
    pids = np.asarray(["big"] * 6000 + ["small"] * 20)
    studies = np.asarray([f"{p}{i % 2}" for i, p in enumerate(pids)])
    tracemalloc.start()
    pairs = retrieval.sample_verification_pairs(pids, studies, num_negatives=200_000,
                                                max_positives=1000, seed=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 * 2**20          # the 18 million pair list alone is 144 MB per array
    pos = pairs.same
    assert pos.sum() == 1000 and pairs.num_positive_available == 3000 * 3000 + 10 * 10
    assert (~pos).sum() == pairs.num_negative_available == 6000 * 20
    keys = pairs.first[pos] * pids.size + pairs.second[pos]
    assert np.unique(keys).size == 1000
    assert np.all(pids[pairs.first[pos]] == pids[pairs.second[pos]])
    assert np.all(studies[pairs.first[pos]] != studies[pairs.second[pos]])
    # uniform over the pairs: the big patient holds 9e6 of 9.0001e6, and the smaller and
    # larger index of a uniform pair of 6000 average 6000 / 3 and 2 x 6000 / 3
    assert np.all(pids[pairs.first[pos]] == "big")
    assert 1800 < pairs.first[pos].mean() < 2200 and 3800 < pairs.second[pos].mean() < 4200


def test_fewer_queries_than_a_chunk_are_scored_in_a_block_of_their_size():
    """One query against a large gallery (the retrieval picture's) was padded to a
    1024-row block: 1024 x G scores for one row. The scores are the same."""
    rng = np.random.default_rng(7)
    query, gallery = rng.normal(size=(3, 8)), rng.normal(size=(500, 8))
    scorer = retrieval._BlockScorer(query.astype(np.float32), gallery.astype(np.float32),
                                    "cosine", 1024)
    assert np.asarray(scorer.dispatch(np.arange(3))).shape == (3, 500)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)   # noqa: E731
    np.testing.assert_allclose(retrieval.pairwise_similarity(query, gallery),
                               unit(query) @ unit(gallery).T, atol=1e-5)
