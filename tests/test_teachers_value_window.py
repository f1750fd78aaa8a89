"""``python -m teachers.extract --value-window MODALITY=LO,HI``: the teachers read a
modality through the fixed range a run reads it through, the feature folder records it,
and a rerun with other windows is refused."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from mami_jax.data import teacher_features as tf_files  # noqa: E402
from mami_jax.data.decode import open_volume  # noqa: E402
from mami_jax.data.manifest import read_manifest, write_manifest  # noqa: E402
from mami_jax.phantoms import generator  # noqa: E402
from teachers import extract, registry, writer  # noqa: E402
from teachers.loaders import load_teacher, run_batch  # noqa: E402
from teachers.preprocess import teacher_inputs  # noqa: E402

CT_WINDOW = (-1000.0, 1000.0)


@pytest.fixture(scope="module")
def ct_manifest(tmp_path_factory):
    """The CT rows of tiny phantoms (NIfTI in Hounsfield units), and their X-rays."""
    base = tmp_path_factory.mktemp("ph")
    full = generator.generate(str(base / "phantoms"), patients=4, visits=2, image_size=32,
                              slices=2, workers=1)
    out = str(base / "ct_xray.csv")
    write_manifest([r for r in read_manifest(full) if r.modality in ("ct", "xray")], out)
    return out


def _features(out):
    return tf_files.load_features(out)["random_tiny"]


def test_the_teachers_read_a_windowed_modality_through_its_window(ct_manifest, tmp_path):
    plain = str(tmp_path / "plain")
    windowed = str(tmp_path / "windowed")
    extract.run(ct_manifest, "random_tiny", plain, show_progress=False)
    index = extract.run(ct_manifest, "random_tiny", windowed, show_progress=False,
                        value_windows={"ct": CT_WINDOW})
    assert index["value_windows"] == {"ct": [-1000.0, 1000.0]}
    with open(os.path.join(windowed, tf_files.RUN_FILE)) as f:
        assert json.load(f)["value_windows"] == {"ct": [-1000.0, 1000.0]}
    a, b = _features(plain), _features(windowed)
    rows = {r.image_id: r for r in read_manifest(ct_manifest)}
    teacher = load_teacher(registry.get_spec("random_tiny"))
    for i, image_id in enumerate(b.image_ids):
        row = rows[image_id]
        if row.modality == "xray":            # not windowed: the same features
            np.testing.assert_array_equal(a.vectors[i], b.vectors[i])
            continue
        # the teacher's features of the series read through the window
        x = open_volume(row.path, value_window=CT_WINDOW).read(None)
        direct = run_batch(teacher, teacher_inputs(x, [teacher.spec])["random_tiny"][None])[0]
        np.testing.assert_allclose(b.vectors[i], direct, rtol=1e-4, atol=1e-5)
        assert np.abs(a.vectors[i] - b.vectors[i]).max() > 1e-3
    # a folder of one reading is not resumed with another
    with pytest.raises(writer.RunMismatchError, match="run.json describes another extraction"):
        extract.run(ct_manifest, "random_tiny", windowed, show_progress=False)
    # and one extracted without windows still is, by the same command
    assert extract.run(ct_manifest, "random_tiny", plain, show_progress=False) is not None


@pytest.mark.parametrize("item", ["ct", "ct=-1000", "ct=1000,-1000", "ct=a,b", "knee=0,1",
                                  "ct=nan,1"])
def test_a_bad_window_is_a_usage_error_naming_it(tmp_path, capsys, item):
    with pytest.raises(SystemExit) as e:
        extract.main(["--manifest", "m.csv", "--teachers", "random_tiny", "--out",
                      str(tmp_path / "o"), "--value-window", item])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: python -m teachers.extract: "
                                               f"--value-window {item!r}: expected")
    assert not os.path.exists(tmp_path / "o")


def test_a_window_given_twice_is_refused():
    with pytest.raises(ValueError, match="ct is given twice"):
        extract.parse_value_windows(["ct=-1000,1000", "ct=0,1"])
    assert extract.parse_value_windows(["ct=-1000.0,1000.0", "mri=0,4095"]) == {
        "ct": CT_WINDOW, "mri": (0.0, 4095.0)}
