"""Writing a protected image in its input's own format, changing only its pixels.

A protection works on the unit pixels ([0, 1]) that ``data.decode`` reads. Its change
``delta`` is mapped back to stored values with the decoder's own intensity rule, so
the written file decodes to ``original + delta`` (to the format's rounding):

- 8-bit images (PNG, JPEG, ...): ``delta * 255``;
- wider or float images, NIfTI: min-max decoded, so ``delta * (max - min)``, clipped to
  [min, max] of the slices read together, the pixel holding the minimum and the one
  holding the maximum left as they were, so the decoded range (and every untouched
  pixel) stays as it was (``stored_change``);
- DICOM: its window, lookup table or min-max inverted (``dicom_writer``);
- a modality read through a fixed value window (``data.modalities.<m>.value_window``,
  in place of min-max and a DICOM's own window): that window inverted, a pixel it clips
  moved only where the change brings it into view (``stored_change.windowed_change``).

Everything else is kept: DICOM every data element but those that make the copy a new
image and those that describe its pixels (``dicom_writer``), NIfTI its affine, header and
scaling (a .hdr/.img pair stays a pair), PNG/JPEG/TIFF their mode (alpha included: the
colour under it set so that, laid on white as the reader shows it, it reads as changed),
size, stored orientation and EXIF Orientation (the change, made on the upright picture the
reader shows, is turned back: ``_save_pil``; a palette or 1-bit image becomes RGB or grey:
its changed values are not in its palette; a palette's or a PNG's transparent colour (tRNS)
is not kept, the copy storing the picture as shown on white; a CMYK JPEG becomes the RGB it
is read as; a 16-bit-per-channel RGB PNG, which Pillow reads as its high bytes (what the
model sees), is written as those 8-bit values, its low bytes lost; JPEG at quality 100
without chroma subsampling: at 95 most of a small change is lost; TIFF keeps a lossless
compression, a JPEG one becomes deflate; WebP is written lossless, JPEG 2000 reversibly, a
camera's MPO JPEG as one JPEG without its preview; GIF and other formats that cannot hold
the change are refused: ``copy_formats``), and the slices of a slice folder that the model
does not read are copied byte for byte (a DICOM series': ``dicom_writer``). Each file is
written all-or-nothing (``runtime.atomic_files``), never over an input.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from mami_jax.apps.privacy import dicom_writer
from mami_jax.apps.privacy.copy_formats import SAVE_AS
from mami_jax.apps.privacy.stored_change import (apply_change, channels, per_slice_change,
                                                 plain_pixels_changed, windowed_change)
from mami_jax.data import decode, nifti_slices
from mami_jax.data.decode import DecodeError
from mami_jax.data.natural_order import examples, natural_key
from mami_jax.runtime.atomic_files import finish_tree, publish_dir, staging_dir, write_atomic

EXIF_ORIENTATION = decode.EXIF_ORIENTATION
#: TIFF compressions that keep every value: kept; any other (JPEG) becomes deflate, so the
#: change is neither lost in a lossy coder nor written raw (pathology tiles: 25x larger).
LOSSLESS_TIFF = ("raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits")


class WriteError(RuntimeError):
    """A protected image could not be written; the message names the input file."""


# ----------------------------------------------------------------------- 2-D image files

def _save_pil(shown: np.ndarray, picture: decode.Picture, like: str, out: str) -> None:
    """``shown`` (the reader's grey or RGB pixels of ``like``, changed: ``picture`` as read,
    its change added) in ``like``'s format, as ``like`` stores them, so that the copy reads
    as ``shown``:

    - an alpha channel (LA, RGBA) is kept as it was, and the colour under it set to what,
      laid on white as the reader lays it (``decode.on_white``), shows ``shown``
      (``_under_alpha``); a transparent colour of a palette or a PNG's tRNS is not kept,
      and the copy stores the shown pixels, opaque;
    - the pixels are turned back from upright to ``like``'s stored orientation and its
      EXIF Orientation is kept (viewers and the reader turn the copy as they turned the
      original), rather than stored upright with the tag dropped: the copy keeps the
      input's size and layout (a slice folder's unread slices are copied as stored, and
      its read ones are stored alike), and it reads through ``decode`` exactly as the
      model saw the original plus the change, which the budget check
      (``written_budget``) and ``evaluate``'s PSNR measure; a mirror or a quarter turn
      moves no value, so the change on disk is the change written.

    Of the EXIF only the Orientation is kept: the other tags (camera, serial number,
    dates) may name a person."""
    from PIL import Image
    with Image.open(like) as original:
        fmt, info, mode = original.format, dict(original.info), original.mode
    keeps_alpha = mode in ("LA", "RGBA") and picture.alpha is not None
    if keeps_alpha:
        shown = _under_alpha(picture, shown)
    img = Image.fromarray(decode.stored_turn(shown, picture.orientation))
    if keeps_alpha and img.mode in ("L", "RGB"):
        alpha = Image.fromarray(decode.stored_turn(picture.alpha, picture.orientation))
        img = Image.merge(img.mode + "A", [*img.split(), alpha])
    if fmt not in SAVE_AS:
        raise WriteError(f"{like}: cannot write a protected copy in {fmt}: the change would "
                         "not survive that format; convert it to PNG first")
    fmt, options = SAVE_AS[fmt]
    kwargs = {k: info[k] for k in ("dpi", "icc_profile") if k in info}
    kwargs.update(options)
    if picture.orientation not in (None, 1):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = picture.orientation
        kwargs["exif"] = exif
    if fmt == "TIFF":
        compression = info.get("compression", "raw")
        kwargs["compression"] = compression if compression in LOSSLESS_TIFF \
            else "tiff_adobe_deflate"

    def write(tmp):
        img.save(tmp, format=fmt, **kwargs)
    write_atomic(out, write)


def _under_alpha(picture: decode.Picture, shown: np.ndarray) -> np.ndarray:
    """The 8-bit colour that, under ``picture``'s alpha ``a`` and laid on white, reads as
    ``shown``: ``255 (shown - 255 + a) / a``, rounded, which ``decode.on_white`` reads back
    exactly (its rounding error, at most ``a / 510`` of a level, stays under half of one)
    while it lies in [0, 255]. A pixel the more transparent, the narrower the range it can
    show (``[255 - a, 255]``): a change beyond it is clipped, and a fully transparent pixel
    keeps its colour (it reads white whatever it stores); the budget check measures what
    the copy shows. A pixel whose shown value is unchanged keeps its stored colour."""
    colour, a = picture.colour, picture.alpha.astype(np.float64)
    if colour.ndim == 3:
        a = a[..., None]
    before = decode.on_white(picture)
    with np.errstate(divide="ignore", invalid="ignore"):
        wanted = 255.0 * (shown.astype(np.float64) - 255.0 + a) / a
    wanted = np.clip(np.rint(np.where(a > 0, wanted, colour)), 0, 255).astype(np.uint8)
    return np.where((shown == before) | (a == 0), colour, wanted).astype(colour.dtype)


def _write_image_file(path: str, slices, delta, out: str, value_window=None) -> None:
    picture = decode.read_picture(path)
    raw = decode.on_white(picture)
    change = per_slice_change(delta, slices, 1)[0]
    [new] = plain_pixels_changed([raw], [channels(change, raw)], value_window)
    _save_pil(new, picture, path, out)


def _write_slice_folder(volume, slices, delta, out: str, value_window=None) -> None:
    changes = per_slice_change(delta, slices, volume.num_slices)
    pictures = {i: decode.read_picture(volume.files[i]) for i in changes}
    read = {i: decode.on_white(p) for i, p in pictures.items()}
    new = dict(zip(read, plain_pixels_changed(
        list(read.values()), [channels(changes[i], a) for i, a in read.items()],
        value_window)))
    with staging_dir(out) as tmp:
        for i, f in enumerate(volume.files):
            target = os.path.join(tmp, os.path.basename(f))
            if i in changes:
                _save_pil(new[i], pictures[i], f, target)
            else:
                shutil.copyfile(f, target)
        publish_dir(tmp, out)


# ----------------------------------------------------------------------- NIfTI

def _write_nifti(path: str, slices, delta, out: str, value_window=None) -> None:
    import nibabel as nib
    img = nib.load(path)
    stored = np.asanyarray(img.dataobj.get_unscaled()) if hasattr(img.dataobj, "get_unscaled") \
        else np.asanyarray(img.dataobj)
    slope = float(img.dataobj.slope) if hasattr(img.dataobj, "slope") else 1.0
    inter = float(img.dataobj.inter) if hasattr(img.dataobj, "inter") else 0.0
    with staging_dir(out) as tmp:
        wanted = [int(i) for i in np.asarray(slices).tolist()]
        where = nifti_slices.voxel_index(img, wanted)        # (T, H, W)
        _, read = nifti_slices.read_slices(path, wanted)
        if value_window is None:
            lo, hi = float(read.min()), float(read.max())
            read_change = delta.mean(-1) * max(hi - lo, 1e-12)
        else:           # a fixed range: no extremes to keep
            lo = hi = None
            read_change = windowed_change(read[..., 0], delta.mean(-1), value_window)
        change = np.zeros(stored.size)
        count = np.zeros(stored.size)
        np.add.at(change, where.ravel(), read_change.ravel())
        np.add.at(count, where.ravel(), 1.0)
        touched = count > 0
        change[touched] /= count[touched]
        change = change.reshape(stored.shape) / slope
        stored_lo, stored_hi = (None, None) if lo is None else \
            sorted(((lo - inter) / slope, (hi - inter) / slope))
        # the read voxels alone: their range is what the reader scales by, so the pixels
        # that keep it must be among them (a float volume has its extremes once, often in
        # a slice the model does not read)
        new = stored.reshape(-1).copy()
        read_voxels = np.flatnonzero(touched)
        new[read_voxels] = apply_change(stored.reshape(-1)[read_voxels],
                                  change.reshape(-1)[read_voxels], stored_lo, stored_hi)
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
    finish_tree(tmp)
    for written in sorted(os.listdir(tmp), key=lambda f: f == name):
        os.replace(os.path.join(tmp, written), os.path.join(os.path.dirname(out), written))
    os.rmdir(tmp)


# ----------------------------------------------------------------------- dispatch

def output_name(path: str) -> str:
    """The file or folder name a protected copy of ``path`` gets (same extension)."""
    return os.path.basename(os.path.normpath(path))


def files_left_out(path: str) -> list[str]:
    """Names of the files of the folder ``path`` that its protected copy does not hold: a
    note or a thumbnail beside the slices (what ``decode`` does not read as a slice). The
    protection does not reach them and a note may name the patient, so they are not copied;
    ``protect`` counts them in each record and says so. Empty for a file."""
    volume = decode.open_volume(path)
    if not isinstance(volume, (decode.SliceFolder, decode.DicomSeries)):
        return []
    copied = {os.path.basename(f) for f in volume.files}
    return sorted((n for n in os.listdir(path) if not n.startswith(".") and n not in copied
                   and os.path.isfile(os.path.join(path, n))), key=natural_key)


def left_out_warning(records) -> str | None:
    """The line ``protect`` ends with when folders held files their copies do not."""
    named = [r["image_id"] for r in records if r.get("files_not_copied")]
    if not named:
        return None
    files = sum(r.get("files_not_copied", 0) for r in records)
    return (f"warning: {files} file(s) beside the slices of {len(named)} folder(s) were not "
            f"copied (notes, thumbnails: the protection does not reach them): "
            f"{examples(named, shown=5)}; protect_report.json counts them per image")


def write_protected(path: str, slices, delta: np.ndarray, out: str,
                    value_window: tuple[float, float] | None = None) -> str:
    """Writes ``path`` with ``delta`` (T, H, W, C) added to its read ``slices`` at ``out``;
    ``value_window``: the fixed range the model reads the file's modality through
    (``data.modalities.<m>.value_window``), None for the decoder's own rules.

    Refuses to write over ``path`` itself. Returns ``out``."""
    if os.path.exists(out) and os.path.samefile(out, path) or \
            os.path.abspath(out) == os.path.abspath(path):
        raise WriteError(f"{path}: refusing to write the protected image over its input")
    delta = np.asarray(delta, np.float32)
    try:
        volume = decode.open_volume(path)
        if isinstance(volume, decode.NiftiVolume):
            _write_nifti(path, slices, delta, out, value_window)
        elif isinstance(volume, decode.DicomFile):
            dicom_writer.write_dicom_file(path, slices, delta, out, value_window)
        elif isinstance(volume, decode.DicomSeries):
            dicom_writer.write_dicom_series(volume, slices, delta, out, value_window)
        elif isinstance(volume, decode.SliceFolder):
            _write_slice_folder(volume, slices, delta, out, value_window)
        else:
            _write_image_file(path, slices, delta, out, value_window)
    except (DecodeError, WriteError):
        raise
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise WriteError(f"{path}: cannot write its protected copy {out}: "
                         f"{type(e).__name__}: {e}") from e
    return out
