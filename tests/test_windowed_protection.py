"""Protected copies of a modality read through a fixed value window
(``data.modalities.<m>.value_window``): each writer puts the change back through that
window, so the copy reads, through the window, as the protected image; a pixel the
window clips keeps its stored value unless the change brings it into view."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.apps.privacy.stored_change import windowed_change
from mami_jax.apps.privacy.written_budget import rms_change, write_within_budget
from mami_jax.apps.privacy.writers import write_protected
from mami_jax.data.decode import open_volume
from tests.test_data_decode import write_dicom

nib = pytest.importorskip("nibabel")

CT_WINDOW = (-1000.0, 1000.0)
#: Stored-unit rounding seen through a 2000-unit window (half a unit), with float slack.
ROUNDING = 0.5 / 2000 + 1e-6


def _digest(path):
    if os.path.isdir(path):
        return {n: _digest(os.path.join(path, n)) for n in sorted(os.listdir(path))}
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _hu(shape, seed=0):
    """Hounsfield units with air below the window (-1024, and a -3024 padding corner),
    soft tissue inside it and metal above it (3000)."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-900, 900, shape).astype(np.int16)
    hu[..., 0, :] = -1024
    hu[..., -1, :2] = -3024
    hu[..., 1, -1] = 3000
    return hu


def _change(x, seed=1, amplitude=0.03):
    """A change a protection could make: random, then kept inside [0, 1] as ``perturb``
    keeps ``x + change``; the read's first row (air) gets one that brings half of it into
    view and leaves the other half where the window clips it."""
    rng = np.random.default_rng(seed)
    change = rng.uniform(-amplitude, amplitude, x.shape).astype(np.float32)
    change[..., 0, 0::2, :] = 0.02
    change[..., 0, 1::2, :] = -0.02
    return (np.clip(x + change, 0, 1) - x).astype(np.float32)


def _written(path, out, slices, window=CT_WINDOW):
    """(read before, change, read after) of a copy written through ``window``."""
    x = open_volume(path, value_window=window).read(slices)
    change = _change(x)
    before = _digest(path)
    write_protected(path, slices, change, out, window)
    assert _digest(path) == before                       # the input is untouched
    return x, change, open_volume(out, value_window=window).read(slices)


def test_the_window_inverted_by_hand():
    """Window (-1000, 1000): one unit is 2000 HU."""
    values = np.array([-1500.0, -1500.0, 0.0, 3000.0, 3000.0, -1000.0])
    change = np.array([0.1, -0.1, 0.05, -0.25, 0.1, -0.05])
    np.testing.assert_allclose(windowed_change(values, change, CT_WINDOW),
                               [700.0, 0.0, 100.0, -2500.0, 0.0, 0.0])


