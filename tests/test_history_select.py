"""History selection: of the query's own patient only strictly earlier images of its
modality count, never its own study, the query itself or an image without an order,
however similar a later image is; every other patient's images are candidates (a
manifest's orders are visits within a patient, which say nothing across patients)."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.archive import Archive  # noqa: E402
from mami_jax.apps.history.history_select import (NEW_IMAGE_DATASET, is_history,  # noqa: E402
                                                   retrieve, true_history)
from mami_jax.data.manifest import ManifestRow  # noqa: E402


def _row(image_id, pid, study, order, modality="xray"):
    return ManifestRow(image_id=image_id, patient_id=pid, study_id=study, order=order,
                       modality=modality, dataset="d", view="", path=f"/x/{image_id}")


def _new(order):
    """A queried image not in the archive, as ``query_rows`` makes it: a patient and study
    of its own, of the reserved dataset."""
    return _row("query:/new.png", "query:/new.png", "query:/new.png", order).replace(
        dataset=NEW_IMAGE_DATASET)


def test_the_rule():
    q = _row("q", "p", "s2", "2")
    assert is_history(_row("a", "p", "s1", "1"), q)
    assert is_history(_row("b", "other", "s2", "1"), q)       # another patient's study s2
    assert not is_history(_row("c", "p", "s3", "3"), q)       # later
    assert not is_history(_row("d", "p", "s9", "2"), q)       # same visit (order)
    assert not is_history(_row("e", "p", "s2", "1"), q)       # own study, whatever its order
    assert not is_history(_row("q", "p", "s0", "0"), q)       # itself
    assert not is_history(_row("f", "p", "s1", "1", "ct"), q)  # other modality
    assert is_history(_row("g", "p", "s1", "10"), _row("q2", "p", "s", "11"))  # numeric order
    assert not is_history(_row("g", "p", "s1", "10"), _row("q2", "p", "s", "9"))
    assert is_history(_row("h", "p", "s1", "2024-01-05"), _row("q3", "p", "s", "2024-02-01"))
    # Another patient's visit numbers are not this patient's: their later visits, and
    # their images without an order, are candidates (the query's visit 0 had none before).
    assert is_history(_row("j", "other", "s5", "7"), q)
    assert is_history(_row("k", "other", "s6", ""), q)
    assert is_history(_row("j", "other", "s5", "7"), _row("q0", "p", "s", "0"))
    # Without an order an image of the patient is neither earlier nor later: no history
    # (a TCGA slide and its sibling slide of the same time were each other's).
    assert not is_history(_row("l", "p", "s7", ""), q)
    assert not is_history(_row("a", "p", "s1", "1"), _row("q4", "p", "s8", ""))
    assert is_history(_row("b", "other", "s2", "1"), _row("q4", "p", "s8", ""))
    # A new image (no patient) of unknown order is newer than the whole archive; with an
    # order it is a time, and it excludes whatever is not earlier.
    assert is_history(_row("i", "p", "s1", "7"), _new(""))
    assert is_history(_row("i", "p", "s1", "7"), _new("8"))
    assert not is_history(_row("i", "p", "s1", "7"), _new("7"))
    # an archived image without an order cannot be shown earlier than a dated new image,
    # however the date is written (it was earlier than 2019-03-01 and not than 20190301)
    for when in ("2019-03-01", "20190301", "3"):
        assert not is_history(_row("m", "p", "s1", ""), _new(when)), when
    assert is_history(_row("m", "p", "s1", ""), _new(""))


def test_future_images_never_returned_even_when_most_similar():
    rng = np.random.default_rng(0)
    query = _row("q", "p0", "s2", "2")
    target = rng.normal(size=8).astype(np.float32)
    rows, vecs = [], []
    for i in range(40):   # the patient's later images, identical to the query
        rows.append(_row(f"later{i}", "p0", f"t{i}", "3"))
        vecs.append(target)
    rows.append(_row("own_study", "p0", "s2", "1"))       # own study, identical too
    vecs.append(target)
    for i in range(5):    # earlier images, less similar, in decreasing similarity
        rows.append(_row(f"early{i}", f"p{i}", f"e{i}", str(i % 2)))
        vecs.append(target + (i + 1) * 0.3 * rng.normal(size=8).astype(np.float32))
    for i in range(20):   # other modality, identical
        rows.append(_row(f"ct{i}", "p0", f"c{i}", "0", "ct"))
        vecs.append(target)
    archive = Archive(8, "flat")
    archive.add(rows, np.asarray(vecs))
    (matches,) = retrieve(archive, [query], target[None], 3, threshold=0.0)
    names = [archive.rows[m.position].image_id for m in matches]
    assert len(names) == 3 and all(n.startswith("early") for n in names)
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    # Thresholds decide acceptance, per modality.
    (matches,) = retrieve(archive, [query], target[None], 5, threshold={"xray": 2.0})
    assert len(matches) == 5 and not any(m.accepted for m in matches)


def test_retrieval_over_many_queries_obeys_the_rule():
    rng = np.random.default_rng(1)
    rows = [_row(f"p{p}_{m}_{v}", f"p{p}", f"{m}_v{v}", str(v), m)
            for p in range(12) for m in ("xray", "mri") for v in range(4)]
    vecs = np.asarray([rng.normal(size=6) + 3 * (int(r.patient_id[1:]) % 3) for r in rows],
                      np.float32)
    archive = Archive(6, "flat")
    archive.add(rows, vecs)
    results = retrieve(archive, rows, vecs, 4, threshold=0.5)
    used = 0
    for r, matches in zip(rows, results):
        eligible = sum(is_history(c, r) for c in rows)
        assert len(matches) == min(4, eligible)
        for m in matches:
            c = archive.rows[m.position]
            assert c.study_key != r.study_key
            assert c.patient_key != r.patient_key or int(c.order) < int(r.order)
            assert c.modality == r.modality
            used += 1
    assert used > 100


def test_true_history_is_the_patients_earlier_images_most_recent_first():
    rows = [_row(f"{p}{v}", p, f"s{v}", str(v)) for p in ("a", "b") for v in (2, 0, 3, 1)]
    hist = true_history(rows, k=2)
    by_id = {r.image_id: [rows[j].image_id for j in h] for r, h in zip(rows, hist)}
    assert by_id["a0"] == [] and by_id["a1"] == ["a0"]
    assert by_id["a3"] == ["a2", "a1"] and by_id["b2"] == ["b1", "b0"]

