"""Writing the protected copy of a DICOM file or series: only its pixels change.

The change of unit pixels goes back through ``data.dicom_pixels``' reading rules
inverted, so the copy decodes to ``original + change`` (to the stored values'
rounding):

- grey with a VOI window: a straight one (LINEAR, LINEAR_EXACT) inverted as a fixed value
  window is (below; ``dicom_pixels.window_bounds``), so a pixel the window clips keeps
  its value unless the change brings it into view, where it is set to the value that
  shows it (scaling the change alone left such pixels clipped: the file did not hold the
  change its scores were measured with); a SIGMOID one, which clips nowhere, by the
  inverse of the curve's slope at each pixel (``dicom_pixels.window_units_per_unit``);
  then over RescaleSlope (an enhanced multi-frame object's window and each frame's
  rescale come from its functional groups);
- grey with a VOI lookup table: ``change`` times the inverse of the table's slope at
  each pixel's value, over RescaleSlope (a flat stretch of the table, where nothing
  shows, is capped at the table's span; ``written_budget`` then checks the file);
- a modality lookup table in place of the rescale: its inverse slope at each pixel's
  stored value in place of ``1 / RescaleSlope`` (``dicom_luts``);
- grey without either, and colour: min-max, ``change * (max - min)`` of the frames read
  together, the pixels that hold the extremes kept (``stored_change.apply_change``);
- a modality read through a fixed value window (``data.modalities.<m>.value_window``, in
  rescaled units: a CT's Hounsfield units) in place of the VOI tags and min-max: that
  window inverted (``stored_change.windowed_change``), then the rescale;
- an image shown inverted (MONOCHROME1, a Presentation LUT Shape of INVERSE) negated;
  every value inside what BitsStored holds;
- padding (PixelPaddingValue, the reader's black outside the scanned field) kept as
  stored and left out of min-max, and no other pixel moved onto a padding value.

Every other data element is kept, but for what makes the copy a new image: its pixels
differ from the original's, so it gets its own SOPInstanceUID and SeriesInstanceUID
(derived from the original's: the same in every file of a series and in every run), an
ImageType of DERIVED, a DerivationDescription, and a SourceImageSequence naming the
original; a PACS that holds both then keeps both, where a copy under the original's UID
would be dropped as a duplicate or replace the original. The study stays the original's.
An icon (IconImageSequence: a thumbnail of the unprotected pixels) is removed.
PixelData is written uncompressed in the file's own PlanarConfiguration, a 1-bit image's
packed eight pixels a byte; a big-endian file's copy is Explicit VR Little Endian. Two kinds of file
change how their pixels are described, because the changed pixels could not be stored
the old way: a YBR colour file becomes RGB (pydicom reads it as RGB; converting back would
round every pixel again), and a PALETTE COLOR file becomes the RGB its palette showed (the
changed colours are not in the palette), its palette elements removed. A series' unread
slices keep their pixel data as stored (compressed ones stay compressed) and get the new
series' UIDs.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from mami_jax.apps.privacy.derived_uids import COPY, derived_uid
from mami_jax.apps.privacy.stored_change import (apply_change, channels, per_slice_change,
                                                 windowed_change)
from mami_jax.data import dicom_pixels
from mami_jax.data.dicom_luts import ModalityLut, VoiLut
from mami_jax.data.image_values import value_range
from mami_jax.runtime.atomic_files import publish_dir, staging_dir, write_atomic

#: Elements that describe a palette (PS3.3 C.7.9); a copy written as RGB drops them.
PALETTE_ELEMENTS = tuple(
    f"{colour}PaletteColorLookupTable{part}" for colour in ("Red", "Green", "Blue", "Alpha")
    for part in ("Descriptor", "Data")) + tuple(
    f"{kind}{colour}PaletteColorLookupTable{part}" for colour in ("Red", "Green", "Blue")
    for kind, part in (("Large", "Descriptor"), ("Large", "Data"), ("Segmented", "Data"))) + (
    "SegmentedAlphaPaletteColorLookupTableData", "PaletteColorLookupTableUID",
    "LargePaletteColorLookupTableUID")


#: DerivationDescription of every copy (a LO: at most 64 characters).
DERIVATION = "mami_jax privacy protect: pixels changed"


def _as_derived(ds) -> None:
    """Describes ``ds`` as the protected copy of itself (see the module docstring)."""
    from pydicom.dataset import Dataset

    original, sop_class = ds.get("SOPInstanceUID", None), ds.get("SOPClassUID", None)
    if original:
        ds.SOPInstanceUID = derived_uid(original, COPY)
        if ds.get("file_meta") is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        source = Dataset()
        if sop_class:
            source.ReferencedSOPClassUID = sop_class
        source.ReferencedSOPInstanceUID = original
        ds.SourceImageSequence = [source]
    if ds.get("SeriesInstanceUID", None):
        ds.SeriesInstanceUID = derived_uid(ds.SeriesInstanceUID, COPY)
    image_type = [str(v) for v in (ds.get("ImageType", None) or [])]
    ds.ImageType = ["DERIVED"] + image_type[1:] if image_type else ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = DERIVATION


def _read(path: str):
    """(dataset, its rescaled frames, the stored values to change, where they are padding
    or None) of the file at ``path``: decompressed once (the copy is written uncompressed),
    a palette file's values through its palette, the dataset re-described as what will be
    stored."""
    ds = dicom_pixels.read_dataset(path)
    dicom_pixels.decompress(ds)           # names the file when no decoder reads it
    frames = dicom_pixels.rescaled_frames(ds)
    stored = dicom_pixels.stored_pixels(ds)
    padded = dicom_pixels.padding(ds, stored)
    return ds, frames, _as_stored(ds, stored), padded


def _as_stored(ds, stored: np.ndarray) -> np.ndarray:
    """``stored`` as the copy will store it: a palette file's as the RGB it showed."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if dicom_pixels.photometric(ds) == "PALETTE COLOR" and samples == 1:
        from pydicom.pixels import apply_color_lut

        bits = dicom_pixels.palette_bits(ds)       # the copy reads at the palette's scale
        stored = np.ascontiguousarray(apply_color_lut(stored, ds)[..., :3])
        stored = stored.astype(np.uint8) if bits == 8 else stored
        for keyword in PALETTE_ELEMENTS:
            if keyword in ds:
                delattr(ds, keyword)
        ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
        ds.BitsAllocated = ds.BitsStored = bits
        ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    return stored


