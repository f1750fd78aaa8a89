"""Re-ID and verification metrics against hand-worked examples and brute force."""

import numpy as np
import pytest

from mami_jax.evaluate import metrics
from mami_jax.evaluate.metrics import reid_metrics, verification_metrics

# Gallery: g0 A/s1, g1 B/t1, g2 A/s2, g3 C/u1, g4 B/t2
G_PIDS = ["A", "B", "A", "C", "B"]
G_STUDIES = ["s1", "t1", "s2", "u1", "t2"]
# Queries: q0 A/s1 (g0 is its own study: excluded), q1 B/t9 (nothing excluded),
#          q2 D (no gallery image: skipped), q3 C/u1 (its only image is its own study: skipped)
Q_PIDS = ["A", "B", "D", "C"]
Q_STUDIES = ["s1", "t9", "x", "u1"]
S = np.array([
    # q0: drop g0; order g1 .9, g3 .5, g2 .3, g4 .1 -> match g2 at rank 3: AP 1/3, INP 1/3
    [0.95, 0.9, 0.3, 0.5, 0.1],
    # q1: order g2 .7, g1 .6, g4 .6 (tie: lower index first), g0, g3 -> matches at 2, 3
    #     AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3
    [0.2, 0.6, 0.7, 0.1, 0.6],
    [0.1, 0.2, 0.3, 0.4, 0.5],
    [0.1, 0.2, 0.3, 0.4, 0.5],
])


