"""The train/eval experiment on stub features (no model): the history model learns from
the retrieved or the true history (``train_history``); an unknown value is an error."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from configs.history import get_config  # noqa: E402
from mami_jax.apps.history import training  # noqa: E402
from mami_jax.apps.history.experiment import Experiment  # noqa: E402
from mami_jax.data.manifest import ManifestRow  # noqa: E402
from mami_jax.runtime.chunk_store import ChunkStore  # noqa: E402


class StubModel:
    """Features without a model: each patient's embedding is its own direction (so the
    archive finds the patient), the backbone feature shows the label weakly."""

    fingerprint = "stub"
    reading = "as configured"
    reading_settings = {"normalization": "per_image"}
    info = {"source": "stub", "fingerprint": "stub"}

    def __init__(self, rows, y):
        rng = np.random.default_rng(0)
        patients = sorted({r.patient_id for r in rows})
        direction = {p: rng.normal(size=8) for p in patients}
        self.emb = np.stack([direction[r.patient_id] + 0.01 * rng.normal(size=8) for r in rows])
        self.backbone = rng.normal(size=(len(rows), 4)) + 0.5 * np.asarray(y)[:, None]

    def chunk_store(self, out, images, what):
        return ChunkStore(None, what)       # keeps no chunks: the features are at hand

    def features(self, rows, progress=True, store=None):
        return self.emb.astype(np.float32), self.backbone.astype(np.float32)


def _rows_and_labels():
    """14 patients (8 train, 3 val, 3 test) with 3 visits; odd patients diseased from visit 1."""
    splits = ["train"] * 8 + ["val"] * 3 + ["test"] * 3
    rows, y = [], []
    for i, split in enumerate(splits):
        for v in range(3):
            rows.append(ManifestRow(image_id=f"p{i}_v{v}", patient_id=f"p{i}", study_id=f"v{v}",
                                    order=str(v), modality="xray", dataset="d", view="",
                                    path="x", split=split))
            y.append(int(i % 2 == 1 and v >= 1))
    return rows, y


def _setup(tmp_path, train_history):
    rows, y = _rows_and_labels()
    cfg = get_config(f"train_history={train_history}")
    with cfg.unlocked():
        cfg.k, cfg.target_far = 2, 0.2
        cfg.classifier.update(dict(steps=5, fused_steps=5, hidden=8, attention_dim=4))
    return Experiment(StubModel(rows, y), rows, y, cfg, str(tmp_path), log=lambda *a: None), rows


def test_train_history_true_learns_from_the_patients_own_history(tmp_path):
    exp, rows = _setup(tmp_path, "true")
    train = exp.split("train")
    assert [len(exp.true[i]) for i in train[:3]] == [0, 1, 2]   # visits 0, 1, 2
    payload = exp.train()
    retrieved_exp, _ = _setup(tmp_path, "retrieved")
    other = retrieved_exp.train()
    # the same current-only classifier, a history term trained on other histories
    np.testing.assert_array_equal(payload["current"]["logits"]["kernel"],
                                  other["current"]["logits"]["kernel"])
    assert not np.array_equal(payload["fused"]["token"]["kernel"],
                              other["fused"]["token"]["kernel"])
    metrics = exp.evaluate(payload)
    assert metrics["overall"]["queries"] == 9
    # an image without history gets the current-only prediction exactly
    x, retrieved, true, _ = exp.inputs(payload["norm"], exp.split("test"))
    first = np.asarray([r.order == "0" for r in (rows[i] for i in exp.split("test"))])
    c = exp.cfg.classifier
    np.testing.assert_array_equal(
        training.predict_fused(payload["fused"], x, true, 2, c)[first],
        training.predict_current(payload["current"], x, 2, c)[first])


def test_unknown_train_history_is_an_error(tmp_path):
    """Refused when the settings are read, and by the experiment before its features (a
    settings object changed after it was read)."""
    message = "train_history='future' unknown; expected retrieved, true or both"
    with pytest.raises(ValueError, match=message):
        get_config("train_history=future")
    rows, y = _rows_and_labels()
    cfg = get_config()
    with cfg.unlocked():
        cfg.train_history = "future"
    model = StubModel(rows, y)
    model.features = None        # never called: the settings are checked first
    with pytest.raises(ValueError, match=message):
        Experiment(model, rows, y, cfg, str(tmp_path), log=lambda *a: None)


def test_train_history_both_sees_each_image_with_each_history(tmp_path, monkeypatch):
    exp, _ = _setup(tmp_path, "both")
    seen = {}

    def spy(current, x, hist, y, n, c, x_map=None):
        seen.update(x=x, hist=hist, y=y)
        return current
    monkeypatch.setattr(training, "train_fused", spy)
    exp.train()
    train = exp.split("train")
    _, retrieved, true, _ = exp.inputs(exp_norm(exp, train), train)
    assert len(seen["x"]) == 2 * len(train)
    np.testing.assert_array_equal(seen["x"][:len(train)], seen["x"][len(train):])
    np.testing.assert_array_equal(seen["hist"].mask, np.concatenate([retrieved.mask, true.mask]))
    np.testing.assert_array_equal(seen["y"], np.concatenate([exp.y[train], exp.y[train]]))


def exp_norm(exp, idx):
    return {"features": training.standardizer(exp.x_raw[idx], exp.modalities[idx])}


@pytest.mark.parametrize("hubness_k,visit_fusion", [(0, 0), (3, 0), (3, 1)])
def test_true_history_scores_are_on_the_retrieval_scale(tmp_path, hubness_k, visit_fusion):
    """The history model reads each history image's score: a true earlier image that
    retrieval also found carries the same score in both histories, cosine, hub-corrected
    or by visit."""
    rows, y = _rows_and_labels()
    cfg = get_config(f"hubness_k={hubness_k},visit_fusion={visit_fusion}")
    with cfg.unlocked():     # pairs calibrates single images; visit fusion its visits' top-k
        cfg.k, cfg.target_far = 2, 0.2
        cfg.calibration = "topk" if visit_fusion else "pairs"
    exp = Experiment(StubModel(rows, y), rows, y, cfg, str(tmp_path), log=lambda *a: None)
    same = 0
    for i in range(len(rows)):
        found = dict(zip(exp.retrieved_lists[i], exp.retrieved_scores[i]))
        for j, s in zip(exp.true[i], exp.true_scores[i]):
            if j in found:
                assert s == pytest.approx(found[j], abs=1e-5)
                same += 1
    assert same > 10
    scores = [s for ss in exp.true_scores for s in ss]
    if visit_fusion:   # z-scores against the val patients' impostor pairs: far above them
        assert min(scores) > 2
        assert exp.calibration["xray"]["method"] == "topk-visits"
    elif hubness_k:    # 2 cos - r_i - r_j: one of each image's 3 neighbours is another patient
        assert max(scores) < 0.9
    else:              # a patient's images are one direction: cosines near 1
        assert min(scores) > 0.99


@pytest.mark.parametrize("damage, reason", [
    (lambda p, good: open(p, "wb").write(good[:len(good) // 2]),
     "BadZipFile: File is not a zip file"),
    (lambda p, good: open(p, "w").write("not a cache\n"),
     "ValueError: This file contains pickled (object) data. If you trust the file you can "
     "load it unsafely using the `allow_pickle=` keyword argument or `pickle.load()`."),
    (lambda p, good: np.savez(p, embedding=np.zeros(2)),
     "an array is missing: fingerprint is not a file in the archive"),
])
def test_an_unreadable_feature_cache_is_computed_again(tmp_path, capsys, damage, reason):
    """OUT/features.npz only saves time: a truncated, foreign or incomplete one is said in
    one line, computed again and replaced."""
    from mami_jax.apps.history.experiment import cached_features
    rows, y = _rows_and_labels()
    model = StubModel(rows, y)
    cfg = get_config("map_dim=0")
    path = tmp_path / "features.npz"
    emb, backbone, _ = cached_features(model, rows, str(tmp_path), cfg)
    good = path.read_bytes()
    damage(str(path), good)
    capsys.readouterr()
    again = cached_features(model, rows, str(tmp_path), cfg)
    assert capsys.readouterr().out == (f"  {path}: not a readable cache ({reason}); computing it "
                                       f"again\n")
    np.testing.assert_array_equal(again[0], emb)
    np.testing.assert_array_equal(again[1], backbone)
    model.features = None           # the cache is whole again: read, not computed
    cached_features(model, rows, str(tmp_path), cfg)
    assert capsys.readouterr().out == ""


def test_cached_features_are_the_same_reading_of_the_images(tmp_path):
    """features.npz was reused whenever the parameters were the same, also by a run whose
    --config read the images at another size or slice count."""
    from mami_jax.apps.history.experiment import cached_features
    rows, y = _rows_and_labels()
    cfg = get_config()
    model = StubModel(rows, y)
    calls = []
    features = model.features
    model.features = lambda *a, **kw: calls.append(1) or features(*a, **kw)
    cached_features(model, rows, str(tmp_path), cfg)
    cached_features(model, rows, str(tmp_path), cfg)
    assert len(calls) == 1
    model.reading = "other slices"
    cached_features(model, rows, str(tmp_path), cfg)
    assert len(calls) == 2


def test_a_feature_constant_over_the_training_rows_is_only_centred():
    """One training image of a modality: every feature's spread was 0 + 1e-6, and the
    evaluated images were scaled by about a million (every probability 0 or 1)."""
    from mami_jax.apps.history import training
    x = np.asarray([[1.0, 5.0], [3.0, 5.0], [7.0, 2.0]], np.float32)
    norm = training.standardizer(x, ["xray", "xray", "fundus"])
    np.testing.assert_allclose(norm["xray"]["std"], [1.0 + 1e-6, 1.0])
    np.testing.assert_allclose(norm["fundus"]["std"], [1.0, 1.0])
    z = training.apply_standardizer(norm, np.asarray([[7.05, 2.0]], np.float32), ["fundus"])
    assert abs(z[0, 0] - 0.05) < 1e-5