def _scale(ref, frames, padded, value_window=None
           ) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], float | None, float | None]:
    """(the change in rescaled units that a frame's pixels need to read as their unit
    pixels plus a change, lo, hi) of ``frames`` (the rescaled frames read together,
    (H, W, C) each) under ``ref``'s reading rule, or ``value_window`` in place of its VOI
    tags and min-max; ``padded``: each frame's padding mask (H, W) or None, left out of
    min-max as the reader does. lo and hi: the range a min-max rule scales by, which the
    copy keeps (None for any other rule)."""
    if frames[0].shape[-1] == 3:
        if value_window is not None and frames[0].dtype != np.uint8:
            return (lambda frame, change: windowed_change(frame, change, value_window)), \
                None, None
        scale = dicom_pixels.colour_full_scale(ref)      # as the reader scales colour
        return (lambda frame, change: change * scale), None, None
    sign = -1.0 if dicom_pixels.shown_inverted(ref) else 1.0
    if value_window is not None:
        return (lambda frame, change: windowed_change(frame[..., 0], sign * change,
                                                      value_window)), None, None
    shown = dicom_pixels.window(ref)
    if shown is not None:
        bounds = dicom_pixels.window_bounds(*shown)
        if bounds is not None:
            return (lambda frame, change: windowed_change(frame[..., 0], sign * change,
                                                          bounds)), None, None
        return (lambda frame, change: change * sign * dicom_pixels.window_units_per_unit(
            frame[..., 0], *shown)), None, None
    lut = VoiLut.of(ref)
    if lut is not None:
        return (lambda frame, change: change * sign * lut.stored_per_unit(frame[..., 0])), \
            None, None
    ignore = None if all(p is None for p in padded) else np.stack(
        [np.zeros(f.shape[:2], bool) if p is None else p for f, p in zip(frames, padded)])
    lo, hi = value_range(np.stack([f[..., 0] for f in frames]), ignore)
    return (lambda frame, change: change * sign * max(hi - lo, 1e-12)), lo, hi


def _changed(ds, index, frame, stored, change, scale_info, padded=None) -> np.ndarray:
    """``stored`` (the stored values of frame ``index``) with ``change`` (H, W, C unit
    pixels) added; ``frame``: its rescaled values (H, W, C); ``padded``: its padding
    (H, W) or None, kept as stored, and no other pixel is moved onto a padding value
    (it would read as padding: such a pixel keeps its stored value)."""
    rescaled_change, lo, hi = scale_info
    if stored.ndim == 3:                 # colour: no rescale; within BitsStored's range
        return apply_change(stored, rescaled_change(frame, channels(change, stored)), lo, hi,
                            limits=(0, int(dicom_pixels.colour_full_scale(ds))))
    table = ModalityLut.of(ds)
    if table is not None:            # stored units per modality unit, pixel by pixel
        per_stored = table.stored_per_output(stored)
        stored_lo, stored_hi = (None, None) if lo is None else table.stored_range(lo, hi)
    else:
        slope, intercept = dicom_pixels.rescale(ds, index)
        per_stored = 1.0 / slope
        stored_lo = None if lo is None else (lo - intercept) / slope
        stored_hi = None if hi is None else (hi - intercept) / slope
        if stored_lo is not None and stored_lo > stored_hi:
            stored_lo, stored_hi = stored_hi, stored_lo
    new = apply_change(stored, rescaled_change(frame, change.mean(-1)) * per_stored, stored_lo,
                       stored_hi, _bits_stored_range(ds), keep=padded)
    landed = dicom_pixels.padding(ds, new)
    if landed is not None:
        moved = landed if padded is None else landed & ~padded
        new = np.where(moved, stored, new)
    return new


