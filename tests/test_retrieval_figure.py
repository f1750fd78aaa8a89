"""Retrieval pictures: the matches shown are the ones the metrics rank (own study removed,
by decreasing similarity), correct ones are marked as such, and the top-1 marks add up to
the Rank-1 of the same similarity matrix."""

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.metrics import reid_metrics
from mami_jax.evaluate.protocols import build_protocol
from mami_jax.evaluate.retrieval_figure import (CORRECT_COLOUR, WRONG_COLOUR, display_image,
                                                retrieval_figure, top_matches)
from matplotlib.colors import to_hex


def _rows(tmp_path, patients=4, visits=3):
    rows = []
    for p in range(patients):
        for v in range(visits):
            path = os.path.join(tmp_path, f"p{p}_v{v}.png")
            # Patient p's images are grey level 40 * (p + 1): what is shown is the file.
            Image.fromarray(np.full((12, 12), 40 * (p + 1), np.uint8)).save(path)
            rows.append(ManifestRow(f"p{p}v{v}", f"p{p}", f"s{v}", str(v), "xray", "toy", "",
                                    path, "test"))
    return rows


def test_top_matches_drop_the_own_study_and_rank_by_similarity(tmp_path):
    rows = _rows(tmp_path, patients=3, visits=2)
    protocol = build_protocol(rows, "reid")
    # 6 images; query 0 (p0 v0) likes itself most (excluded), then p1 v0, then p0 v1.
    s = np.full((6, 6), 0.0, np.float32)
    s[0] = [1.0, 0.5, 0.9, 0.1, 0.2, 0.3]
    top = top_matches(s, protocol, k=3)
    assert top.index[0].tolist() == [2, 1, 5]          # gallery 0 (own study) never shown
    np.testing.assert_allclose(top.score[0], [0.9, 0.5, 0.3])
    # against the ranked gallery 0.5 0.9 0.1 0.2 0.3: mean 0.4, standard deviation sqrt(0.08)
    np.testing.assert_allclose(top.standing[0], np.array([0.5, 0.1, -0.1]) / np.sqrt(0.08),
                               rtol=1e-5)
    assert top.correct[0].tolist() == [False, True, False]
    assert not top.top1_correct[0]
    # k larger than the gallery minus the own study: padding is -1 / NaN / False
    wide = top_matches(s, protocol, k=6)
    assert wide.index[0, 5] == -1 and np.isnan(wide.score[0, 5]) and not wide.correct[0, 5]
    assert sorted(wide.index[0, :5].tolist()) == [1, 2, 3, 4, 5]


def test_top1_marks_add_up_to_rank1(tmp_path):
    rows = _rows(tmp_path, patients=5, visits=3)
    protocol = build_protocol(rows, "reid")
    rng = np.random.default_rng(0)
    labels = np.asarray([int(r.patient_id[1:]) for r in rows])
    emb = rng.normal(size=(len(rows), 8)) + 1.2 * np.eye(8)[labels]
    s = (emb @ emb.T).astype(np.float32)
    top = top_matches(s, protocol, k=4)
    m = reid_metrics(s, protocol.query_pids, protocol.gallery_pids, protocol.query_studies,
                     protocol.gallery_studies)
    assert 0.0 < m["rank1"] < 1.0   # some right, some wrong: the check below means something
    assert top.top1_correct[protocol.query_has_match].mean() == pytest.approx(m["rank1"])


def test_figure_shows_the_query_and_frames_matches_by_correctness(tmp_path):
    rows = _rows(tmp_path, patients=3, visits=2)
    protocol = build_protocol(rows, "reid")
    s = np.eye(6, dtype=np.float32)
    s[0] = [1.0, 0.5, 0.9, 0.1, 0.2, 0.3]
    out = os.path.join(tmp_path, "out", "retrieval.png")
    os.makedirs(os.path.dirname(out))
    fig = retrieval_figure(rows, protocol, s, queries=[0, 3], k=3, title="toy", path=out)
    axes = fig.axes
    assert len(axes) == 2 * 4
    frames = [to_hex(ax.spines["top"].get_edgecolor()) for ax in axes[1:4]]
    assert frames == [WRONG_COLOUR, CORRECT_COLOUR, WRONG_COLOUR]
    assert "\u2713" in axes[2].get_title() and "\u2717" in axes[1].get_title()
    # the query cell shows the query's own pixels (patient 0: grey 40/255)
    np.testing.assert_allclose(axes[0].get_images()[0].get_array(), 40 / 255, atol=1e-6)
    np.testing.assert_allclose(display_image(rows[2]), 80 / 255, atol=1e-6)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.dirname(out)) == ["retrieval.png"]   # no temporary left


def test_bad_input_is_one_clear_error(tmp_path):
    rows = _rows(tmp_path, patients=2, visits=2)
    protocol = build_protocol(rows, "reid")
    with pytest.raises(ValueError, match=r"similarity has shape \(3, 4\); protocol 'reid' has "
                                         r"4 queries and 4 gallery images"):
        top_matches(np.zeros((3, 4)), protocol)
    bad = np.zeros((4, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values, first at \(query 1, gallery 2\)"):
        top_matches(bad, protocol)
    with pytest.raises(ValueError, match=r"queries \[7\] out of range: protocol 'reid' has 4"):
        retrieval_figure(rows, protocol, np.zeros((4, 4)), queries=[0, 7])


def test_the_overview_shows_a_query_of_each_group_and_its_matches_as_ranked(tmp_path):
    """``--mode=eval``'s retrieval.png: one row per group, the query's top matches those of
    ``top_matches`` for that query alone (the own visit left out); a group without a
    query that has a true match is left out, and with none at all nothing is written."""
    from mami_jax.evaluate.retrieval_overview import one_query, write_retrieval_overview

    rows = _rows(tmp_path, patients=3, visits=2)
    rows += [dataclasses.replace(r, image_id=r.image_id + "ct", modality="ct")
             for r in (rows[0], rows[2])]        # two patients, one visit each
    groups = {"toy/xray": list(range(6)), "toy/ct": [6, 7]}
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(8, 4)).astype(np.float32)
    by_row = dict(enumerate(emb))

    protocol = build_protocol(rows[:6], "reid")
    alone = one_query(protocol, 4)
    assert alone.query.tolist() == [4] and alone.query_pids.tolist() == ["toy/p2"]
    s = (emb[:6] / np.linalg.norm(emb[:6], axis=1, keepdims=True))
    full = top_matches(s @ s.T, protocol, k=5)
    assert top_matches((s @ s.T)[[4]], alone, k=5).index.tolist() == full.index[[4]].tolist()

    path = tmp_path / "retrieval.png"
    assert write_retrieval_overview(str(path), by_row, rows, groups, "cosine", "step 1")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] < 400       # one row: the ct group has no second patient visit
    assert not write_retrieval_overview(str(tmp_path / "none.png"), by_row, rows,
                                        {"toy/ct": [6, 7]}, "cosine", "step 1")
    assert not (tmp_path / "none.png").exists()
