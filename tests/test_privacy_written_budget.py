"""The PSNR promise holds on disk (``apps.privacy.written_budget``): an int16 NIfTI series
whose slices span few stored units rounds a change inside the budget to one outside it,
and the copy is rewritten with a smaller change until the file's change is inside; a
change that survives the rounding is written once, as it is."""

import nibabel as nib
import numpy as np

from mami_jax.apps.privacy.written_budget import rms_change, write_within_budget
from mami_jax.data.decode import open_volume
from mami_jax.data.transforms import slice_indices


def coarse_series(tmp_path, levels):
    """An int16 series of values 0 .. levels - 1: one stored unit is 1/(levels-1) of the
    read range."""
    data = np.random.default_rng(0).integers(0, levels, (16, 16, 4)).astype(np.int16)
    data[0, 0, :] = 0
    data[1, 1, :] = levels - 1
    path = str(tmp_path / "coarse.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def smooth_change(shape, rms, seed=1):
    d = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return d * rms / np.sqrt(np.mean(np.square(d)))


def test_a_coarse_file_is_rewritten_inside_the_budget(tmp_path):
    path = coarse_series(tmp_path, levels=25)         # one unit = 0.042 of the range
    slices = slice_indices(open_volume(path).num_slices, 2)
    x = open_volume(path).read(slices)
    eps = 0.03
    delta = np.clip(x + smooth_change(x.shape, 0.029), 0, 1) - x
    out = str(tmp_path / "out.nii.gz")
    written, on_disk = write_within_budget(path, slices, delta, out, eps)
    assert on_disk <= eps * (1 + 1e-4)
    assert on_disk == rms_change(x, open_volume(out).read(slices))
    assert rms_change(0.0, written) < rms_change(0.0, delta)         # it had to shrink


def test_a_change_that_survives_rounding_is_written_once(tmp_path):
    path = coarse_series(tmp_path, levels=4000)
    slices = slice_indices(open_volume(path).num_slices, 2)
    x = open_volume(path).read(slices)
    delta = np.clip(x + smooth_change(x.shape, 0.02), 0, 1) - x
    written, on_disk = write_within_budget(path, slices, delta, str(tmp_path / "o.nii.gz"), 0.03)
    np.testing.assert_array_equal(written, delta)
    assert abs(on_disk - rms_change(0.0, delta)) < 1e-3
