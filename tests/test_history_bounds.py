"""benchmarks/history_bounds.py: the earlier-label ceiling and the ridge probe on a
hand-made manifest."""

import csv
import json

import numpy as np
import pytest

from benchmarks import history_bounds
from mami_jax.data.manifest import ManifestRow


def _rows():
    rows = []
    for i, split in enumerate(["train"] * 6 + ["val"] * 3 + ["test"] * 3):
        for v in range(2):
            rows.append(ManifestRow(image_id=f"p{i}_v{v}", patient_id=f"p{i}", study_id=f"v{v}",
                                    order=str(v), modality="xray", dataset="d", view="",
                                    path="x", split=split))
    return rows


def test_earlier_label_is_any_earlier_positive():
    rows = _rows()
    y = np.asarray([1, 1, 0, 1, 0, 0] * 4, float)       # patients (1,1), (0,1), (0,0), ...
    prior, has = history_bounds.earlier_label(rows, y)
    assert has.tolist() == [False, True] * 12
    assert prior[:6].tolist() == [0, 1, 0, 0, 0, 0]


def test_bounds_on_a_hand_worked_set(tmp_path):
    rows = _rows()
    # test patients 9, 10, 11 have labels (0, 1), (1, 1), (0, 0). The earlier label scores
    # the positives p9_v1, p10_v0, p10_v1 with 0, 0, 1 and the negatives p9_v0, p11_v0,
    # p11_v1 with 0: of the 9 pairs, 3 won (p10_v1) and 6 tied (half each).
    y = np.zeros(len(rows))
    for i, (a, b) in enumerate([(0, 1), (1, 1), (0, 0)] * 4):
        y[2 * i], y[2 * i + 1] = a, b
    x = np.c_[y + 0.01 * np.random.default_rng(0).normal(size=len(y))]  # reads the label
    out = history_bounds.bounds(rows, y, {"perfect": x})["xray"]
    assert out["earlier_label_auc"] == pytest.approx((2 * 3 * 0.5 + 3 * 1) / 9)
    assert out["perfect_auc"] == 1.0 and out["test_images"] == 6
    assert out["test_with_history"] == 3 and out["test_positive"] == 0.5

    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "patient_id", "study_id", "order", "modality", "dataset",
                    "view", "path", "split"])
        for r in rows:
            w.writerow([r.image_id, r.patient_id, r.study_id, r.order, r.modality, r.dataset,
                        r.view, "x.png", r.split])
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "disease_label"])
        w.writerows([r.image_id, int(v)] for r, v in zip(rows, y))
    ids = np.asarray([r.image_id for r in rows])
    np.savez(tmp_path / "f.npz", features=x, image_id=ids)
    np.savez(tmp_path / "shuffled.npz", features=x, image_id=ids[::-1])
    assert history_bounds.main(["--manifest", str(manifest), "--features",
                                f"perfect={tmp_path / 'f.npz'}:features",
                                "--out", str(tmp_path / "b.json")]) == 0
    saved = json.loads((tmp_path / "b.json").read_text())["per_modality"]["xray"]
    assert saved["perfect_auc"] == 1.0
    assert history_bounds.main(["--manifest", str(manifest), "--features",
                                f"s={tmp_path / 'shuffled.npz'}:features",
                                "--out", str(tmp_path / "c.json")]) == 1
    assert not (tmp_path / "c.json").exists()
