"""A modality's fixed value window (``data.modalities.<m>.value_window``): stored values
(Hounsfield units for a CT) mapped to [0, 1] by one range, in place of each read's
min-max and of a DICOM's own VOI window, so a slice reads the same whichever other
slices are read with it, and a visit padded with -3024 looks as one padded with -1024."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.data.config import default_data_config, modality_settings, update_modalities
from mami_jax.data.decode import open_volume
from mami_jax.data.example_reader import ExampleReader
from mami_jax.data.manifest import ManifestRow
from tests.test_data_decode import write_dicom
from tests.test_tuple_of_text_flags import absl_config

nib = pytest.importorskip("nibabel")

CT_WINDOW = (-1000.0, 1000.0)


def _nifti(path, hu):
    """A NIfTI of ``hu`` (slices, H, W), stored (H, W, slices) as int16 Hounsfield units."""
    nib.save(nib.Nifti1Image(np.moveaxis(hu, 0, -1).astype(np.int16), np.eye(4)), str(path))
    return str(path)


def _hu_volume(padding=-1024):
    """Three 4x4 slices: air, water, bone, and a padding corner; slice 2 holds metal."""
    hu = np.zeros((3, 4, 4), np.int16)
    hu[:, 0] = -1000
    hu[:, 1] = 0
    hu[:, 2] = 500
    hu[:, 3, 0] = padding
    hu[2, 3, 3] = 3000
    return hu


def _grey(x):
    return x[..., 0]


def test_a_window_maps_hounsfield_units_to_fixed_intensities(tmp_path):
    path = _nifti(tmp_path / "ct.nii.gz", _hu_volume())
    x = _grey(open_volume(path, value_window=CT_WINDOW).read())
    # the volume is reoriented (radiological view), so compare the value sets per slice
    for t in range(3):
        values = sorted(set(np.round(x[t].ravel(), 6).tolist()))
        expected = [0.0, 0.5, 0.75] + ([1.0] if t == 2 else [])   # -1024 and -1000 clip to 0
        assert values == expected, (t, values)


def test_a_slice_reads_the_same_whichever_slices_are_read_with_it(tmp_path):
    """Min-max scales by the slices read together: slice 0 changes when slice 2 (metal)
    is read with it. The window does not."""
    path = _nifti(tmp_path / "ct.nii.gz", _hu_volume())
    alone, with_metal = (open_volume(path).read([0]), open_volume(path).read([0, 2])[:1])
    assert not np.allclose(alone, with_metal)
    windowed = open_volume(path, value_window=CT_WINDOW)
    np.testing.assert_array_equal(windowed.read([0]), windowed.read([0, 2])[:1])


def test_two_visits_padded_differently_look_the_same(tmp_path):
    a = _nifti(tmp_path / "a.nii.gz", _hu_volume(padding=-1024))
    b = _nifti(tmp_path / "b.nii.gz", _hu_volume(padding=-3024))
    assert not np.allclose(open_volume(a).read(), open_volume(b).read())
    np.testing.assert_array_equal(open_volume(a, value_window=CT_WINDOW).read(),
                                  open_volume(b, value_window=CT_WINDOW).read())


def test_a_dicom_ct_is_windowed_in_hounsfield_units_over_its_own_window(tmp_path):
    """Stored 0..2048 with RescaleIntercept -1024: the window reads the HU, not the
    stored values, and replaces the file's own (lung) window."""
    stored = np.array([[24, 1024], [1524, 2048]], np.uint16)       # -1000, 0, 500, 1024 HU
    path = str(tmp_path / "ct.dcm")
    write_dicom(path, stored, RescaleIntercept=-1024, RescaleSlope=1,
                WindowCenter=-600, WindowWidth=1500)
    own = _grey(open_volume(path).read())[0]
    windowed = _grey(open_volume(path, value_window=CT_WINDOW).read())[0]
    np.testing.assert_allclose(windowed, [[0.0, 0.5], [0.75, 1.0]], atol=1e-6)
    assert not np.allclose(own, windowed)


