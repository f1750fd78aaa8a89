"""Axial slices of a NIfTI-1/2 or Analyze volume, in one display convention.

The volume is reoriented to the closest canonical (RAS+) orientation and sliced along
its superior axis; each slice is shown in radiological convention (anterior at the top,
patient right on the image left), so the same anatomy looks the same whatever order a
scanner stored its voxels in.

The orientation comes from the header's affine. Some tools write an sform whose matrix
is zero or drops an axis; the affine then says nothing about one or more axes (nibabel's
orientation gives NaN for them, and the slice axis could not be found). Such a volume is
read, not refused: its qform is used where coded, else the voxel sizes (nibabel's own
affine for a file without orientation, which takes x as stored right to left, as Analyze
did).

The privacy writer maps a change on the displayed pixels back onto the stored voxels
through ``voxel_index``, which applies the very same reorientation to the voxels' flat
indices, so reading and writing can never disagree on where a pixel lives.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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


def num_slices(img) -> int:
    """How many axial slices ``img`` reads as."""
    slice_axis = int(np.nonzero(orientation(img)[:, 0] == 2)[0][0])
    return volume_shape(img)[slice_axis]


def _display(stored_slab: np.ndarray, ornt: np.ndarray, slice_axis: int) -> np.ndarray:
    """Stored-order voxels of some slices (slice axis already in canonical order) ->
    (n, H, W) display slices."""
    from nibabel import orientations as nio

    inplane = ornt.copy()
    inplane[slice_axis, 1] = 1
    canon = nio.apply_orientation(stored_slab, inplane)  # (X=R, Y=A, k)
    # Radiological display: rows anterior->posterior, columns patient right->left.
    return np.ascontiguousarray(np.transpose(canon, (2, 1, 0))[:, ::-1, ::-1])


def _stored_indices(img, indices: Sequence[int] | None):
    """(shape, ornt, slice axis, stored index of each wanted canonical slice, n)."""
    shape = volume_shape(img)
    ornt = orientation(img)
    slice_axis = int(np.nonzero(ornt[:, 0] == 2)[0][0])
    n = shape[slice_axis]
    wanted = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
        raise ValueError(f"slice indices {wanted.tolist()} out of range for {n} slices")
    src = wanted if ornt[slice_axis, 1] > 0 else (n - 1 - wanted)
    return shape, ornt, slice_axis, src, n


def read_slices(path: str, indices: Sequence[int] | None):
    """(number of slices, array (n, H, W, 1) of raw values) for the requested canonical
    slice indices of the volume at ``path`` (all slices when ``indices`` is None)."""
    import nibabel as nib

    img = nib.load(path)
    check_voxel_type(img)
    shape, ornt, slice_axis, src, n = _stored_indices(img, indices)
    dataobj = img.dataobj
    if path.lower().endswith(".gz") or indices is None:
        full = np.asanyarray(dataobj).reshape(shape)
        sub = np.take(full, src, axis=slice_axis)
    else:  # an uncompressed file: read only the wanted slices
        parts = []
        for k in src:
            sl = tuple(int(k) if ax == slice_axis else slice(None) for ax in range(len(img.shape)))
            parts.append(np.asanyarray(dataobj[sl]).reshape(
                tuple(s for ax, s in enumerate(shape) if ax != slice_axis)))
        sub = np.stack(parts, axis=slice_axis)
    return n, _display(sub, ornt, slice_axis)[..., None]


def voxel_index(img, indices: Sequence[int]) -> np.ndarray:
    """(n, H, W) flat index into ``img``'s stored voxel array of every pixel of the
    read slices ``indices``."""
    shape, ornt, slice_axis, src, _ = _stored_indices(img, indices)
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return _display(np.take(index, src, axis=slice_axis), ornt, slice_axis)