def test_a_nifti_copy_reads_through_the_window_as_the_protected_image(tmp_path):
    hu = _hu((6, 8, 3))                                  # stored (H, W, slices)
    path = str(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    out = str(tmp_path / "out" / "ct.nii.gz")
    os.makedirs(os.path.dirname(out))
    x, change, back = _written(path, out, [0, 2])
    np.testing.assert_allclose(back, x + change, atol=ROUNDING)
    stored, written = np.asarray(nib.load(path).dataobj), np.asarray(nib.load(out).dataobj)
    # air and padding the change leaves clipped keep their stored values; the unread
    # slice is untouched
    np.testing.assert_array_equal(written[..., 1], stored[..., 1])
    air = (hu[..., [0, 2]] <= -1024)
    kept = written[..., [0, 2]][air] == hu[..., [0, 2]][air]
    assert 0 < kept.sum() < air.sum()      # half the air stays clipped, half comes into view


def test_a_slice_read_into_view_and_one_left_clipped(tmp_path):
    """One NIfTI pixel of air (-1024) pushed up reads as the change; one pushed down stays
    at -1024 (it reads 0 either way)."""
    hu = np.full((2, 2, 1), -1024, np.int16)
    hu[1, :, 0] = 0
    path = str(tmp_path / "a.nii")
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    x = open_volume(path, value_window=CT_WINDOW).read([0])
    change = np.zeros_like(x)
    air = np.argwhere(x[0, ..., 0] == 0)
    change[0, air[0][0], air[0][1]] = 0.05
    change[0, air[1][0], air[1][1]] = -0.05
    out = str(tmp_path / "b.nii")
    write_protected(path, [0], change, out, CT_WINDOW)
    written = np.asarray(nib.load(out).dataobj)
    assert sorted(written[hu == -1024].tolist()) == [-1024, -900]   # -1000 + 0.05 * 2000
    np.testing.assert_array_equal(written[hu == 0], 0)


def test_a_wide_png_and_a_slice_folder_of_them(tmp_path):
    """16-bit PNGs in HU + 32768 (DeepLesion's units), the window given in those units."""
    window = (31768.0, 33768.0)
    png = str(tmp_path / "a.png")
    Image.fromarray((_hu((10, 12)).astype(np.int32) + 32768).astype(np.uint16)).save(png)
    x, change, back = _written(png, str(tmp_path / "a_out.png"), [0], window)
    np.testing.assert_allclose(back, x + change, atol=ROUNDING)
    folder = tmp_path / "series"
    folder.mkdir()
    for i, s in enumerate(_hu((3, 10, 12), seed=2)):
        Image.fromarray((s.astype(np.int32) + 32768).astype(np.uint16)).save(
            folder / f"slice_{i:03d}.png")
    out = str(tmp_path / "series_out")
    x, change, back = _written(str(folder), out, [0, 2], window)
    np.testing.assert_allclose(back, x + change, atol=ROUNDING)
    assert _digest(os.path.join(out, "slice_001.png")) == _digest(str(folder / "slice_001.png"))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_a_dicom_ct_copy_reads_through_the_window_in_hounsfield_units(tmp_path, photometric):
    """Stored HU + 1024 with RescaleIntercept -1024 and a lung window of its own (which
    the run's window replaces); padding (stored 0) is kept as stored and reads 0."""
    stored = (_hu((10, 12)).astype(np.int32) + 1024).clip(0, 4095).astype(np.uint16)
    path = str(tmp_path / "ct.dcm")
    write_dicom(path, stored, photometric, RescaleIntercept=-1024, RescaleSlope=1,
                WindowCenter=-600, WindowWidth=1500, PixelPaddingValue=0)
    out = str(tmp_path / "ct_out.dcm")
    x, change, back = _written(path, out, [0])
    padded = stored == 0
    expected = np.where(padded[None, ..., None], 0.0, x + change)
    np.testing.assert_allclose(back, expected, atol=ROUNDING)
    import pydicom
    written = pydicom.dcmread(out).pixel_array
    np.testing.assert_array_equal(written[padded], 0)
    assert np.abs(written.astype(int) - stored).max() > 0


def test_a_dicom_series_copy_changes_its_read_slices_through_the_window(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for i, s in enumerate(_hu((3, 10, 12), seed=3)):
        write_dicom(str(folder / f"{i:02d}.dcm"), (s.astype(np.int32) + 1024).clip(0, 4095)
                    .astype(np.uint16), RescaleIntercept=-1024, RescaleSlope=1,
                    InstanceNumber=i + 1, ImagePositionPatient=[0, 0, float(i)])
    out = str(tmp_path / "series_out")
    x, change, back = _written(str(folder), out, [0, 2])
    np.testing.assert_allclose(back, x + change, atol=ROUNDING)


def test_the_budget_is_kept_as_read_through_the_window(tmp_path):
    """``write_within_budget`` reads the copy back through the window: its on-disk RMS is
    the windowed one (a min-max read-back would measure another scale)."""
    hu = _hu((6, 8, 2), seed=4)
    path = str(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    x = open_volume(path, value_window=CT_WINDOW).read([0, 1])
    change = _change(x, amplitude=0.05)
    epsilon = rms_change(0.0, change) * 1.001
    out = str(tmp_path / "out.nii.gz")
    written, on_disk, _ = write_within_budget(path, [0, 1], change, out, epsilon,
                                           value_window=CT_WINDOW)
    back = open_volume(out, value_window=CT_WINDOW).read([0, 1])
    assert on_disk == pytest.approx(rms_change(x, back), rel=1e-6)
    assert on_disk <= epsilon * (1 + 1e-4)
    assert rms_change(0.0, written) > 0.5 * rms_change(0.0, change)


def test_protect_on_a_windowed_ct_run_writes_copies_that_read_as_protected(tmp_path):
    """``privacy protect`` with a run that reads CT through (-1000, 1000) HU: every copy,
    read through that window, differs from its original by a change inside the budget
    (the report's on-disk PSNR is that read's), the match score falls, and the inputs
    stay as they were."""
    import json

    from mami_jax.apps.privacy.__main__ import main
    from mami_jax.config_files import load_config
    from mami_jax.data.manifest import read_manifest
    from mami_jax.apps.privacy.model_input import slice_groups
    from mami_jax.phantoms import generate
    from tests.file_trees import tree_digest
    from tests.history_workdir import make_workdir, split_manifest, write_config
    from tests.privacy_tiny import PRIVACY_CONFIG

    full = generate(str(tmp_path / "ph"), patients=8, visits=2, seed=3, image_size=32,
                    slices=4, workers=1)
    manifest = split_manifest(full, str(tmp_path / "manifest.csv"),
                              {"P0001": "train", "P0004": "test", "P0005": "test",
                               "P0007": "test"}, keep=lambda r: r["modality"] == "ct")
    experiment = load_config(write_config(str(tmp_path)))
    experiment.data.modalities.ct.value_window = CT_WINDOW
    workdir = make_workdir(str(tmp_path / "run"), experiment)      # its config.json windows
    config = tmp_path / "privacy_tiny.py"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config.write_text(PRIVACY_CONFIG.format(root=root, experiment=""))
    before = tree_digest(str(tmp_path / "ph"))
    out = tmp_path / "out"
    assert main(["protect", "--workdir", workdir, "--manifest", manifest, "--out", str(out),
                 "--config", str(config)]) == 0
    assert tree_digest(str(tmp_path / "ph")) == before
    epsilon = load_config(str(config)).perturb.epsilon
    original = {r.image_id: r for r in read_manifest(manifest)}
    protected = read_manifest(str(out / "manifest.csv"))
    assert len(protected) == 6
    report = json.loads((out / "protect_report.json").read_text())
    on_disk = {r["image_id"]: r["psnr_db_on_disk"] for r in report["records"]}
    for r in protected:
        src = original[r.image_id[:-len("_protected")]]
        n = open_volume(src.path).num_slices
        # every slice read together and each view protect optimised (two slices each)
        rms = [rms_change(open_volume(src.path, value_window=CT_WINDOW).read(idx),
                          open_volume(r.path, value_window=CT_WINDOW).read(idx))
               for idx in [np.arange(n)] + slice_groups(n, 2)]
        assert 0 < min(rms) and max(rms) <= epsilon * (1 + 1e-4)
        assert 20 * np.log10(1 / max(rms)) == pytest.approx(on_disk[src.image_id], abs=0.01)
    after = [r["score_after"] for r in report["records"]]
    assert np.mean(after) < np.mean([r["score_before"] for r in report["records"]]) - 0.02
