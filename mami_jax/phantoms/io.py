"""File formats of the phantoms: one writer and one reader per modality.

The formats are chosen so that the input pipeline's decoders are all
exercised: X-ray as a 16-bit grey PNG, fundus as an RGB JPEG, pathology as an
RGB PNG tile, CT as one gzipped NIfTI volume in Hounsfield units per visit,
MRI as a folder of 8-bit PNG slices (``slice_000.png`` ...).

Every writer produces the same bytes for the same array: PNG and JPEG
carry no timestamps, and the NIfTI gzip stream is written with mtime 0.

CT layout: the NIfTI array has shape (size, size, slices) indexed
[x (column), y (row), z (slice)], the usual NIfTI order. The affine
(``ct_affine``, in the sform and the qform) says where those axes point: the
renderer's x runs to the patient's left, y posterior and z inferior
(``ct.py``), so it is diagonal with minus the voxel spacing in mm (axis codes
L, P, I) and puts the volume's centre at the origin. A reader that
reorients by the header (``data.nifti_slices``) then shows the phantom as the
renderer drew it, anterior at the top and the patient's left on the image
right, with slices ordered inferior to superior. ``read_raw`` ignores the
header and gives the stored (slices, rows, cols), slice 0 the upper chest.

MRI slices are named ``slice_000.png`` and up, wider numbers past 999, and
read back in numeric order (``data.natural_order``).
"""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
from PIL import Image

from mami_jax.data.natural_order import natural_key

#: Relative path of one visit's file (or folder) under the output directory.
EXTENSIONS = {"xray": ".png", "fundus": ".jpg", "pathology": ".png", "ct": ".nii.gz", "mri": ""}
CT_WINDOW = (-1000.0, 1000.0)   # HU range mapped to [0, 1] by ``to_unit``


def relative_path(modality: str, patient_id: str, visit: int) -> str:
    return f"{modality}/{patient_id}/v{visit}{EXTENSIONS[modality]}"


def write(modality: str, path: str, data, jpeg_quality: int = 92) -> None:
    """Writes one visit. ``data``: uint16 (H, W) for xray, uint8 (H, W, 3) for fundus and
    pathology, (int16 volume (T, H, W), spacing (z, y, x) mm) for ct, uint8 (T, H, W) for mri."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if modality == "xray":
        _check(data, np.uint16, 2, path)
        Image.fromarray(data).save(path, format="PNG", compress_level=1)
    elif modality == "fundus":
        _check(data, np.uint8, 3, path)
        Image.fromarray(data, mode="RGB").save(path, format="JPEG", quality=jpeg_quality)
    elif modality == "pathology":
        _check(data, np.uint8, 3, path)
        Image.fromarray(data, mode="RGB").save(path, format="PNG", compress_level=1)
    elif modality == "ct":
        volume, spacing = data
        _check(volume, np.int16, 3, path)
        affine = ct_affine(volume.shape, spacing)
        img = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
        img.set_qform(affine, code="aligned")    # the same axes for tools that read the qform
        img.header.set_xyzt_units("mm")
        img.header.set_data_dtype(np.int16)
        with open(path, "wb") as f:
            f.write(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
    elif modality == "mri":
        _check(data, np.uint8, 3, path)
        os.makedirs(path, exist_ok=True)
        for k, plane in enumerate(data):
            Image.fromarray(plane).save(os.path.join(path, f"slice_{k:03d}.png"), format="PNG",
                                        compress_level=1)
    else:
        raise ValueError(f"{path}: unknown modality {modality!r}")


def ct_affine(shape, spacing) -> np.ndarray:
    """The NIfTI affine of a CT volume of ``shape`` (T, H, W) and ``spacing`` (z, y, x) mm,
    stored as [x, y, z]: each stored axis points the way ``ct.py`` draws it (x to the
    patient's left, y posterior, z inferior), i.e. along minus the RAS+ axis, so the
    diagonal is minus the spacing; the centre voxel lands at the origin. A plain spacing
    diagonal claimed R, A, S and a header-reading pipeline showed every phantom rotated 180
    degrees in the plane with its slices reversed."""
    steps = np.array([spacing[2], spacing[1], spacing[0]], dtype=np.float64)
    counts = np.array([shape[2], shape[1], shape[0]], dtype=np.float64)
    affine = np.diag(np.append(-steps, 1.0))
    affine[:3, 3] = steps * (counts - 1) / 2
    return affine


def _check(arr, dtype, ndim, path):
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
        raise TypeError(f"{path}: expected a {ndim}-D {np.dtype(dtype).name} array, got "
                        f"{getattr(arr, 'dtype', type(arr))} with shape {getattr(arr, 'shape', None)}")


def read_raw(modality: str, path: str) -> np.ndarray:
    """Reads one visit back: (H, W) uint16, (H, W, 3) uint8, (T, H, W) int16 HU or uint8."""
    if modality in ("xray", "fundus", "pathology"):
        with Image.open(path) as im:
            arr = np.asarray(im)
        return arr
    if modality == "ct":
        return np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
    if modality == "mri":
        # numeric order: past 1000 slices, "slice_1000" sorts before "slice_101" as text
        names = sorted((n for n in os.listdir(path) if n.startswith("slice_") and n.endswith(".png")),
                       key=natural_key)
        if not names:
            raise FileNotFoundError(f"{path}: no slice_*.png files in the MRI series folder")
        planes = []
        for n in names:
            with Image.open(os.path.join(path, n)) as im:
                planes.append(np.asarray(im))
        return np.stack(planes)
    raise ValueError(f"{path}: unknown modality {modality!r}")


def to_unit(modality: str, raw: np.ndarray) -> np.ndarray:
    """A fixed (not per-image) mapping of stored values to [0, 1] floats."""
    if modality == "xray":
        return raw.astype(np.float32) / 65535.0
    if modality == "ct":
        lo, hi = CT_WINDOW
        return np.clip((raw.astype(np.float32) - lo) / (hi - lo), 0, 1)
    return raw.astype(np.float32) / 255.0
