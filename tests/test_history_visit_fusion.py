"""Retrieval by whole visits (apps/history/visit_fusion.py), on hand-made embeddings."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.archive import Archive  # noqa: E402
from mami_jax.apps.history.history_select import retrieve  # noqa: E402
from mami_jax.apps.history.visit_fusion import (VisitFusion, impostor_stats,  # noqa: E402
                                                visit_key)
from mami_jax.data.manifest import ManifestRow  # noqa: E402


def _row(patient, visit, modality, split="test"):
    return ManifestRow(image_id=f"{patient}_{modality}_v{visit}", patient_id=patient,
                       study_id=f"{modality}_v{visit}", order=str(visit), modality=modality,
                       dataset="d", view="", path="x", split=split)


def _unit(*v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


#: Query: patient A's visit 1 (an X-ray and a CT). Its X-ray alone is closer to patient B's
#: earlier X-ray (cosine 0.9) than to A's own (0.8); A's earlier CT is close to A's (0.95),
#: B's is not (0). A's visit 2 matches perfectly but is later: never history of visit 1.
EMBEDDINGS = {
    ("A", 1, "xray"): _unit(1, 0, 0, 0), ("A", 1, "ct"): _unit(0, 1, 0, 0),
    ("A", 0, "xray"): _unit(0.8, 0.6, 0, 0), ("A", 0, "ct"): _unit(0, 0.95, np.sqrt(1 - 0.95**2), 0),
    ("B", 0, "xray"): _unit(0.9, 0, np.sqrt(1 - 0.81), 0), ("B", 0, "ct"): _unit(0, 0, 1, 0),
    ("C", 0, "xray"): _unit(0, 0, 0, 1), ("C", 0, "ct"): _unit(0, 0, 0, 1),
    ("A", 2, "xray"): _unit(1, 0, 0, 0), ("A", 2, "ct"): _unit(0, 1, 0, 0),
}


def _archive():
    keys = list(EMBEDDINGS)
    rows = [_row(p, v, m) for p, v, m in keys]
    vectors = np.stack([EMBEDDINGS[k] for k in keys])
    archive = Archive(4, "flat", {"hubness_k": 0})
    archive.add(rows, vectors)
    return archive, rows, vectors


def test_impostor_stats_by_hand():
    scores = np.asarray([[1.0, 0.5, 0.2], [0.5, 1.0, 0.4]])
    mean, sd = impostor_stats(scores, ["a", "b"], ["a", "b", "c"])   # .5 .2 .5 .4
    assert mean == pytest.approx(0.4) and sd == pytest.approx(np.std([0.5, 0.2, 0.5, 0.4]))
    with pytest.raises(ValueError, match="different-patient pairs"):
        impostor_stats(scores, ["a", "a"], ["a", "a", "a"])


def test_the_visits_other_modality_outvotes_a_wrong_single_match():
    archive, rows, vectors = _archive()
    query = rows.index(_row("A", 1, "xray"))
    single = retrieve(archive, [rows[query]], vectors[[query]], 1, 0.5)[0]
    assert archive.rows[single[0].position].patient_id == "B"          # the X-ray alone errs
    fusion = VisitFusion(archive, rows, vectors, stats={"xray": (0.0, 1.0), "ct": (0.0, 1.0)})
    found = fusion.retrieve([query], 3, 1.0)[0]
    # visit scores = the sum of the two cosines: A0 0.8 + 0.95, B0 0.9 + 0, C0 0 + 0
    assert [(archive.rows[m.position].patient_id, m.accepted) for m in found] == [
        ("A", True), ("B", False), ("C", False)]
    assert [m.score for m in found] == pytest.approx([1.75, 0.9, 0.0], abs=1e-6)
    # z-normalised per modality: (cos - mean) / sd
    fusion.stats = {"xray": (0.5, 0.5), "ct": (0.0, 2.0)}
    assert fusion.score(query, found[0].position) == pytest.approx((0.8 - 0.5) / 0.5 + 0.95 / 2)


def test_a_later_visit_is_never_history_however_well_it_matches():
    """Of the patient's own visits only earlier ones; other patients' visits whatever their
    order (orders are visits within a patient)."""
    archive, rows, vectors = _archive()
    fusion = VisitFusion(archive, rows, vectors, stats={"xray": (0.0, 1.0), "ct": (0.0, 1.0)})
    for i, r in enumerate(rows):
        for m in fusion.retrieve([i], 10, -np.inf)[0]:
            c = archive.rows[m.position]
            assert c.modality == r.modality
            assert c.patient_id != r.patient_id or int(c.order) < int(r.order)
    later = rows.index(_row("A", 2, "ct"))
    found = fusion.retrieve([later], 10, -np.inf)[0]
    assert {archive.rows[m.position].image_id for m in found} == {
        "A_ct_v1", "A_ct_v0", "B_ct_v0", "C_ct_v0"}
    assert archive.rows[found[0].position].image_id == "A_ct_v1"


def test_fit_stats_reads_the_calibration_split_against_other_patients():
    archive, rows, vectors = _archive()
    rows = [r.replace(split="val" if r.patient_id == "C" else "test") for r in rows]
    fusion = VisitFusion(archive, rows, vectors)
    stats = fusion.fit_stats("val")     # C0's image against A's three and B's one, per modality
    for m in ("xray", "ct"):
        c = EMBEDDINGS[("C", 0, m)]
        cos = [float(c @ EMBEDDINGS[(p, v, m)]) for p, v in (("A", 0), ("A", 1), ("A", 2), ("B", 0))]
        assert stats[m][0] == pytest.approx(np.mean(cos), abs=1e-6)
        assert stats[m][1] == pytest.approx(max(np.std(cos), 1e-6), abs=1e-6)
    assert visit_key(rows[0]) == ("d", "A", "1")
    del fusion.stats["xray"]
    with pytest.raises(ValueError, match="no xray scores to normalise on"):
        fusion.z(rows.index(_row("A", 1, "xray", "test")), 2)


def test_a_query_visit_from_the_archive_or_from_new_images(tmp_path):
    from mami_jax.apps.history.query_rows import (keyed_to, placed_by_mates, query_row,
                                                  visit_mates)
    keys = list(EMBEDDINGS)
    rows = []
    for p, v, m in keys:
        path = tmp_path / f"{p}_{m}_v{v}.png"
        path.write_bytes(b"x")
        rows.append(_row(p, v, m).replace(path=str(path)))
    archive = Archive(4, "flat", {"hubness_k": 0})
    archive.add(rows, np.stack([EMBEDDINGS[k] for k in keys]))
    # an archived query brings its archived visit by itself
    q = query_row(archive, rows[0].path, None, None)
    assert q.image_id == "A_xray_v1"
    assert [m.image_id for m in visit_mates(archive, q, [])] == ["A_ct_v1"]
    # a new visit: an X-ray and a CT the archive has never seen (A's visit 1 again)
    (tmp_path / "new_xray.png").write_bytes(b"x")
    (tmp_path / "new_ct.png").write_bytes(b"x")
    new = query_row(archive, str(tmp_path / "new_xray.png"), "xray", "1")
    mates = visit_mates(archive, new, [f"ct={tmp_path / 'new_ct.png'}"])
    assert [(m.modality, visit_key(m)) for m in mates] == [("ct", visit_key(new))]
    fusion = VisitFusion(archive, [new] + mates,
                         np.stack([EMBEDDINGS[("A", 1, "xray")], EMBEDDINGS[("A", 1, "ct")]]),
                         stats={"xray": (0.0, 1.0), "ct": (0.0, 1.0)})
    found = fusion.retrieve([0], 3, 1.0)[0]
    # order 1: visit 2 is later, so A's visit 0 wins on the CT's evidence (see above)
    assert [archive.rows[m.position].patient_id for m in found] == ["A", "B", "C"]
    assert [m.score for m in found] == pytest.approx([1.75, 0.9, 0.0], abs=1e-6)
    alone = VisitFusion(archive, [new], EMBEDDINGS[("A", 1, "xray")][None],
                        stats={"xray": (0.0, 1.0), "ct": (0.0, 1.0)}).retrieve([0], 1, 1.0)[0]
    assert archive.rows[alone[0].position].patient_id == "B"
    # an archived image given with --with places the new image in its visit (A, visit 1)
    (mate,) = visit_mates(archive, new, [rows[1].path])
    placed = placed_by_mates(new, [mate])
    (joined,) = keyed_to(placed, [mate])
    assert joined.image_id == "A_ct_v1" and visit_key(joined) == visit_key(placed)
    assert (placed.dataset, placed.patient_id, placed.order) == (mate.dataset, "A", "1")
    # so A's own visit 1 is no history of it: left a stranger, the archived A_xray_v1 of
    # that very visit came first, its score holding A_ct_v1 compared with itself
    stranger = query_row(archive, str(tmp_path / "new_xray.png"), "xray", "")
    for query, first in ((stranger, "A_xray_v1"), (placed_by_mates(stranger, [mate]), None)):
        found = VisitFusion(archive, [query] + keyed_to(query, [mate]),
                            np.stack([EMBEDDINGS[("A", 1, "xray")], EMBEDDINGS[("A", 1, "ct")]]),
                            stats={"xray": (0.0, 1.0), "ct": (0.0, 1.0)}).retrieve([0], 5, 1.0)[0]
        ids = [archive.rows[m.position].image_id for m in found]
        assert (ids[0] == first) if first else all(
            archive.rows[m.position].patient_id != "A" or archive.rows[m.position].order < "1"
            for m in found), ids
    with pytest.raises(ValueError, match="--order 2: the archived --with images are of the "
                                         "visit of order '1'"):
        placed_by_mates(query_row(archive, str(tmp_path / "new_xray.png"), "xray", "2"), [mate])
    with pytest.raises(ValueError, match="not in the archive: give it as MODALITY=PATH"):
        visit_mates(archive, new, [str(tmp_path / "new_ct.png")])
    with pytest.raises(ValueError, match="modality 'mri': the archive holds no such images"):
        visit_mates(archive, new, [f"mri={tmp_path / 'new_ct.png'}"])
    with pytest.raises(FileNotFoundError, match="--with ct=nowhere.png"):
        visit_mates(archive, new, ["ct=nowhere.png"])
    with pytest.raises(ValueError, match="already part of the query's visit"):
        visit_mates(archive, q, [rows[1].path])           # A_ct_v1 comes with A_xray_v1
    with pytest.raises(ValueError, match="already part of the query's visit"):
        visit_mates(archive, new, [rows[1].path, rows[1].path])
    with pytest.raises(ValueError, match="give its --modality"):
        query_row(archive, str(tmp_path / "new_xray.png"), None, None)
