"""Identity classes of the training loss: per patient, or per (patient, modality)."""

import numpy as np
import pytest

from mami_jax.data import pipeline, sampler
from mami_jax.data.config import default_data_config
from mami_jax.data.manifest import ManifestRow


def _row(patient, modality, visit, split="train"):
    return ManifestRow(f"{patient}_{modality}_{visit}", patient, f"{modality}_v{visit}", str(visit),
                       modality, "ph", "", f"{patient}/{modality}/{visit}.png", split)


# p1 has X-rays and CT, p2 only X-rays, p3 is a test patient (no class), p4 has one CT image.
ROWS = ([_row("p1", "xray", v) for v in range(2)] + [_row("p1", "ct", v) for v in range(3)]
        + [_row("p2", "xray", v) for v in range(2)] + [_row("p3", "xray", v, "test") for v in range(2)]
        + [_row("p4", "ct", 0)])


def test_label_maps_of_both_modes():
    assert sampler.train_label_map(ROWS) == {"ph/p1": 0, "ph/p2": 1, "ph/p4": 2}
    assert sampler.train_label_map(ROWS, "patient_modality") == {
        "ph/p1/ct": 0, "ph/p1/xray": 1, "ph/p2/xray": 2, "ph/p4/ct": 3}
    assert pipeline.num_classes(ROWS, "patient_modality") == 4


SLICES = {"ct": 2, "xray": 1}


def test_sources_carry_the_chosen_labels():
    by_name = lambda srcs: {s.name: s.labels.tolist() for s in srcs}  # noqa: E731
    # one class per patient: p1's CT and X-ray groups share label 0
    assert by_name(sampler.build_sources(ROWS, slices=SLICES)) == {"ph:ct": [0], "ph:xray": [0, 1]}
    # one per (patient, modality): p1's two groups are different classes
    assert by_name(sampler.build_sources(ROWS, slices=SLICES, identity_classes="patient_modality")) == {
        "ph:ct": [0], "ph:xray": [1, 2]}


def test_unknown_mode_names_the_config_key():
    with pytest.raises(ValueError, match="data.identity_classes='study'"):
        sampler.train_label_map(ROWS, "study")


def test_train_loader_uses_the_config(tmp_path):
    cfg = default_data_config()
    cfg.identity_classes = "patient_modality"
    cfg.patients_per_batch, cfg.images_per_patient = 2, 2
    loader = pipeline.TrainLoader(ROWS, cfg, seed=0)
    assert loader.num_classes == 4
    assert "4 identity classes (one per patient x modality)" in loader.summary()
    for step in range(8):  # labels of every planned batch follow the per-modality map
        plan = loader.plan(step)
        want = [loader.label_map[f"ph/{ROWS[i].patient_id}/{ROWS[i].modality}"] for i in plan.rows]
        np.testing.assert_array_equal(plan.labels, want)
