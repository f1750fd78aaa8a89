"""The verification threshold for a target false-accept rate, on hand-made scores."""

import numpy as np
import pytest

from mami_jax.apps.history.calibration import calibrate, rates, threshold_for_far
from mami_jax.data.manifest import ManifestRow

IMPOSTOR = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
GENUINE = [0.9, 0.8, 0.7]


def test_threshold_accepts_exactly_the_allowed_impostors():
    # 10 impostors, target 0.2: two may be accepted (0.95, 0.85), so accept above 0.75.
    t = threshold_for_far(IMPOSTOR, 0.2)
    assert t == 0.75
    assert rates(GENUINE, IMPOSTOR, t) == (0.2, 2 / 3)
    # 0.29: still two (floor(2.9)); 0.3: three.
    assert threshold_for_far(IMPOSTOR, 0.29) == 0.75
    assert threshold_for_far(IMPOSTOR, 0.3) == 0.65
    assert rates(GENUINE, IMPOSTOR, 0.65) == (0.3, 1.0)
    # Fewer impostors than 1/target: none accepted, above the highest impostor.
    assert threshold_for_far(IMPOSTOR, 0.05) == 0.95
    assert threshold_for_far(IMPOSTOR, 0.0) == 0.95
    assert rates(GENUINE, IMPOSTOR, 0.95) == (0.0, 0.0)


def test_ties_accept_fewer_never_more():
    scores = [0.9, 0.9, 0.5, 0.1]
    t = threshold_for_far(scores, 0.25)   # one allowed, but the top two tie
    assert t == 0.9 and rates([], scores, t)[0] == 0.0
    with pytest.raises(ValueError, match="at least one different-patient pair"):
        threshold_for_far([], 0.1)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\), got 1.5"):
        threshold_for_far(scores, 1.5)


def _row(pid, study, modality, split="val"):
    return ManifestRow(image_id=f"{pid}_{modality}_{study}", patient_id=pid, study_id=study,
                       order=study[-1], modality=modality, dataset="d", view="", path="x",
                       split=split)


def test_calibrate_per_modality_on_the_split_pairs():
    # Two patients, two visits each, 2-d unit vectors at known angles.
    angle = {"p1": 0.0, "p2": 1.0}
    rows, vecs = [], []
    for pid in ("p1", "p2"):
        for v, jitter in (("v0", 0.0), ("v1", 0.1)):
            rows.append(_row(pid, v, "xray"))
            a = angle[pid] + jitter
            vecs.append([np.cos(a), np.sin(a)])
    rows.append(_row("p3", "v0", "xray", split="train"))   # not in the split: ignored
    vecs.append([1.0, 0.0])
    rows.append(_row("p4", "v0", "ct"))                     # one image: no pairs
    vecs.append([0.0, 1.0])
    out = calibrate(rows, np.asarray(vecs), 0.0, "val")
    assert list(out) == ["xray"]
    c = out["xray"]
    assert (c["genuine_pairs"], c["impostor_pairs"], c["patients"]) == (2, 4, 2)
    # impostor angles 1.0, 0.9, 1.1, 1.0: the highest cosine is cos(0.9)
    assert c["threshold"] == pytest.approx(np.cos(0.9))
    assert (c["far"], c["tar"]) == (0.0, 1.0)   # genuine cos(0.1) > cos(0.9)
    with pytest.raises(ValueError, match="no modality of split 'test' has both"):
        calibrate(rows, np.asarray(vecs), 0.0, "test")


def test_topk_calibration_uses_the_archive_candidates():
    pytest.importorskip("faiss")
    import ml_collections

    from mami_jax.apps.history.archive import Archive
    from mami_jax.apps.history.calibration import calibrate_archive, calibrate_topk

    # Angles: val patients p1 (0.0, 0.1) and p2 (1.0, 1.1) at visits v0, v1; a train
    # patient p3 at visit v0 lies at 0.05, closer to p1's v1 than p1's own v0 is.
    spec = [("p1", "v0", 0.0, "val"), ("p1", "v1", 0.1, "val"), ("p2", "v0", 1.0, "val"),
            ("p2", "v1", 1.1, "val"), ("p3", "v0", 0.05, "train")]
    rows = [_row(pid, v, "xray", split) for pid, v, _, split in spec]
    vecs = np.asarray([[np.cos(a), np.sin(a)] for _, _, a, _ in spec])
    archive = Archive(2, "flat", {}, {})
    archive.add(rows, vecs)
    out = calibrate_topk(archive, rows, vecs, 0.0, "val", k=5)["xray"]
    # Every val image has the other patients' images as candidates, whatever their visit
    # (3 each: 12 impostors); p1 v1 and p2 v1 also their own v0 (2 genuine).
    assert (out["genuine_pairs"], out["impostor_pairs"], out["patients"]) == (2, 12, 2)
    assert out["threshold"] == pytest.approx(np.cos(0.05), abs=1e-6)  # the train patient
    assert out["method"] == "topk" and out["k"] == 5
    assert (out["far"], out["tar"]) == (0.0, 0.0)   # cos(0.1) < cos(0.05): none accepted
    # k = 1 keeps only each query's best candidate: p3 v0 for both of p1's, p1 v1 for p2 v0,
    # p2 v0 for p2 v1.
    one = calibrate_topk(archive, rows, vecs, 0.0, "val", k=1)["xray"]
    assert (one["genuine_pairs"], one["impostor_pairs"]) == (1, 3)
    # The pairs method sees only the validation patients: p3 does not count.
    cfg = ml_collections.ConfigDict(dict(calibration="pairs", target_far=0.0,
                                         calibration_split="val", k=5))
    pairs = calibrate_archive(archive, rows, vecs, cfg)["xray"]
    assert pairs["threshold"] == pytest.approx(np.cos(0.9), abs=1e-6)
    assert pairs["method"] == "pairs" and pairs["tar"] == 1.0
    cfg.calibration = "topk"
    assert calibrate_archive(archive, rows, vecs, cfg)["xray"]["threshold"] == out["threshold"]
    cfg.calibration = "best"
    with pytest.raises(ValueError, match=r"calibration='best' unknown; expected one of pairs, "
                       r"topk"):
        calibrate_archive(archive, rows, vecs, cfg)
    with pytest.raises(ValueError, match=r"no image of split 'test' has an earlier candidate"):
        calibrate_topk(archive, rows, vecs, 0.0, "test", k=5)
