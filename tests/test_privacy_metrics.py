"""Quality (PSNR, SSIM), attack metrics, region removal and the diagnosis probe."""

import math

import numpy as np
import pytest

from mami_jax.apps.privacy import attack_eval, inpaint, quality, utility
from mami_jax.data.manifest import ManifestRow


def test_psnr_and_ssim_known_values():
    a = np.full((2, 8, 8, 1), 0.5)
    assert quality.psnr(a, a) == math.inf
    assert quality.psnr(a, a + 0.01) == pytest.approx(40.0)
    assert quality.ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3))
    noisy = quality.ssim(x, x + rng.normal(0, 0.3, x.shape))
    assert noisy < quality.ssim(x, x + rng.normal(0, 0.05, x.shape)) < 1.0 and noisy < 0.8
    with pytest.raises(ValueError, match="shapes"):
        quality.psnr(a, a[0])


def _rows(n_patients=4, visits=3):
    return [ManifestRow(f"p{p}_v{v}", f"p{p}", f"s{v}", str(v), "xray", "d", "", "x", "test")
            for p in range(n_patients) for v in range(visits)]


def test_attack_report_before_after_and_chance():
    rows = _rows()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    original = np.stack([centers[int(r.patient_id[1:])] + 0.05 * rng.normal(size=16) for r in rows])
    hidden = rng.normal(size=original.shape)              # identity destroyed
    rep = attack_eval.attack_report(original, hidden, rows)
    g = rep["d/xray"]
    assert g["rank1_before"] == 1.0 and g["auc_before"] == 1.0
    assert g["chance_rank1"] == pytest.approx(2 / 11)     # 2 matches among 11 other-study images
    assert g["rank1_after"] < 1.0 and g["auc_after"] < 0.9
    assert rep["mean"]["rank1_before"] == 1.0
    same = attack_eval.attack_report(original, original, rows)["d/xray"]
    assert same["rank1_after"] == same["rank1_before"]


def test_a_group_of_one_patient_has_no_auc_and_the_mean_leaves_it_out():
    """A dataset/modality group of one patient has no different-patient pair: evaluate
    stopped with 'verification needs both kinds of pairs' naming nothing (main's
    evaluation shows '-'). Its AUC is None, the report says n/a, the mean is the others'."""
    from mami_jax.apps.privacy.evaluation_report import markdown
    rows = _rows() + [r.replace(dataset="lone", image_id="lone_" + r.image_id)
                      for r in _rows(n_patients=1)]
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(rows), 8))
    rep = attack_eval.attack_report(emb, emb, rows)
    assert rep["lone/xray"]["auc_before"] is None and rep["lone/xray"]["rank1_before"] == 1.0
    assert rep["mean"]["auc_before"] == pytest.approx(rep["d/xray"]["auc_before"])
    assert rep["mean"]["rank1_before"] == pytest.approx((rep["d/xray"]["rank1_before"] + 1) / 2)
    table = markdown({"attack": {"m": {"lone/xray": dict(rep["lone/xray"], rank1_before_interval=None,
                                                          rank1_after_interval=None)}}})
    assert "| n/a | n/a |" in table


def test_the_utility_figure_leaves_out_modalities_without_an_auc():
    from mami_jax.apps.privacy import figures
    report = {"history_utility": {"/runs/hist": {"auc": {
        "xray": {"relative_change": -0.02}, "ct": {"relative_change": None},
        "mean": {"relative_change": -0.02}}}}}
    assert figures.merged_utility([report], {}) == {"xray": {"hist": -0.02}}


def test_region_mask_fraction_and_diffusion_fill():
    maps = np.zeros((1, 1, 10, 10))
    maps[0, 0, 2:4, 2:7] = 1.0                             # 10 strongest pixels
    mask = inpaint.region_mask(maps, 0.1)
    assert mask.sum() == 10 and mask[0, 0, 2:4, 2:7].all()
    x = np.tile(np.linspace(0, 1, 10)[None, :], (10, 1))[None, None, :, :, None]
    change = inpaint.inpaint(x, maps, 0.1, 200)
    filled = x + change
    assert np.all(change[~mask[..., None].repeat(1, -1)] == 0)   # only the region changes
    np.testing.assert_allclose(filled[0, 0, 2:4, 2:7, 0], x[0, 0, 2:4, 2:7, 0], atol=0.02)
    with pytest.raises(ValueError, match="region_fraction"):
        inpaint.region_mask(maps, 1.5)


