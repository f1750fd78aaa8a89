"""NIfTI volumes whose header does not place every axis, voxels that are not one real
number, and the writer's voxel map agreeing with the reader on every orientation."""

from __future__ import annotations

import os
import re

import nibabel as nib
import numpy as np
import pytest

from mami_jax.apps.privacy.writers import write_protected
from mami_jax.data import nifti_slices
from mami_jax.data.decode import DecodeError, open_volume

SROW_BYTES = slice(280, 328)   # srow_x, srow_y, srow_z: 12 float32 of the NIfTI-1 header


def _volume(shape=(5, 4, 3)):
    return np.random.default_rng(0).integers(0, 1000, shape).astype(np.int16)


def _with_srow_zeroed(path, rows: slice):
    """The file at ``path`` with some of its sform rows overwritten by zeros, as tools
    that write sform_code without a matrix leave it (nibabel itself refuses to)."""
    raw = bytearray(open(path, "rb").read())
    raw[rows] = bytes(rows.stop - rows.start)
    open(path, "wb").write(raw)


def _display(vol, x_right_to_left):
    """Stored order (x, y, z) -> (z, rows: y descending, columns: the patient's right
    first, so stored x ascending where x is stored right to left, else descending)."""
    out = np.transpose(vol, (2, 1, 0))[:, ::-1, :]
    return out if x_right_to_left else out[:, :, ::-1]


def _unit(a):
    return (a - a.min()) / (a.max() - a.min())


def test_a_zero_sform_falls_back_to_the_qform(tmp_path):
    vol = _volume()
    img = nib.Nifti1Image(vol, np.eye(4))
    img.set_qform(np.diag([-1.0, 1.0, 1.0, 1.0]), code=1)  # x stored right-to-left
    path = str(tmp_path / "zero_sform.nii")
    nib.save(img, path)
    _with_srow_zeroed(path, SROW_BYTES)
    assert not nib.load(path).affine[:3, :3].any()
    x = open_volume(path).read()
    np.testing.assert_allclose(x[..., 0], _unit(_display(vol, x_right_to_left=True)), atol=1e-6)


def test_a_zero_sform_without_qform_reads_in_nibabels_fallback_orientation(tmp_path):
    vol = _volume()
    path = str(tmp_path / "no_orientation.nii")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)   # qform_code 0
    _with_srow_zeroed(path, SROW_BYTES)
    volume = open_volume(path)
    assert volume.num_slices == 3
    # the voxel-size affine stores x right-to-left (Analyze's convention)
    np.testing.assert_allclose(volume.read()[..., 0], _unit(_display(vol, x_right_to_left=True)),
                               atol=1e-6)


def test_an_affine_that_drops_the_slice_axis_reads_by_the_voxel_sizes(tmp_path):
    vol = _volume((5, 4))
    path = str(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 1.0, 1.0])), path)
    _with_srow_zeroed(path, slice(312, 328))     # srow_z: the slice axis unplaced
    img = nib.load(path)
    assert np.isnan(nib.orientations.io_orientation(img.affine)[2]).all()
    np.testing.assert_array_equal(nifti_slices.orientation(img), [[0, -1], [1, 1], [2, 1]])
    x = open_volume(path).read()
    np.testing.assert_allclose(x[..., 0], _unit(_display(vol[..., None], x_right_to_left=True)),
                               atol=1e-6)


def test_a_volume_read_by_the_fallback_gets_a_protected_copy_with_its_header(tmp_path):
    path = str(tmp_path / "zero_sform.nii")
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), path)
    _with_srow_zeroed(path, SROW_BYTES)
    before = open(path, "rb").read()
    x = open_volume(path).read()
    out = str(tmp_path / "out" / "zero_sform.nii")
    os.makedirs(os.path.dirname(out))
    write_protected(path, [1], np.full((1, 4, 5, 1), 0.02, np.float32), out)
    assert open(path, "rb").read() == before
    assert open(out, "rb").read(348) == before[:348]      # the header, byte for byte
    # in units of the range of the slices read together (slice 1 alone), whose darkest and
    # brightest pixels keep that range
    change = open_volume(out).read([1]) - open_volume(path).read([1])
    assert float(np.median(change)) == pytest.approx(0.02, abs=0.002)
    y = open_volume(out).read()
    np.testing.assert_array_equal(y[[0, 2]], x[[0, 2]])


AFFINES = {
    "axial": np.diag([0.8, 0.8, 2.5, 1.0]),
    "flipped": np.diag([-0.8, -0.8, -2.5, 1.0]),
    "sagittal": np.array([[0, 0, -2.5, 0], [0.8, 0, 0, 0], [0, -0.8, 0, 0], [0, 0, 0, 1.0]]),
    "coronal": np.array([[-0.8, 0, 0, 0], [0, 0, 2.5, 0], [0, 0.8, 0, 0], [0, 0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_the_writers_voxel_map_finds_each_read_pixel_in_the_stored_array(tmp_path, name):
    vol = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    path = str(tmp_path / f"{name}.nii")
    nib.save(nib.Nifti1Image(vol, AFFINES[name]), path)
    img = nib.load(path)
    n, raw = nifti_slices.read_slices(path, None)
    wanted = [n - 1, 0, n // 2]
    where = nifti_slices.voxel_index(img, wanted)
    np.testing.assert_array_equal(vol.reshape(-1)[where], raw[wanted, ..., 0])
    assert len(np.unique(where)) == where.size


def test_colour_and_complex_voxels_are_refused_saying_what_to_do(tmp_path):
    rgb = np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = str(tmp_path / "rgb.nii")
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(DecodeError, match=re.escape(
            f"{path}: cannot read NIfTI volume: ValueError: colour voxels (R, G, B: a NIfTI "
            "RGB volume) are not read") + ".*save the colour slices as a folder of images"):
        open_volume(path).read()
    cplx = str(tmp_path / "complex.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.complex64), np.eye(4)), cplx)
    with pytest.raises(DecodeError, match=re.escape(
            f"{cplx}: cannot read NIfTI volume: ValueError: unsupported voxel type complex64")
            + ".*save the magnitude"):
        open_volume(cplx).read()


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
@pytest.mark.parametrize("stored", ["2-D", "single axis"])
def test_a_single_coronal_or_sagittal_plane_is_one_image_superior_at_the_top(tmp_path, plane,
                                                                               stored):
    """A radiograph saved as a 2-D NIfTI (stored axes R and S) was cut along its superior
    axis: 80 slices one pixel high, the X-ray view one row stretched. Now one image: rows
    superior to inferior; columns patient right to left (coronal), anterior to posterior
    (sagittal); the privacy writer's voxel map agrees."""
    picture = np.arange(6 * 8, dtype=np.int16).reshape(6, 8)       # (in-plane axis, S)
    in_plane = 0 if plane == "coronal" else 1                        # R or A
    affine = np.zeros((4, 4))
    affine[in_plane, 0], affine[2, 1], affine[1 - in_plane, 2], affine[3, 3] = 0.5, 0.5, 1, 1
    data = picture if stored == "2-D" else picture[:, :, None]
    path = str(tmp_path / "plane.nii")
    nib.save(nib.Nifti1Image(data, affine), path)
    n, raw = nifti_slices.read_slices(path, None)
    assert n == 1 and open_volume(path).num_slices == 1
    # row 0: the highest S; column 0: patient right (highest R) or anterior (highest A)
    np.testing.assert_array_equal(raw[0, ..., 0], picture[::-1, ::-1].T)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj).reshape(-1)[
        nifti_slices.voxel_index(img, [0])], raw[..., 0])
