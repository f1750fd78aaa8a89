"""Writing a protected image in its input's own format, changing only its pixels.

A protection works on the unit pixels ([0, 1]) that ``data.decode`` reads. Its change
``delta`` is mapped back to stored values with the decoder's own intensity rule, so
the written file decodes to ``original + delta`` (to the format's rounding):

- 8-bit images (PNG, JPEG, ...): ``delta * 255``;
- wider or float images, DICOM without a VOI window, NIfTI: min-max decoded, so
  ``delta * (max - min)``, clipped to [min, max] of the slices read together, the pixel
  holding the minimum and the one holding the maximum left as they were, so the decoded
  range (and every untouched pixel) stays as it was;
- DICOM with a VOI window: ``delta * (WindowWidth - 1) / RescaleSlope``, negated for
  MONOCHROME1; every DICOM value stays inside what its BitsStored holds.

Everything else is kept: DICOM keeps every data element (only PixelData changes, written
uncompressed in the file's PlanarConfiguration; a YBR colour file's
PhotometricInterpretation becomes RGB, as the pixels it now holds are), NIfTI keeps its
affine, header and scaling (a .hdr/.img pair stays a pair), PNG/JPEG/TIFF their mode
(alpha included) and size (a palette or 1-bit image becomes RGB or grey: its changed
values are not in its palette; JPEG at quality 100 without chroma subsampling: at 95 most
of a small change is lost; TIFF keeps a lossless compression, a JPEG one becomes deflate),
and the slices of a series or slice folder that the model does not read are copied byte for
byte. Each file is written all-or-nothing (``runtime.atomic_files``), never over an input.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from mami_jax.data import decode
from mami_jax.data.decode import DecodeError
from mami_jax.runtime.atomic_files import fix_tree_modes, staging_dir, write_atomic

JPEG_QUALITY = 100
#: TIFF compressions that keep every value: kept; any other (JPEG) becomes deflate, so the
#: change is neither lost in a lossy coder nor written raw (pathology tiles: 25x larger).
LOSSLESS_TIFF = ("raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits")


class WriteError(RuntimeError):
    """A protected image could not be written; the message names the input file."""


# ----------------------------------------------------------------------- stored values

def _apply(stored: np.ndarray, change: np.ndarray, lo=None, hi=None,
           limits: tuple[int, int] | None = None) -> np.ndarray:
    """``stored + change`` in ``stored``'s dtype: rounded, clipped to the dtype's range and
    to [lo, hi] when given (the range of every slice read together, in stored units), with
    the pixel that holds lo and the one that holds hi kept as they were, so the reader's
    min-max range stays. A slice that holds neither (one frame of a series) keeps none:
    setting its own extremes to the series' would paint a dot of air or metal into it.
    ``limits``: the stored values' own range where it is narrower than the dtype's (a
    DICOM's BitsStored: a 12-bit value above 4095 is read with its high bits dropped)."""
    new = stored.astype(np.float64) + change
    if np.issubdtype(stored.dtype, np.integer):
        info = np.iinfo(stored.dtype)
        floor, ceil = limits if limits is not None else (info.min, info.max)
        new = np.clip(np.round(new), max(floor, info.min), min(ceil, info.max))
    if lo is not None:
        new = np.clip(new, lo, hi)
        flat, values = new.reshape(-1), stored.reshape(-1)   # a view: sets ``new``
        slack = 1e-9 * max(1.0, abs(float(lo)), abs(float(hi)))
        for i, extreme in ((int(np.argmin(values)), lo), (int(np.argmax(values)), hi)):
            if abs(float(values[i]) - float(extreme)) <= slack:
                flat[i] = values[i]
    return new.astype(stored.dtype)


def _per_slice_change(delta: np.ndarray, slices, n: int) -> dict[int, np.ndarray]:
    """delta (T, H, W, C) of the read slices -> {slice index: mean change} (repeats averaged)."""
    out: dict[int, list] = {}
    for t, i in enumerate(np.asarray(slices).tolist()):
        if not 0 <= i < n:
            raise ValueError(f"slice {i} out of range for {n} slices")
        out.setdefault(int(i), []).append(delta[t])
    return {i: np.mean(v, axis=0) for i, v in out.items()}


def _unit_scale(arrays) -> tuple[float, float | None, float | None]:
    """(stored units per unit intensity, lo, hi) of the decoder's rule for plain pixels."""
    dtype = arrays[0].dtype
    if dtype == np.uint8:
        return 255.0, None, None
    if dtype == np.bool_:
        raise ValueError("1-bit images cannot carry a protection")
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    return max(hi - lo, 1e-12), lo, hi


def _channels(change: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(H, W, C) change shaped like ``stored`` ((H, W) grey or (H, W, 3))."""
    if stored.ndim == 2:
        return change.mean(axis=-1)
    if change.shape[-1] == 1:
        return np.repeat(change, stored.shape[-1], axis=-1)
    return change


# ----------------------------------------------------------------------- 2-D image files

def _save_pil(arr: np.ndarray, like: str, out: str) -> None:
    """``arr`` (the reader's grey or RGB pixels, changed) in ``like``'s format; an alpha
    channel the reader dropped (LA, RGBA) is put back as it was."""
    from PIL import Image
    with Image.open(like) as original:
        fmt, info, mode = original.format, dict(original.info), original.mode
        alpha = original.getchannel("A") if mode in ("LA", "RGBA") else None
    img = Image.fromarray(arr)
    if alpha is not None and img.mode in ("L", "RGB"):
        img = Image.merge(img.mode + "A", [*img.split(), alpha])
    kwargs = {k: info[k] for k in ("dpi", "icc_profile") if k in info}
    if fmt == "JPEG":
        kwargs.update(quality=JPEG_QUALITY, subsampling=0)
    if fmt == "TIFF":
        compression = info.get("compression", "raw")
        kwargs["compression"] = compression if compression in LOSSLESS_TIFF \
            else "tiff_adobe_deflate"

    def write(tmp):
        img.save(tmp, format=fmt, **kwargs)
    write_atomic(out, write)


def _write_image_file(path: str, slices, delta, out: str) -> None:
    raw = decode._read_pil_array(path)
    change = _per_slice_change(delta, slices, 1)[0]
    scale, lo, hi = _unit_scale([raw])
    _save_pil(_apply(raw, _channels(change, raw) * scale, lo, hi), path, out)


def _write_slice_folder(volume, slices, delta, out: str) -> None:
    changes = _per_slice_change(delta, slices, volume.num_slices)
    read = {i: decode._read_pil_array(volume.files[i]) for i in changes}
    scale, lo, hi = _unit_scale(list(read.values()))
    with staging_dir(out) as tmp:
        for i, f in enumerate(volume.files):
            target = os.path.join(tmp, os.path.basename(f))
            if i in changes:
                _save_pil(_apply(read[i], _channels(changes[i], read[i]) * scale, lo, hi), f, target)
            else:
                shutil.copyfile(f, target)
        _publish_dir(tmp, out)


def _publish_dir(tmp: str, out: str) -> None:
    fix_tree_modes(tmp)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.rename(tmp, out)


# ----------------------------------------------------------------------- DICOM

def _dicom_stored(ds) -> np.ndarray:
    if getattr(ds, "file_meta", None) is not None and ds.file_meta.get("TransferSyntaxUID") is not None \
            and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    return ds.pixel_array


def _dicom_scale(ref, rescaled_frames) -> tuple[float, float | None, float | None]:
    """(rescaled units per unit intensity, lo, hi) for grey DICOM, signed for MONOCHROME1."""
    center = decode._dicom_number(ref, "WindowCenter", None)
    width = decode._dicom_number(ref, "WindowWidth", None)
    if center is not None and width is not None:
        scale, lo, hi = max(float(width) - 1.0, 1.0), None, None
    else:
        lo = min(float(f.min()) for f in rescaled_frames)
        hi = max(float(f.max()) for f in rescaled_frames)
        scale = max(hi - lo, 1e-12)
    if str(ref.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        scale = -scale
    return scale, lo, hi


def _dicom_change(ds, frames_rescaled, stored, change, ref=None, scale_info=None):
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3:
        scale, lo, hi = _unit_scale([stored])
        return _apply(stored, _channels(change, stored) * scale, lo, hi)
    slope = decode._dicom_number(ds, "RescaleSlope", 1.0) or 1.0
    intercept = decode._dicom_number(ds, "RescaleIntercept", 0.0)
    scale, lo, hi = scale_info
    stored_lo = None if lo is None else (lo - intercept) / slope
    stored_hi = None if hi is None else (hi - intercept) / slope
    if stored_lo is not None and stored_lo > stored_hi:
        stored_lo, stored_hi = stored_hi, stored_lo
    return _apply(stored, change.mean(-1) * scale / slope, stored_lo, stored_hi,
                  _bits_stored_range(ds))


def _bits_stored_range(ds) -> tuple[int, int] | None:
    """The values BitsStored can hold (signed where PixelRepresentation is 1)."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if bits <= 0:
        return None
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _save_dicom(ds, pixels: np.ndarray, out: str) -> None:
    """``pixels`` as ``ds.pixel_array`` gives them ((frames,) rows, columns(, samples)),
    stored in ``ds``'s own layout: colour planes one after the other where its
    PlanarConfiguration is 1 (pixel_array interleaves them). pixel_array converts YBR
    colour to RGB, so a YBR file's copy is stored as the RGB it was given and says so
    (converting back would round every pixel again)."""
    pixels = pixels.astype(ds.pixel_array.dtype)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        if str(ds.get("PhotometricInterpretation", "")).strip().upper().startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
        if int(ds.get("PlanarConfiguration", 0) or 0):
            pixels = np.moveaxis(pixels, -1, -3)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()

    def write(tmp):
        ds.save_as(tmp, enforce_file_format=False) if _accepts_enforce() else ds.save_as(tmp)
    write_atomic(out, write)


def _accepts_enforce() -> bool:
    import inspect
    import pydicom
    return "enforce_file_format" in inspect.signature(pydicom.Dataset.save_as).parameters


def _write_dicom_file(path: str, slices, delta, out: str) -> None:
    ds = decode._read_dicom_file(path)
    stored = _dicom_stored(ds)
    frames = decode._dicom_frames(ds)
    changes = _per_slice_change(delta, slices, frames.shape[0])
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    scale_info = None if samples == 3 else _dicom_scale(ds, [frames[list(changes)]])
    new = stored.copy()
    for i, change in changes.items():
        current = new[i] if n_frames > 1 else new
        updated = _dicom_change(ds, frames[i], current, change, scale_info=scale_info)
        if n_frames > 1:
            new[i] = updated
        else:
            new = updated
    _save_dicom(ds, new, out)


def _write_dicom_series(volume, slices, delta, out: str) -> None:
    changes = _per_slice_change(delta, slices, volume.num_slices)
    read = {}
    for i in changes:
        ds = decode._read_dicom_file(volume.files[i])
        read[i] = (ds, _dicom_stored(ds), decode._dicom_frames(ds)[0])
    ref = read[0][0] if 0 in read else decode._read_dicom_file(volume.files[0])
    scale_info = _dicom_scale(ref, [r[2] for r in read.values()])
    with staging_dir(out) as tmp:
        for i, f in enumerate(volume.files):
            target = os.path.join(tmp, os.path.basename(f))
            if i in changes:
                ds, stored, frame = read[i]
                _save_dicom(ds, _dicom_change(ds, frame, stored, changes[i], scale_info=scale_info),
                            target)
            else:
                shutil.copyfile(f, target)
        _publish_dir(tmp, out)


# ----------------------------------------------------------------------- NIfTI

def _display_index(img, slices, tmp_dir: str) -> np.ndarray:
    """Flat voxel index (into the stored array) of every pixel of the decoded slices."""
    import nibabel as nib
    shape = tuple(int(s) for s in img.shape)
    index = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    probe = os.path.join(tmp_dir, "index.nii")
    nib.save(nib.Nifti1Image(index, img.affine), probe)
    _, out = decode._nifti_slices(probe, list(np.asarray(slices).tolist()))
    return out[..., 0]


def _write_nifti(path: str, slices, delta, out: str) -> None:
    import nibabel as nib
    img = nib.load(path)
    stored = np.asanyarray(img.dataobj.get_unscaled()) if hasattr(img.dataobj, "get_unscaled") \
        else np.asanyarray(img.dataobj)
    slope = float(img.dataobj.slope) if hasattr(img.dataobj, "slope") else 1.0
    inter = float(img.dataobj.inter) if hasattr(img.dataobj, "inter") else 0.0
    with staging_dir(out) as tmp:
        where = _display_index(img, slices, tmp)            # (T, H, W)
        _, read = decode._nifti_slices(path, list(np.asarray(slices).tolist()))
        lo, hi = float(read.min()), float(read.max())
        change = np.zeros(stored.size)
        count = np.zeros(stored.size)
        np.add.at(change, where.ravel(), delta.mean(-1).ravel() * max(hi - lo, 1e-12))
        np.add.at(count, where.ravel(), 1.0)
        touched = count > 0
        change[touched] /= count[touched]
        change = change.reshape(stored.shape) / slope
        stored_lo, stored_hi = sorted(((lo - inter) / slope, (hi - inter) / slope))
        # the read voxels alone: their range is what the reader scales by, so the pixels
        # that keep it must be among them (a float volume has its extremes once, often in
        # a slice the model does not read)
        new = stored.reshape(-1).copy()
        read_voxels = np.flatnonzero(touched)
        new[read_voxels] = _apply(stored.reshape(-1)[read_voxels],
                                  change.reshape(-1)[read_voxels], stored_lo, stored_hi)
        os.unlink(os.path.join(tmp, "index.nii"))
        save_nifti(img, new.reshape(stored.shape), out, tmp)


def save_nifti(like, stored: np.ndarray, out: str, tmp: str | None = None,
               header=None) -> None:
    """``stored`` values in ``like``'s class, affine, header (or ``header``) and scaling,
    saved under ``out``'s name in an empty staging folder beside it (``tmp``, or a new
    one), then moved next to ``out``; the folder is removed. Every file nibabel writes is
    moved (an Analyze or NIfTI pair is a .hdr and an .img), the one named ``out`` last."""
    if tmp is None:
        with staging_dir(out) as tmp:
            return save_nifti(like, stored, out, tmp, header)
    import nibabel as nib
    proxy = like.dataobj
    result = type(like)(stored, like.affine,
                        (header if header is not None else like.header).copy())
    if hasattr(result.header, "set_slope_inter") and hasattr(proxy, "slope"):
        # the loaded header's own scl fields read (None, None): nibabel moves the
        # scaling to the data proxy, and without it the file's values lose it
        result.header.set_slope_inter(float(proxy.slope), float(proxy.inter))
    name = os.path.basename(out)
    nib.save(result, os.path.join(tmp, name))
    fix_tree_modes(tmp)
    for written in sorted(os.listdir(tmp), key=lambda f: f == name):
        os.replace(os.path.join(tmp, written), os.path.join(os.path.dirname(out), written))
    os.rmdir(tmp)


# ----------------------------------------------------------------------- dispatch

def output_name(path: str) -> str:
    """The file or folder name a protected copy of ``path`` gets (same extension)."""
    return os.path.basename(os.path.normpath(path))


def write_protected(path: str, slices, delta: np.ndarray, out: str) -> str:
    """Writes ``path`` with ``delta`` (T, H, W, C) added to its read ``slices`` at ``out``.

    Refuses to write over ``path`` itself. Returns ``out``."""
    if os.path.exists(out) and os.path.samefile(out, path) or \
            os.path.abspath(out) == os.path.abspath(path):
        raise WriteError(f"{path}: refusing to write the protected image over its input")
    delta = np.asarray(delta, np.float32)
    try:
        volume = decode.open_volume(path)
        if isinstance(volume, decode.NiftiVolume):
            _write_nifti(path, slices, delta, out)
        elif isinstance(volume, decode.DicomFile):
            _write_dicom_file(path, slices, delta, out)
        elif isinstance(volume, decode.DicomSeries):
            _write_dicom_series(volume, slices, delta, out)
        elif isinstance(volume, decode.SliceFolder):
            _write_slice_folder(volume, slices, delta, out)
        else:
            _write_image_file(path, slices, delta, out)
    except (DecodeError, WriteError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise WriteError(f"{path}: cannot write its protected copy {out}: "
                         f"{type(e).__name__}: {e}") from e
    return out