def test_a_slice_without_cues_loses_no_region():
    """An all-zero map (an image with no other image of its patient under the gradient cue)
    named no region: its top pixels by a stable sort were the first rows, removed as if they
    held the identity. Another slice of the same batch keeps its region."""
    maps = np.zeros((2, 1, 10, 10))
    maps[1, 0, 5:7, 2:7] = 1.0
    mask = inpaint.region_mask(maps, 0.1)
    assert not mask[0].any() and mask[1].sum() == 10
    x = np.random.default_rng(0).random((2, 1, 10, 10, 1)).astype(np.float32)
    assert not inpaint.inpaint(x, maps, 0.1, 20)[0].any()


def test_the_match_score_of_an_image_alone_is_its_own_similarity_at_any_weight():
    """The cue maps score with own_weight 0: an image without other images of its patient
    scored 0 / 0 (NaN) there; it is scored by its own original whatever the weight, and one
    with other images by their mean plus the weighted own term."""
    import jax.numpy as jnp
    from mami_jax.apps.privacy.objective import match_scores
    e = jnp.asarray([[1.0, 0.0], [0.6, 0.8]])
    others = jnp.asarray([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    mask = jnp.asarray([[1.0, 1.0], [0.0, 0.0]])
    own = jnp.asarray([[0.8, 0.6], [0.0, 1.0]])
    for w, first in ((0.0, 0.5), (1.0, (0.5 + 0.8) / 2), (3.0, (0.5 + 3 * 0.8) / 4)):
        np.testing.assert_allclose(match_scores(e, others, mask, own, w), [first, 0.8],
                                   rtol=1e-6)


def test_logistic_probe_separates_and_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 5))
    x[:, 0] += 2.0 * y
    probe = utility.fit_logistic(x[:100], y[:100])
    assert utility.auc(utility.predict(probe, x[100:]), y[100:]) > 0.85
    assert utility.auc(np.zeros(4), np.array([0, 1, 0, 1])) == 0.5


