"""``features = "reader"``: a small CNN per modality trained on the labels, cross-fitted
over patient folds (mami_jax/apps/history/diagnosis_reader.py)."""

import dataclasses

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mami_jax.apps.history import diagnosis_reader as dr
from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.metrics import verification_metrics


def _row(image_id, path, modality="xray", patient="p0", order="0", split="train"):
    return ManifestRow(image_id=image_id, patient_id=patient, study_id=f"s{image_id}",
                       order=order, modality=modality, dataset="d", view="", path=path,
                       split=split)


def _auc(scores, y):
    return verification_metrics(np.asarray(scores, np.float64), np.asarray(y) == 1)["auc"]


def _cfg(**kw):
    c = dict(size=16, slices=3, widths=(8, 16), epochs=30, batch_size=8,
             learning_rate=3e-3, weight_decay=0.0, folds=2, seed=0)
    c.update(kw)
    return ml_collections.ConfigDict(c)


def test_an_unreadable_image_is_an_error_naming_it(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png.*\(image bad\)"):
        dr.read_views([_row("bad", str(tmp_path / "bad.png"))], 16, 3, progress=False)


def test_patient_folds_keep_a_patients_images_together_and_balance():
    patients = [f"p{i // 3}" for i in range(30)]          # 10 patients, 3 images each
    fold = dr.patient_folds(patients, 3, seed=0)
    for p in set(patients):
        assert len({f for q, f in zip(patients, fold) if q == p}) == 1
    per_fold = [len({p for p, f in zip(patients, fold) if f == k}) for k in range(3)]
    assert sorted(per_fold) == [3, 3, 4]
    assert not np.array_equal(fold, dr.patient_folds(patients, 3, seed=1))


def test_a_2d_image_is_box_resized_into_three_channels(tmp_path):
    img = np.zeros((32, 32), np.uint8)
    img[:, :16] = 255                                     # left half white
    img[0:2, 30:32] = 255                                 # one 2x2 block -> one pixel at 1.0
    Image.fromarray(img).save(tmp_path / "a.png")
    v = dr.read_view(_row("a", str(tmp_path / "a.png")), 16, 3)
    assert v.shape == (16, 16, 3)
    np.testing.assert_allclose(v[..., 0], v[..., 2])
    np.testing.assert_allclose(v[:, :8, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(v[1:, 8:, 0], 0.0, atol=1e-6)
    assert v[0, 15, 0] == pytest.approx(1.0, abs=1e-6)


def test_each_modality_is_read_at_its_own_size(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tile.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "cxr.png")
    rows = [_row("t", str(tmp_path / "tile.png"), modality="pathology"),
            _row("c", str(tmp_path / "cxr.png"), modality="xray")]
    sizes = dr.modality_sizes(_cfg(size=16, sizes={"pathology": 32}))
    assert (sizes["pathology"], sizes["xray"], sizes["ct"]) == (32, 16, 16)
    views = dr.read_views(rows, sizes, 3, progress=False)
    assert views["pathology"].shape == (1, 32, 32, 3) and views["xray"].shape == (1, 16, 16, 3)
    assert dr.read_views(rows, 16, 3, progress=False)["pathology"].shape == (1, 16, 16, 3)


def test_a_series_gives_evenly_spaced_slices_as_channels(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((8, 8, 6), np.float32)
    for k in range(6):
        vol[..., k] = k                                   # slice k is constant k
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "v.nii.gz"))
    v = dr.read_view(_row("v", str(tmp_path / "v.nii.gz"), modality="ct"), 8, 3)
    assert v.shape == (8, 8, 3)
    # slices round(linspace(0, 5, 3)) = 0, 2, 5, read together: min-max over them
    np.testing.assert_allclose(v.mean((0, 1)), [0.0, 0.4, 1.0], atol=1e-6)


def test_the_reader_reads_a_windowed_modality_as_the_reid_run_and_keeps_the_window(
        tmp_path, monkeypatch):
    """A run that reads CT through (-1000, 1000) HU: the reader's views are read through
    it, the readers' file records it and reads new images (protected copies) so too, and
    the cache key changes with it (and stays what it was without one)."""
    nib = pytest.importorskip("nibabel")
    window = (-1000.0, 1000.0)
    rows, y = [], []
    for i in range(8):
        hu = np.full((8, 8, 3), -1000 + 250 * (i % 2), np.int16)
        hu[0, 0, :] = 3000 if i < 4 else 500         # metal in half: min-max differs
        path = str(tmp_path / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
        rows.append(_row(f"c{i}", path, modality="ct", patient=f"p{i}",
                         split="train" if i < 6 else "test"))
        y.append(i % 2)
    y = np.asarray(y)
    v = dr.read_view(rows[1], 8, 3, window)
    np.testing.assert_allclose(np.median(v), 0.125, atol=1e-6)     # -750 HU, not min-max
    cfg = _cfg(epochs=1)
    assert dr.settings_key(cfg, rows, y, "train", 2) == \
        dr.settings_key(cfg, rows, y, "train", 2, value_windows={})
    assert dr.settings_key(cfg, rows, y, "train", 2) != \
        dr.settings_key(cfg, rows, y, "train", 2, value_windows={"ct": window})
    seen = []
    real = dr.read_views
    monkeypatch.setattr(dr, "read_views", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    dr.reader_logits(rows, y, 2, cfg, "train", str(tmp_path / "out"), progress=False,
                     value_windows={"ct": window})
    trained = dr.TrainedReader(str(tmp_path / "out"))
    assert trained.value_windows == {"ct": window}
    trained.features(rows[6:], progress=False)
    assert seen == [{"ct": window}, {"ct": window}]


def test_a_modality_mixing_images_and_series_is_an_error_naming_the_image(tmp_path):
    nib = pytest.importorskip("nibabel")
    rows = []
    for i in range(3):
        nib.save(nib.Nifti1Image(np.random.rand(8, 8, 4).astype(np.float32), np.eye(4)),
                 str(tmp_path / f"v{i}.nii.gz"))
        rows.append(_row(f"v{i}", str(tmp_path / f"v{i}.nii.gz"), modality="ct"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slice.png")
    rows.append(_row("odd", str(tmp_path / "slice.png"), modality="ct"))
    with pytest.raises(ValueError, match=r"slice\.png \(odd\): 3 reader channels where the "
                                         r"other ct images have 4"):
        dr.read_views(rows, 8, 4, progress=False)


def _blob_images(tmp_path, n_patients, per_patient, rng, label_of):
    """PNG images of noise, with a bright 3x3 blob at a random place when labelled 1."""
    rows, y = [], []
    for p in range(n_patients):
        for v in range(per_patient):
            label = label_of(p, v, rng)
            img = rng.uniform(0, 0.5, (16, 16))
            if label:
                r, c = rng.integers(1, 13, 2)
                img[r:r + 3, c:c + 3] = 1.0
            path = tmp_path / f"p{p}_v{v}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
            split = "train" if p < n_patients * 2 // 3 else "test"
            rows.append(_row(f"p{p}_v{v}", str(path), patient=f"p{p}", order=str(v),
                             split=split))
            y.append(label)
    return rows, np.asarray(y)


def test_the_reader_learns_a_visible_lesion(tmp_path):
    rng = np.random.default_rng(0)
    rows, y = _blob_images(tmp_path, 30, 2, rng, lambda p, v, r: int(r.random() < 0.5))
    logits, readers = dr.cross_fitted_logits(rows, y, 2, _cfg(), "train", progress=False)
    test = np.asarray([r.split == "test" for r in rows])
    score = logits[:, 1] - logits[:, 0]
    assert _auc(score[test], y[test]) > 0.95
    assert _auc(score[~test], y[~test]) > 0.9          # held-out folds read it too
    assert set(readers) == {"xray"} and len(readers["xray"]["folds"]) == 2


def test_training_images_get_logits_from_the_reader_that_never_saw_them(tmp_path):
    """Labels of pure chance: each fold reader memorises its own training images, yet
    the cross-fitted logits of the training images know nothing of their labels."""
    rng = np.random.default_rng(1)
    rows, y = _blob_images(tmp_path, 36, 2, rng, lambda p, v, r: 0)
    y = rng.integers(0, 2, len(rows))                   # labels unrelated to the images
    cfg = _cfg(epochs=250, widths=(16, 32))
    logits, readers = dr.cross_fitted_logits(rows, y, 2, cfg, "train", progress=False)
    train = np.asarray([r.split == "train" for r in rows])
    fold = dr.patient_folds([r.patient_key for r in rows if r.split == "train"], 2, 0)
    views = dr.read_views([r for r in rows if r.split == "train"], 16, 3, progress=False)["xray"]
    stats = readers["xray"]
    net = dr.ReaderNet((16, 32), 2)
    in_sample = np.zeros(len(fold))
    for f in range(2):
        out = dr._batched_logits(net, stats["folds"][f], (views - stats["mean"]) / stats["std"])
        seen = fold != f
        in_sample[seen] = out[seen, 1] - out[seen, 0]   # reader f on its own training images
    y_train = y[train]
    for f in range(2):
        assert _auc(in_sample[fold != f], y_train[fold != f]) > 0.8
    held_out = logits[train, 1] - logits[train, 0]
    assert 0.25 < _auc(held_out, y_train) < 0.75


def test_the_logits_are_cached_for_the_same_settings_images_and_labels(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir()
    rows, y = _blob_images(tmp_path / "img", 8, 2, rng, lambda p, v, r: int(v == 1))
    cfg = _cfg(epochs=1)
    first, info = dr.reader_logits(rows, y, 2, cfg, "train", str(tmp_path))
    assert info == {"reader": "reader", "fingerprint": info["fingerprint"], "feature_dim": 2}
    assert (tmp_path / dr.PARAMS).is_file()

    def refuse(*a, **k):
        raise AssertionError("trained again")
    monkeypatch.setattr(dr, "cross_fitted_logits", refuse)
    again, info2 = dr.reader_logits(rows, y, 2, cfg, "train", str(tmp_path))
    np.testing.assert_array_equal(again, first)
    assert info2 == info
    flipped = y.copy()
    flipped[0] = 1 - flipped[0]                          # a training label changed
    with pytest.raises(AssertionError, match="trained again"):
        dr.reader_logits(rows, flipped, 2, cfg, "train", str(tmp_path))
    with pytest.raises(AssertionError, match="trained again"):
        dr.reader_logits(rows, y, 2, _cfg(epochs=2), "train", str(tmp_path))
    # eval names the readers its classifiers were trained on: other readers are refused
    # before any is trained, the saved ones left as they were (they were replaced first,
    # and the privacy app then read them)
    saved = (tmp_path / dr.PARAMS).read_bytes()
    with pytest.raises(ValueError, match=rf"trained on features='reader' of readers "
                                         rf"{info['fingerprint'][:12]}, this run's readers"):
        dr.reader_logits(rows, flipped, 2, cfg, "train", str(tmp_path),
                         expected=info["fingerprint"])
    assert (tmp_path / dr.PARAMS).read_bytes() == saved
    assert dr.reader_logits(rows, y, 2, cfg, "train", str(tmp_path),
                            expected=info["fingerprint"])[1] == info


def test_one_fold_is_refused():
    with pytest.raises(ValueError, match="at least 2 folds"):
        dr.cross_fitted_logits([], np.zeros(0, int), 2, _cfg(folds=1), "train", progress=False)


def test_the_experiment_reads_the_readers_logits_and_records_them(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from mami_jax.data import image_signature
    from configs.history import get_config
    from mami_jax.apps.history.experiment import Experiment
    from tests.test_history_diagnosis_backbone import StubReid
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    rows, y = _blob_images(tmp_path / "img", 15, 3, rng, lambda p, v, r: int(p % 2 and v >= 1))
    splits = {f"p{p}": ("train" if p < 9 else "val" if p < 12 else "test") for p in range(15)}
    rows = [dataclasses.replace(r, split=splits[r.patient_id]) for r in rows]
    cfg = get_config("features=reader")
    with cfg.unlocked():
        cfg.k, cfg.target_far = 2, 0.2
        cfg.reader.update(dict(size=16, widths=(8,), epochs=3, batch_size=8))
        cfg.classifier.update(dict(steps=5, fused_steps=5, hidden=8, attention_dim=4))
    # the features' cache and the reader's share one question per file (a request each
    # on a bucket)
    asked, real = [], image_signature.path_signature
    monkeypatch.setattr(image_signature, "path_signature", lambda p: asked.append(p) or real(p))
    exp = Experiment(StubReid(rows), rows, y, cfg, str(tmp_path), log=lambda *a: None)
    monkeypatch.undo()
    assert sorted(asked) == sorted(r.path for r in rows)
    assert exp.x_raw.shape == (len(rows), 2)
    payload = exp.train()
    info = exp.classifiers_info()
    assert info["features"] == "reader" and info["feature_dim"] == 2
    assert info["model"]["fingerprint"] == exp.diagnosis_model["fingerprint"]
    exp.check_classifiers(payload, info)
    metrics = exp.evaluate(payload)
    assert metrics["features"] == "reader"
    assert set(metrics["overall"]) >= {"current_only", "retrieved_history", "true_history"}


def test_the_folds_are_dealt_over_the_training_patients(tmp_path):
    """Every patient of the modality was dealt into the folds, so both training patients
    could land in one fold and its reader had nothing to train on ('range() arg 3 must
    not be zero'); one training patient of three images passed the images-per-fold check.
    The training patients are dealt, and fewer of them than folds is named."""
    rng = np.random.default_rng(3)
    rows, y = _blob_images(tmp_path, 9, 2, rng, lambda p, v, r: int(v == 1))
    rows = [r if r.patient_id in ("p0", "p1") else dataclasses.replace(r, split="test")
            for r in rows]
    logits, readers = dr.cross_fitted_logits(rows, y, 2, _cfg(epochs=1), "train",
                                             progress=False)
    assert len(readers["xray"]["folds"]) == 2 and np.isfinite(logits).all()
    one = [r if r.patient_id == "p0" else dataclasses.replace(r, split="test") for r in rows]
    with pytest.raises(ValueError, match=r"^features=reader: modality xray has 1 patients in "
                                         r"split 'train'; cross-fitting over reader.folds=2"):
        dr.cross_fitted_logits(one, y, 2, _cfg(epochs=1), "train", progress=False)
