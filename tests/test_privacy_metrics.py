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