def test_hand_worked_example():
    m = reid_metrics(S, Q_PIDS, G_PIDS, Q_STUDIES, G_STUDIES, ks=(1, 2, 5))
    assert m["num_valid_queries"] == 2
    assert m["num_skipped_queries"] == 2
    assert m["rank1"] == 0.0
    assert m["rank2"] == 0.5  # q1's first match is at rank 2
    assert m["rank5"] == 1.0
    assert m["mAP"] == pytest.approx((1 / 3 + 7 / 12) / 2)  # 11/24
    assert m["mINP"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    np.testing.assert_allclose(m["cmc"][:4], [0.0, 0.5, 1.0, 1.0])
    assert len(m["cmc"]) == 50


def test_ties_broken_by_gallery_index():
    # q1 with g1, g2 (a negative) and g4 all at 0.6: order g1, g2, g4 -> ranks 1 and 3
    # AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3, rank-1 hit.
    s = np.array([[0.2, 0.6, 0.6, 0.1, 0.6]])
    m = reid_metrics(s, ["B"], G_PIDS, ["t9"], G_STUDIES, ks=(1,))
    assert m["rank1"] == 1.0
    assert m["mAP"] == pytest.approx(5 / 6)
    assert m["mINP"] == pytest.approx(2 / 3)
    # The negative first in gallery order instead: move it to index 0 (pid B has g2, g4).
    m2 = reid_metrics(s, ["B"], ["C", "A", "B", "A", "B"], ["t9"], G_STUDIES, ks=(1,))
    # order: g1 (A) .6, g2 (B) .6, g4 (B) .6 -> ranks 2, 3: AP = (1/2 + 2/3)/2
    assert m2["rank1"] == 0.0
    assert m2["mAP"] == pytest.approx(7 / 12)


def test_study_ids_only_compared_within_a_patient():
    # Query A/"1". Gallery: A/"1" (own study: excluded), B/"1" (another patient's study
    # that happens to share the id: NOT excluded), A/"2" (true match).
    s = np.array([[1.0, 0.9, 0.5]])
    m = reid_metrics(s, ["A"], ["A", "B", "A"], ["1"], ["1", "1", "2"], ks=(1, 2))
    assert (m["rank1"], m["rank2"], m["mAP"]) == (0.0, 1.0, 0.5)


def test_no_valid_query_gives_nan_and_counts():
    m = reid_metrics(np.zeros((1, 2)), ["A"], ["A", "B"], ["1"], ["1", "2"])
    assert m["num_valid_queries"] == 0 and m["num_skipped_queries"] == 1
    assert np.isnan(m["rank1"]) and np.isnan(m["mAP"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-finite.*query 1, gallery 2"):
        s = S.copy()
        s[1, 2] = np.nan
        reid_metrics(s, Q_PIDS, G_PIDS, Q_STUDIES, G_STUDIES)
    with pytest.raises(ValueError, match="does not match"):
        reid_metrics(S[:, :4], Q_PIDS, G_PIDS, Q_STUDIES, G_STUDIES)
    with pytest.raises(TypeError, match="strings"):
        reid_metrics(S, [1, 2, 3, 4], G_PIDS, Q_STUDIES, G_STUDIES)
    with pytest.raises(ValueError, match="ks"):
        reid_metrics(S, Q_PIDS, G_PIDS, Q_STUDIES, G_STUDIES, ks=(0,))


def brute_force(s, qp, gp, qs, gs, ks, cmc_ranks=50):
    """Independent reference: per query, sort the kept gallery with (-score, index)."""
    first, aps, inps = [], [], []
    for i in range(s.shape[0]):
        kept = [g for g in range(s.shape[1]) if not (gp[g] == qp[i] and gs[g] == qs[i])]
        kept.sort(key=lambda g: (-s[i, g], g))
        hits = [r + 1 for r, g in enumerate(kept) if gp[g] == qp[i]]
        if not hits:
            continue
        first.append(hits[0])
        aps.append(np.mean([(t + 1) / r for t, r in enumerate(hits)]))
        inps.append(len(hits) / hits[-1])
    first = np.array(first)
    out = {f"rank{k}": float(np.mean(first <= k)) for k in ks}
    out["mAP"], out["mINP"] = float(np.mean(aps)), float(np.mean(inps))
    out["num_valid_queries"] = len(first)
    out["cmc"] = np.array([np.mean(first <= k) for k in range(1, cmc_ranks + 1)])
    return out


def random_problem(rng, q, g, patients, studies, integer_scores):
    qp = rng.integers(0, patients, q)
    gp = rng.integers(0, patients, g)
    qs = rng.integers(0, studies, q)
    gs = rng.integers(0, studies, g)
    if integer_scores:  # many exact ties
        s = rng.integers(-3, 4, (q, g)).astype(np.float32)
    else:
        s = rng.normal(size=(q, g)).astype(np.float32)
    return s, qp, gp, qs, gs


@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("patients", [3, 15])  # 3 patients: > COUNT_THRESHOLD matches a query
def test_against_brute_force(integer_scores, patients):
    rng = np.random.default_rng(patients + 10 * integer_scores)
    s, qp, gp, qs, gs = random_problem(rng, 40, 200, patients, 3, integer_scores)
    ks = (1, 3, 5, 10)
    got = reid_metrics(s, qp, gp, qs, gs, ks=ks)
    ref = brute_force(s, qp, gp, qs, gs, ks)
    assert got["num_valid_queries"] == ref["num_valid_queries"] > 30
    for key in ["mAP", "mINP"] + [f"rank{k}" for k in ks]:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    np.testing.assert_allclose(got["cmc"], ref["cmc"], atol=1e-12)
    if patients == 3:
        assert metrics.build_query_targets(qp, gp, qs, gs).n_match.max() > metrics.COUNT_THRESHOLD


def test_count_and_sort_paths_agree(monkeypatch):
    rng = np.random.default_rng(5)
    s, qp, gp, qs, gs = random_problem(rng, 30, 80, 6, 2, integer_scores=True)
    s[:, ::7] = -0.0  # signed zeros must tie with +0.0 in both paths
    s[:, 3::7] = 0.0
    counted = reid_metrics(s, qp, gp, qs, gs)
    monkeypatch.setattr(metrics, "COUNT_THRESHOLD", 0)
    sorted_ = reid_metrics(s, qp, gp, qs, gs)
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert counted[key] == sorted_[key]
    ref = brute_force(s, qp, gp, qs, gs, (1, 5, 10))
    assert counted["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)


def test_query_targets_csr():
    t = metrics.build_query_targets(Q_PIDS, G_PIDS, Q_STUDIES, G_STUDIES)
    assert [t.matches(i).tolist() for i in range(4)] == [[2], [1, 4], [], []]
    assert [t.excluded(i).tolist() for i in range(4)] == [[0], [], [], [3]]
    np.testing.assert_array_equal(t.padded(np.array([1, 0, 2]), "match", 2),
                                  [[1, 4], [2, -1], [-1, -1]])


def test_query_targets_hold_no_pair_lists():
    """Thousands of tiles of one patient made millions of same-patient pairs, all listed
    up front (4 patients x 4000 tiles: 2.5 GB); the targets are now ranges of one
    ordering of the gallery, a few arrays of the queries' and gallery's length."""
    pids = np.repeat(["a", "b"], 6000)
    studies = np.asarray([f"{p}{i % 2}" for i, p in enumerate(pids)])
    t = metrics.build_query_targets(pids, pids, studies, studies)
    held = sum(np.asarray(v).nbytes for v in vars(t).values() if isinstance(v, np.ndarray))
    assert held <= 5 * 8 * pids.size             # 3000 x 12000 pairs would be 36e6 x 8 bytes
    assert t.n_match.tolist() == [3000] * pids.size
    assert t.matches(0).tolist() == list(range(1, 6000, 2))
    assert t.excluded(1).tolist() == list(range(1, 6000, 2))


# ----------------------------------------------------------------------------- verification

def test_verification_hand_worked():
    # positives 0.9 0.8 0.4; negatives 0.7 0.3 0.2 0.1
    # AUC: 0.9 and 0.8 beat all 4 negatives, 0.4 beats 3 -> 11/12.
    # Sweep (threshold: FAR, TAR): inf: 0,0  .9: 0,1/3  .8: 0,2/3  .7: 1/4,2/3  .4: 1/4,1 ...
    # FRR-FAR: 1, 2/3, 1/3, 1/12, -1/4 -> crossing between (1/4, 1/3) and (1/4, 0):
    # lambda = (1/12) / (1/12 + 1/4) = 1/4 -> EER = 1/4 (FRR = 1/3 - 1/12 = 1/4 too).
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1]
    same = [True, True, True, False, False, False, False]
    m = verification_metrics(scores, same)
    assert m["auc"] == pytest.approx(11 / 12)
    assert m["eer"] == pytest.approx(0.25)
    assert m["tar_at_far_1e-3"] == pytest.approx(2 / 3)  # best point with no false accept
    assert m["threshold_at_far_1e-3"] == pytest.approx(0.8)
    assert (m["num_positive_pairs"], m["num_negative_pairs"]) == (3, 4)
    m30 = verification_metrics(scores, same, far=0.3)
    assert m30["tar_at_far_3e-1"] == 1.0 and m30["threshold_at_far_3e-1"] == pytest.approx(0.4)


def test_verification_ties_and_eer_interpolation():
    # pos 0.5 0.5; neg 0.5 0.1: pairs (0.5,0.5) x2 count half, (0.5,0.1) x2 count 1 -> 3/4
    m = verification_metrics([0.5, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert m["auc"] == pytest.approx(0.75)
    # Sweep: inf: FAR 0, FRR 1; 0.5: FAR 1/2, FRR 0 -> line FRR = 1 - 2 FAR meets FAR=FRR at 1/3
    assert m["eer"] == pytest.approx(1 / 3)
    # Perfect separation: AUC 1, EER 0.
    perfect = verification_metrics([3, 2, 1, 0], [1, 1, 0, 0])
    assert perfect["auc"] == 1.0 and perfect["eer"] == 0.0
    assert perfect["tar_at_far_1e-3"] == 1.0


def test_auc_against_pairwise_count():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=300), 1)  # rounding creates ties
    same = rng.random(300) < 0.3
    pos, neg = scores[same], scores[~same]
    pairwise = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :]))
    m = verification_metrics(scores, same)
    assert m["auc"] == pytest.approx(pairwise / (pos.size * neg.size), abs=1e-12)
    # TAR@FAR against a direct threshold scan.
    far = 0.05
    best = 0.0
    for t in np.unique(scores):
        if np.mean(neg >= t) <= far:
            best = max(best, np.mean(pos >= t))
    assert m["tar_at_far_1e-3"] <= verification_metrics(scores, same, far)["tar_at_far_5e-2"]
    assert verification_metrics(scores, same, far)["tar_at_far_5e-2"] == pytest.approx(best)