def test_a_wide_png_is_windowed_in_its_stored_units_and_an_8_bit_one_is_not(tmp_path):
    """DeepLesion's PNGs hold HU + 32768: the window is given in those units."""
    wide = np.array([[31768, 32768], [33268, 40000]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    x = _grey(open_volume(str(tmp_path / "wide.png"), value_window=(31768, 33768)).read())[0]
    np.testing.assert_allclose(x, [[0.0, 0.5], [0.75, 1.0]], atol=1e-6)
    eight = np.array([[0, 51], [102, 255]], np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    y = _grey(open_volume(str(tmp_path / "eight.png"), value_window=(0, 51)).read())[0]
    np.testing.assert_allclose(y, eight / 255.0, atol=1e-6)


def test_the_reader_windows_only_the_modality_that_sets_it(tmp_path):
    ct = _nifti(tmp_path / "ct.nii.gz", _hu_volume())
    xray = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    Image.fromarray(xray).save(tmp_path / "x.png")
    rows = [ManifestRow(image_id=i, patient_id="p", study_id="s", order="0", modality=m,
                        dataset="d", view="", path=p)
            for i, m, p in (("c", "ct", ct), ("x", "xray", str(tmp_path / "x.png")))]
    cfg = default_data_config()
    update_modalities(cfg, ("ct",), value_window=CT_WINDOW, slices=3)
    reader = ExampleReader(rows, cfg)
    np.testing.assert_array_equal(reader.decoded(0, 3, None),
                                  open_volume(ct, value_window=CT_WINDOW).read())
    np.testing.assert_allclose(_grey(reader.decoded(1, 1, None))[0],
                               [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)     # min-max


@pytest.mark.parametrize("value,message", [
    ((1000, -1000), "expected finite lo < hi"),
    ((0, float("nan")), "expected finite lo < hi"),
    ((-1000,), "expected (lo, hi), two numbers"),
    (("a", "b"), "expected (lo, hi), two numbers"),
])
def test_a_bad_window_is_refused_naming_its_key(value, message):
    cfg = default_data_config()
    update_modalities(cfg, ("ct",), value_window=value)
    with pytest.raises(ValueError) as e:
        modality_settings(cfg)
    assert str(e.value).startswith(f"data.modalities.ct.value_window={value!r}: {message}")


def test_the_suggested_flag_parses_to_the_window():
    config = absl_config('--config.data.modalities.ct.value_window="(-1000, 1000)"')
    assert modality_settings(config.data)["ct"].value_window == CT_WINDOW
    assert modality_settings(config.data)["mri"].value_window is None


def test_the_retrieval_picture_shows_a_windowed_modality_as_the_model_reads_it(tmp_path):
    from mami_jax.evaluate.retrieval_figure import display_image
    path = _nifti(tmp_path / "ct.nii.gz", _hu_volume(padding=-3024))
    row = ManifestRow(image_id="c", patient_id="p", study_id="s", order="0", modality="ct",
                      dataset="d", view="", path=path)
    windowed = display_image(row, {"ct": CT_WINDOW, "xray": None})
    assert windowed.shape == (4, 4, 3)
    np.testing.assert_array_equal(windowed[..., 2],
                                  open_volume(path, value_window=CT_WINDOW).read()[1, ..., 0])
    # without a window: the middle slice, read alone
    np.testing.assert_array_equal(display_image(row)[..., 0], open_volume(path).read([1])[0, ..., 0])


def test_the_retrieval_picture_reads_one_file_of_a_slice_folder(tmp_path, monkeypatch):
    from mami_jax.data import decode
    from mami_jax.evaluate.retrieval_figure import display_image
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((3, 4), 40 * i, np.uint8)).save(folder / f"slice_{i:03d}.png")
    read = []
    original = decode._read_pil_array
    monkeypatch.setattr(decode, "_read_pil_array", lambda p, *a, **k: read.append(p) or
                        original(p, *a, **k))
    row = ManifestRow(image_id="m", patient_id="p", study_id="s", order="0", modality="mri",
                      dataset="d", view="", path=str(folder))
    np.testing.assert_allclose(display_image(row), 80 / 255, atol=1e-6)
    assert [os.path.basename(p) for p in read] == ["slice_002.png"]


def test_preview_shows_a_window_given_with_set_before_any_training(tmp_path, capsys):
    from mami_jax.data import preview_manifest
    from mami_jax.data.manifest import write_manifest
    hu = np.tile(np.linspace(-1500, 1500, 32, dtype=np.float32)[None, None], (3, 32, 1))
    path = _nifti(tmp_path / "ct.nii.gz", hu.astype(np.int16))
    manifest = str(tmp_path / "m.csv")
    write_manifest([ManifestRow(image_id="c", patient_id="p", study_id="s", order="0",
                                modality="ct", dataset="d", view="", path=path)], manifest)
    pictures = []
    for extra in ([], ["--set", "data.modalities.ct.value_window=(-1000, 1000)"]):
        out = str(tmp_path / f"p{len(extra)}.png")
        assert preview_manifest.main(["--manifest", manifest, "--out", out] + extra) == 0
        pictures.append(np.asarray(Image.open(out).convert("L"), np.int16))
    assert np.abs(pictures[0] - pictures[1]).max() > 40           # clipped beyond +-1000 HU
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:        # a usage error, as main's --config.KEY
        preview_manifest.main(["--manifest", manifest, "--out", str(tmp_path / "x.png"),
                               "--set", "data.modalities.ct.value_window=abc"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: python -m mami_jax.data.preview_manifest: --set: override "
        "'data.modalities.ct.value_window=abc': data.modalities.ct.value_window takes a list "
        "or None (see --help)"]