def _bits_stored_range(ds) -> tuple[int, int] | None:
    """The values BitsStored can hold (signed where PixelRepresentation is 1)."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if bits <= 0:
        return None
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _save(ds, pixels: np.ndarray, out: str) -> None:
    """``pixels`` as ``_stored`` gave them ((frames,) rows, columns(, samples)), stored in
    ``ds``'s own layout: colour planes one after the other where its PlanarConfiguration
    is 1 (pixel_array interleaves them); a YBR file's copy is stored as the RGB it was
    given and says so."""
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        if dicom_pixels.photometric(ds).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
        if int(ds.get("PlanarConfiguration", 0) or 0):
            pixels = np.moveaxis(pixels, -1, -3)
    holder = next((k for k in dicom_pixels.PIXEL_ELEMENTS if k in ds), "PixelData")
    setattr(ds, holder, _pixel_bytes(ds, pixels))   # a float map stays float
    _as_little_endian(ds, holder)
    _write(ds, out)


def _pixel_bytes(ds, pixels: np.ndarray) -> bytes:
    """``pixels`` as the copy's element holds them: eight a byte for a 1-bit image (a
    mask, a segmentation frame), else each value little endian (``_as_little_endian``)."""
    if int(ds.get("BitsAllocated", 8) or 8) == 1:
        from pydicom.pixels import pack_bits
        return pack_bits(pixels)
    return np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<")).tobytes()


def _as_little_endian(ds, holder: str) -> None:
    """Re-describes a big-endian file (Explicit VR Big Endian, a retired syntax archives
    still hold) as Explicit VR Little Endian, the order ``_pixel_bytes`` writes: in big
    endian, 8-bit pixels in an OW element are stored word-swapped, so bytes in memory
    order would read back scrambled. ``_write`` then encodes every element that way."""
    from pydicom.uid import ExplicitVRLittleEndian
    if ds.file_meta.TransferSyntaxUID.is_little_endian:
        return
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if holder == "PixelData":
        ds[holder].VR = "OB" if int(ds.get("BitsAllocated", 8) or 8) <= 8 else "OW"


def _without_icons(ds) -> None:
    """Removes every IconImageSequence (the top level's and any nested one): an icon is a
    thumbnail of the pixels as they were, which the protection does not reach, so a copy
    that kept it would carry its original image inside it."""
    def visit(dataset, element):
        if element.keyword == "IconImageSequence":
            del dataset[element.tag]
    ds.walk(visit)


def _write(ds, out: str) -> None:
    _as_derived(ds)
    _without_icons(ds)

    syntax = ds.get("file_meta", {}).get("TransferSyntaxUID", None)
    encoding = {} if syntax is None or syntax.is_compressed or \
        ds.original_encoding == (syntax.is_implicit_VR, syntax.is_little_endian) else \
        dict(implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian,
             force_encoding=True)     # a big-endian file re-described (_as_little_endian)

    def write(tmp):
        import pydicom
        pydicom.dcmwrite(tmp, ds, enforce_file_format=False, **encoding)
    write_atomic(out, write)


def write_dicom_file(path: str, slices, delta, out: str, value_window=None) -> None:
    """The copy of a single- or multi-frame DICOM file with ``delta`` on its read ``slices``
    (``value_window``: the fixed range its modality is read through, or None)."""
    ds, frames, stored, padded = _read(path)
    order = dicom_pixels.frame_order(ds)             # slice i is stored frame order[i]
    changes = {int(order[i]): change
               for i, change in per_slice_change(delta, slices, frames.shape[0]).items()}
    several = int(ds.get("NumberOfFrames", 1) or 1) > 1
    pads = {f: None if padded is None else padded[f] if several else padded for f in changes}
    scale_info = _scale(ds, [frames[f] for f in changes], list(pads.values()), value_window)
    new = stored.copy()
    for f, change in changes.items():
        if several:
            new[f] = _changed(ds, f, frames[f], new[f], change, scale_info, pads[f])
        else:
            new = _changed(ds, f, frames[f], new, change, scale_info, pads[f])
    _save(ds, new, out)


def write_dicom_series(volume, slices, delta, out: str, value_window=None) -> None:
    """The copy of a DICOM series folder (``decode.DicomSeries``): the read slices'
    files changed under the first file's reading rule, the others' pixels kept."""
    changes = per_slice_change(delta, slices, volume.num_slices)
    read = {}
    for i in changes:
        ds, frames, stored, padded = _read(volume.files[i])
        read[i] = (ds, stored, frames[0], padded)
    ref = read[0][0] if 0 in read else \
        dicom_pixels.read_dataset(volume.files[0], header_only=True)
    scale_info = _scale(ref, [r[2] for r in read.values()], [r[3] for r in read.values()],
                        value_window)
    with staging_dir(out) as tmp:
        for i, f in enumerate(volume.files):
            target = os.path.join(tmp, os.path.basename(f))
            if i in changes:
                ds, stored, frame, padded = read[i]
                _save(ds, _changed(ds, 0, frame, stored, changes[i], scale_info, padded),
                      target)
            else:                  # pixels as stored; the copy's series and instance UIDs
                _write(dicom_pixels.read_dataset(f), target)
        publish_dir(tmp, out)