def test_read_labels_names_file_and_line(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("image_id,disease_label\na,1\nb,x\n")
    with pytest.raises(ValueError, match=r"labels.csv: line 3 \(image_id='b'\): disease_label='x' is not a known label"):
        utility.read_labels(str(p))


def test_patient_report_counts_first_matches_by_hand():
    # Three patients, two studies each; embeddings on the unit circle at hand-picked angles.
    rows = _rows(n_patients=3, visits=2)          # p0_v0 p0_v1 p1_v0 p1_v1 p2_v0 p2_v1
    angle = np.radians([0, 10, 120, 130, 240, 250])
    original = np.stack([np.cos(angle), np.sin(angle)], 1)
    # Protected: p0_v0 turned to 125 deg (now nearest p1), p1_v0 moved only a little (still p1),
    # p2_v1 turned to 5 deg, halfway between p0's 0 and 10 deg (another patient either way).
    moved = angle.copy()
    moved[0], moved[2], moved[5] = np.radians(125), np.radians(115), np.radians(5)
    protected = np.stack([np.cos(moved), np.sin(moved)], 1)
    rep = attack_eval.patient_report(original, protected, rows)["d/xray"]
    assert rep == [
        {"patient": "p1", "queries": 2, "matched_before": 2, "matched_after": 2},
        {"patient": "p0", "queries": 2, "matched_before": 2, "matched_after": 1},
        {"patient": "p2", "queries": 2, "matched_before": 2, "matched_after": 1}]
    hits = attack_eval.first_match_hits(protected, original, rows)
    assert hits.tolist() == [0, 1, 1, 1, 1, 0]


def test_patient_report_agrees_with_rank1_and_counts_queries_without_match():
    rows = _rows() + [ManifestRow("lone", "p9", "s0", "0", "xray", "d", "", "x", "test")]
    rng = np.random.default_rng(1)
    original = rng.normal(size=(len(rows), 8))
    protected = original + rng.normal(0, 1.0, original.shape)
    rep = attack_eval.attack_report(original, protected, rows)["d/xray"]
    per = attack_eval.patient_report(original, protected, rows)["d/xray"]
    assert "p9" not in [v["patient"] for v in per]           # no true match: not a query of Rank-1
    valid = sum(v["queries"] for v in per)
    assert valid == 12
    assert sum(v["matched_after"] for v in per) / valid == pytest.approx(rep["rank1_after"])
    assert sum(v["matched_before"] for v in per) / valid == pytest.approx(rep["rank1_before"])
    assert [v["matched_after"] for v in per] == sorted((v["matched_after"] for v in per), reverse=True)
    with pytest.raises(ValueError, match="13 rows but 12 original"):
        attack_eval.patient_report(original[:12], protected, rows)


def test_psnr_summary_averages_the_changed_images_and_counts_the_unchanged():
    got = quality.psnr_summary([30.0, math.inf, 32.0, math.inf])
    assert got == {"psnr_db": 31.0, "psnr_db_min": 30.0, "unchanged": 2}
    assert quality.psnr_summary([math.inf]) == {"psnr_db": math.inf, "psnr_db_min": math.inf,
                                                "unchanged": 1}


def test_image_quality_leaves_unchanged_images_out_of_the_mean_psnr(tmp_path):
    """evaluate's quality table: an image protection left as it was (infinite PSNR) is
    counted, not averaged (its mean was infinite); hand-worked PSNR of a uniform change."""
    from PIL import Image
    from configs.all import get_config
    from mami_jax.apps.privacy.evaluation import image_quality
    base = np.full((64, 64), 100, np.uint8)
    files = {"a": base, "a_p": base + 10, "b": base, "b_p": base}   # b: unchanged
    for name, pixels in files.items():
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    row = lambda i: ManifestRow(i, "p", "s", "0", "xray", "d", "", str(tmp_path / f"{i}.png"), "test")
    got = image_quality([row("a"), row("b")], [row("a_p"), row("b_p")], get_config("runlocal").data)
    want = 20 * math.log10(255 / 10)
    assert got["xray"]["psnr_db"] == pytest.approx(want, abs=0.01)
    assert got["xray"]["psnr_db_min"] == pytest.approx(want, abs=0.01)
    assert got["xray"]["unchanged"] == 1 and got["mean"]["unchanged"] == 1
    assert got["mean"]["psnr_db"] == pytest.approx(want, abs=0.01)


def test_the_rank1_interval_resamples_patients_not_queries():
    """Ten patients of two queries each, half matched on both, half on neither: Rank-1
    0.5. Patients, not queries, are what vary: the interval is that of a mean of ten
    0/1 draws (about +-0.31), wider than twenty independent queries would give (+-0.22)."""
    patients = ([{"queries": 2, "matched_after": 2}] * 5 + [{"queries": 2, "matched_after": 0}] * 5)
    lo, hi = attack_eval.rank1_interval(patients)
    assert lo < 0.5 < hi and 0.5 < hi - lo < 0.8
    assert attack_eval.rank1_interval([{"queries": 3, "matched_after": 3}] * 4) == [1.0, 1.0]
    assert attack_eval.rank1_interval([]) is None
    uneven = [{"queries": 9, "matched_after": 9}, {"queries": 1, "matched_after": 0}]
    lo, hi = attack_eval.rank1_interval(uneven)         # weighted by queries: 0.9 overall
    assert lo == 0.0 and hi == 1.0


def test_a_group_where_no_patient_has_two_studies_is_left_out_of_the_mean():
    """A single-visit dataset beside the X-rays: its Rank-1 and chance are NaN, which made
    the mean row NaN (null in the JSON, nan in the table, a NaN transfer benchmark). The
    mean is the measurable groups'; the table says n/a for the others."""
    from mami_jax.apps.privacy.evaluation_report import markdown
    rows = _rows(n_patients=3) + [ManifestRow(f"solo{p}", f"q{p}", "s0", "0", "fundus", "d",
                                              "", "x", "test") for p in range(3)]
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(len(rows), 8))
    rep = attack_eval.attack_report(emb, emb, rows)
    assert math.isnan(rep["d/fundus"]["rank1_before"])
    for key in ("chance_rank1", "rank1_before", "rank1_after"):
        assert rep["mean"][key] == pytest.approx(rep["d/xray"][key])
    table = markdown({"attack": {"m": rep}})
    assert "| m | d/fundus | n/a | n/a | n/a |" in table
