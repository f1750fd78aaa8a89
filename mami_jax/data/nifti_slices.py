"""Axial slices of a NIfTI-1/2 or Analyze volume, in one display convention.

The volume is reoriented to the closest canonical (RAS+) orientation and sliced along
its superior axis; each slice is shown in radiological convention (anterior at the top,
patient right on the image left), so the same anatomy looks the same whatever order a
scanner stored its voxels in. A file holding one coronal or sagittal plane (a radiograph
saved as NIfTI) is that one image, superior at the top (``slice_axis``).

The orientation comes from the header's affine. Some tools write an sform whose matrix
is zero or drops an axis; the affine then says nothing about one or more axes (nibabel's
orientation gives NaN for them, and the slice axis could not be found). Such a volume is
read, not refused: its qform is used where coded, else the voxel sizes (nibabel's own
affine for a file without orientation, which takes x as stored right to left, as Analyze
did).

A float volume holding NaN or infinity is refused, naming the slices that hold it,
wherever the volume is read whole (a .nii.gz is decompressed whole for any read):
checked only in the slices drawn, it failed at random training draws
(``refuse_non_finite``).

The privacy writer maps a change on the displayed pixels back onto the stored voxels
through ``voxel_index``, which applies the very same reorientation to the voxels' flat
indices, so reading and writing can never disagree on where a pixel lives.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.data.decode_errors import DecodeError


def orientation(img) -> np.ndarray:
    """io_orientation rows (canonical axis, flip) of the first of sform, qform and the
    voxel-size affine that places all three axes (see the module docstring)."""
    from nibabel import orientations as nio

    header = img.header
    candidates = [img.affine]
    if hasattr(header, "get_qform") and int(header["qform_code"]) > 0:
        candidates.append(header.get_qform())
    if hasattr(header, "get_base_affine"):
        candidates.append(header.get_base_affine())
    for affine in candidates:
        with np.errstate(invalid="ignore", divide="ignore"):
            ornt = nio.io_orientation(affine)
        if np.isfinite(ornt).all():
            return ornt
    raise ValueError(f"the header places no axis order: affine {img.affine.tolist()}")


def volume_shape(img) -> tuple[int, int, int]:
    """The stored shape as three axes: trailing single axes dropped (a 4-D file of one
    volume), a 2-D image given one slice. More than one volume is an error that says how
    to split the file."""
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise ValueError(
            f"{len(img.shape)}-D volume of shape {img.shape}, {int(np.prod(shape[3:]))} 3-D "
            "volumes (the time points, echoes or diffusion directions of one series); a "
            "manifest row is one 3-D volume: split it (nibabel's four_to_three, FSL's "
            "fslsplit) and give each volume its own row")
    return shape


def check_voxel_type(img) -> None:
    """Refuses voxels that are not one real number: RGB and complex volumes."""
    dtype = img.get_data_dtype()
    if dtype.names is not None:
        raise ValueError(
            f"colour voxels ({', '.join(dtype.names)}: a NIfTI RGB volume) are not read: "
            "a manifest row's NIfTI holds one grey value a voxel; save the colour slices "
            "as a folder of images")
    if dtype.kind not in "uif":
        raise ValueError(f"unsupported voxel type {dtype} (a NIfTI holds real numbers here; "
                         "save the magnitude of a complex volume)")


def slice_axis(shape: tuple[int, int, int], ornt: np.ndarray) -> int:
    """The stored axis the volume is cut along: the one pointing superior, unless the
    file is a single plane that is not axial (one stored axis of length 1, the superior
    one longer: a coronal radiograph saved as a 2-D NIfTI), which is one image cut along
    its own normal. Cut along the superior axis, it read as strips one pixel high."""
    superior = int(np.nonzero(ornt[:, 0] == 2)[0][0])
    single = [ax for ax, n in enumerate(shape) if n == 1]
    if shape[superior] > 1 and len(single) == 1:
        return single[0]
    return superior


#: Display of a slice by the canonical axis it is cut along (0 R, 1 A, 2 S): the order of
#: the canonical (R, A, S) axes as (slice, rows, columns), every in-plane axis then
#: reversed: axial rows anterior->posterior and columns patient right->left (radiological);
#: coronal rows superior->inferior, columns right->left; sagittal rows superior->inferior,
#: columns anterior->posterior.
DISPLAY_AXES = {2: (2, 1, 0), 1: (1, 2, 0), 0: (0, 2, 1)}


def num_slices(img) -> int:
    """How many slices ``img`` reads as (axial, or one for a single plane)."""
    shape = volume_shape(img)
    return shape[slice_axis(shape, orientation(img))]


def _display(stored_slab: np.ndarray, ornt: np.ndarray, axis: int) -> np.ndarray:
    """Stored-order voxels of some slices (cut along stored ``axis``, already in
    canonical order) -> (n, H, W) display slices."""
    from nibabel import orientations as nio

    inplane = ornt.copy()
    inplane[axis, 1] = 1
    canon = nio.apply_orientation(stored_slab, inplane)  # (R, A, S), the slices on one
    order = DISPLAY_AXES[int(ornt[axis, 0])]
    return np.ascontiguousarray(np.transpose(canon, order)[:, ::-1, ::-1])


def _stored_indices(img, indices: Sequence[int] | None):
    """(shape, ornt, slice axis, stored index of each wanted canonical slice, n)."""
    shape = volume_shape(img)
    ornt = orientation(img)
    axis = slice_axis(shape, ornt)
    n = shape[axis]
    wanted = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        raise ValueError(f"slice indices {wanted.tolist()} out of range for {n} slices")
    src = wanted if ornt[axis, 1] > 0 else (n - 1 - wanted)
    return shape, ornt, axis, src, n


def read_slices(path: str, indices: Sequence[int] | None):
    """(number of slices, array (n, H, W, 1) of raw values) for the requested canonical
    slice indices of the volume at ``path`` (all slices when ``indices`` is None)."""
    import nibabel as nib

    img = nib.load(path)
    check_voxel_type(img)
    shape, ornt, axis, src, n = _stored_indices(img, indices)
    dataobj = img.dataobj
    if path.lower().endswith(".gz") or indices is None:
        full = np.asanyarray(dataobj).reshape(shape)
        refuse_non_finite(path, full, ornt, axis)
        sub = np.take(full, src, axis=axis)
    else:  # an uncompressed file: read only the wanted slices
        parts = []
        for k in src:
            sl = tuple(int(k) if ax == axis else slice(None) for ax in range(len(img.shape)))
            parts.append(np.asanyarray(dataobj[sl]).reshape(
                tuple(s for ax, s in enumerate(shape) if ax != axis)))
        sub = np.stack(parts, axis=axis)
    return n, _display(sub, ornt, axis)[..., None]


def refuse_non_finite(path: str, voxels: np.ndarray, ornt: np.ndarray, axis: int) -> None:
    """Refuses a volume (``voxels`` in stored order, cut along stored ``axis``) holding NaN
    or infinite voxels, naming the slices (as read: 0 the lowest) that hold them.

    Called wherever the whole volume is in memory anyway (a .nii.gz, which is
    decompressed whole, or a read of every slice), so the check costs no extra reading and
    a read fails whichever slices it draws: checked in the drawn slices alone, a NaN in one
    slice failed only the training draws that met it. An uncompressed .nii is read slice
    by slice, and its NaN is found in the slices read (``decode.Volume.read``), or in every
    slice by ``python -m mami_jax.data.check_images``."""
    if voxels.dtype.kind != "f":
        return
    finite = np.isfinite(voxels)
    if finite.all():
        return
    other = tuple(ax for ax in range(voxels.ndim) if ax != axis)
    stored = np.flatnonzero(~finite.all(axis=other))
    n = voxels.shape[axis]
    shown = sorted(int(k) if ornt[axis, 1] > 0 else n - 1 - int(k) for k in stored)
    listed = ", ".join(str(k) for k in shown[:5]) + (
        f" and {len(shown) - 5} more" if len(shown) > 5 else "")
    raise DecodeError(
        f"{path}: holds NaN or infinity in {int(np.size(finite) - np.count_nonzero(finite))} "
        f"voxel(s), in {len(shown)} of its {n} slices ({listed}): fix the file or leave it "
        "out of the manifest")


def voxel_index(img, indices: Sequence[int]) -> np.ndarray:
    """(n, H, W) flat index into ``img``'s stored voxel array of every pixel of the
    read slices ``indices``."""
    shape, ornt, axis, src, _ = _stored_indices(img, indices)
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return _display(np.take(index, src, axis=axis), ornt, axis)
