"""The phantom generator exports its hidden parameters without changing a single image byte,
and the anatomy teacher built from them identifies patients."""

import json
import os

import numpy as np
import pytest

from mami_jax.data.manifest import MODALITIES, read_manifest
from mami_jax.phantoms import common, generator, hidden
from teachers import registry
from teachers.anatomy import IDENTITY_DIM, VISIT_DIM
from teachers.loaders import load_teacher

from tests.phantom_pixels import differences, pixel_digest

#: Shapes and mean pixel values of the images of generate(patients=4, visits=2,
#: image_size=32, slices=2, pathology_field=2), and the manifest's bytes
#: (tests/phantom_pixels.py). Written at 5af75aa's generator, whose image bytes equalled the
#: SHA-256 taken before the hidden-parameter export was added (6531d4c8...) on an AVX-512
#: machine; byte digests do not survive another CPU's rounding, these do.
GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "phantom_pixels.json")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    return generator.generate(str(out), patients=4, visits=2, image_size=32, slices=2,
                              workers=1, pathology_field=2)


def test_phantom_images_unchanged(phantoms):
    with open(GOLDEN, encoding="utf-8") as f:
        want = json.load(f)
    assert len(want) > 20
    assert differences(pixel_digest(os.path.dirname(phantoms)), want) == []


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_replay_draws_the_same_pixels_and_records_normalised_draws(phantoms):
    hp = hidden.HiddenParameters(hidden.read_generation_params(os.path.dirname(phantoms)))
    for index, (_, modalities, course) in enumerate(hp._plan):
        for modality in modalities:
            key = 1 + MODALITIES.index(modality)
            anat = generator.RENDERERS[modality].make_anatomy(common.rng_for(0, index, key, 0), 32)
            plain, _ = generator.render_visit(modality, anat, common.rng_for(0, index, key, 2),
                                              course[1], 32, 2, 2.0)
            draws, replayed = hp.visit(index, modality, 1, return_pixels=True)
            assert _same(plain, replayed), (index, modality)
            identity = hp.identity(index, modality)[1]
            assert identity.size >= 20 and draws.size >= 10
            assert np.all(np.isfinite(identity)) and np.all(np.isfinite(draws))


def test_recording_rng_normalises_each_kind_of_draw():
    rec = hidden.RecordingRng(np.random.default_rng(5))
    plain = np.random.default_rng(5)
    values = [rec.uniform(2.0, 4.0), rec.integers(10, 15), rec.normal(1.0, 2.0), rec.random(),
              rec.poisson(4.0), rec.choice(["a", "b", "c"]), rec.uniform(0, 1, size=3)]
    expected = [plain.uniform(2.0, 4.0), plain.integers(10, 15), plain.normal(1.0, 2.0),
                plain.random(), plain.poisson(4.0), plain.choice(["a", "b", "c"]),
                plain.uniform(0, 1, size=3)]
    for v, e in zip(values, expected):
        assert np.array_equal(v, e)
    d = rec.draws
    assert len(d) == 6                                   # the array draw is not recorded
    assert d[0] == pytest.approx(values[0] - 3.0)        # uniform(2, 4) -> [-1, 1]
    assert d[1] == pytest.approx((values[1] - 10) / 2 - 1)
    assert d[2] == pytest.approx((values[2] - 1.0) / 2.0)
    assert d[3] == pytest.approx(2 * values[3] - 1)
    assert d[4] == pytest.approx((values[4] - 4.0) / 2.0)
    assert d[5] == pytest.approx(["a", "b", "c"].index(values[5]) - 1.0)


def test_anatomy_teacher_identity_is_shared_by_visits(phantoms):
    rows = read_manifest(phantoms)
    teacher = load_teacher(registry.get_spec("anatomy"), manifest_path=phantoms)
    feats = teacher.features_for_rows(rows)
    assert feats.shape == (len(rows), IDENTITY_DIM + VISIT_DIM) == (24, 256)
    by_id = dict(zip((r.image_id for r in rows), feats))
    a0, a1 = by_id["P0000_ct_v0"], by_id["P0000_ct_v1"]
    b0 = by_id["P0002_ct_v0"]
    assert np.array_equal(a0[:IDENTITY_DIM], a1[:IDENTITY_DIM])
    assert not np.array_equal(a0[IDENTITY_DIM:], a1[IDENTITY_DIM:])
    assert not np.array_equal(a0[:IDENTITY_DIM], b0[:IDENTITY_DIM])
    assert np.linalg.norm(a0[:IDENTITY_DIM]) == pytest.approx(np.sqrt(0.8), abs=1e-6)
    assert np.linalg.norm(a0[IDENTITY_DIM:]) == pytest.approx(np.sqrt(0.2), abs=1e-6)
    assert float(a0 @ a1) > float(a0 @ b0)
    assert teacher.fingerprint.startswith("sha256:")


def test_anatomy_teacher_refuses_what_is_not_a_phantom(phantoms, tmp_path):
    rows = read_manifest(phantoms)
    teacher = load_teacher(registry.get_spec("anatomy"), manifest_path=phantoms)
    with pytest.raises(ValueError, match="image_id 'P0000_ct_v0': dataset 'other'"):
        teacher.features_for_rows([rows[0].replace(dataset="other")])
    with pytest.raises(ValueError, match="image_id 'scan_7' is not a phantom image id"):
        teacher.features_for_rows([rows[0].replace(image_id="scan_7")])
    with pytest.raises(ValueError, match="patient P0000 has no xray images"):
        teacher.features_for_rows([rows[0].replace(image_id="P0000_xray_v0")])
    with pytest.raises(ValueError, match="phantoms.json: missing"):
        load_teacher(registry.get_spec("anatomy"), manifest_path=str(tmp_path / "m.csv"))