def test_verification_bad_inputs():
    with pytest.raises(ValueError, match="both kinds"):
        verification_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        verification_metrics([0.1, np.inf], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        verification_metrics([0.1, 0.2], [1, 2])
    assert metrics.far_key(1e-3) == "1e-3" and metrics.far_key(5e-4) == "5e-4"


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(metrics)
    assert result.attempted >= 2 and result.failed == 0


def test_chance_rank1_counts_what_a_query_is_ranked_against():
    """Matches over the images of other studies, averaged over the queries that have a
    match (the phantom baselines averaged (count - 1) / (n - 1) over every image: 0.5
    here, with the own study in and the patient without a match counted)."""
    from mami_jax.evaluate.metrics import chance_rank1
    assert chance_rank1(["a", "a", "b", "b", "c"], ["1", "2", "3", "4", "5"]) == pytest.approx(0.25)
    # a's first two images share study s1: each is ranked against 2 images, 1 a match;
    # the third against 3, 2 of them matches; b has no match
    assert chance_rank1(["a", "a", "a", "b"], ["s1", "s1", "s2", "s3"]) == pytest.approx(
        (1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert np.isnan(chance_rank1(["a", "b"], ["1", "2"]))
    # study ids unique only within a patient: b's study "1" is not a's. a's query (study
    # 1) is ranked against b/1 and b/2 and has no match; b/1 against a/1 and b/2 (one
    # match), b/2 against a/1 and b/1 (one): (1/2 + 1/2) / 2 (0.75 when b/1 was left out
    # of a/1's ranking)
    assert chance_rank1(["a", "b", "b"], ["1", "1", "2"]) == pytest.approx(0.5)
