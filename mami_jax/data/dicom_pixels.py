"""A DICOM dataset's pixels as the model sees them: stored values, then the modality
rescale, then the VOI transform (window or lookup table), or a palette's colours.

The reading rules, in order (``decode``'s module docstring gives the other formats'):

- the stored values (``stored_pixels``): compressed transfer syntaxes decode through
  pydicom's plugins (python-gdcm, a dependency, reads JPEG Lossless, JPEG-LS and JPEG
  2000; Pillow reads JPEG Baseline; pydicom itself RLE); a syntax no installed plugin
  reads, a file without pixel data (a report, a plan) and a file whose meta names no
  transfer syntax that cannot be told from how it was read each raise one ``DecodeError``
  line naming the file and what to install or what the file is;
- frames in anatomical order: an enhanced multi-frame object's by the position in
  each frame's functional groups (``frame_order``, which refuses frames in several
  orientations or several at one position, as a series folder's are refused), a classic
  one's as stored;
- grey: the modality LUT, a table (ModalityLUTSequence, ``dicom_luts``) or else
  RescaleSlope / RescaleIntercept (an enhanced object's per frame, from its functional
  groups, as its window), then the first VOI window
  (WindowCenter / WindowWidth through its VOILUTFunction: LINEAR, LINEAR_EXACT or SIGMOID,
  PS3.3 C.11.2.1.2-3), else the first VOI
  LUT of the VOILUTSequence (the display curve many CR/DX X-rays carry instead of a
  window), else min-max over the frames read together; MONOCHROME1, or a Presentation
  LUT Shape of INVERSE, inverted (1 - x) (``shown_inverted``);
  padding (PixelPaddingValue, through PixelPaddingRangeLimit: the pixels outside the
  scanned field, a CT's -2000 circle, a mammogram's background) is left out of min-max
  and read as 0 (black), so it neither squeezes the image's contrast nor shows grey;
- PALETTE COLOR: the stored indices through the palette (``apply_color_lut``), as RGB;
- other colour: min-max (8-bit: / 255) like any colour image.

The privacy writers invert these rules to put a change back into stored values, so
they import the same functions (``dicom_luts``: a table's inverse local slope stands
for a rescale's slope or a window's width).
"""

from __future__ import annotations

import math

import numpy as np

from mami_jax.data.decode_errors import DecodeError, dataset_place
from mami_jax.data.dicom_luts import ModalityLut, VoiLut, as_pixel_value
from mami_jax.data.dicom_series import (SPLIT_ECHOES, position_key, refuse_several_orientations,
                                        refuse_shared_positions)
from mami_jax.data.image_values import minmax, scale_integer_or_float
from mami_jax.data.image_values import window as fixed_window

#: JPEG Extended (processes 2 and 4): 12-bit JPEG, which only pylibjpeg-libjpeg decodes.
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"

#: The elements that may hold an image's pixels (float ones: parametric maps, ADC, ...).
PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dataset(path: str, header_only: bool = False):
    """The DICOM dataset of ``path`` (pixels decoded lazily by ``stored_pixels``);
    ``header_only``: without its pixel data, for the reading rule of a series' first file."""
    import pydicom

    return pydicom.dcmread(path, force=True, stop_before_pixels=header_only)


def _first(value, default=None):
    if value is None:
        return default
    try:
        if isinstance(value, (str, bytes)):
            return value
        return value[0]
    except (TypeError, IndexError, KeyError):
        return value


def dicom_number(ds, keyword: str, default: float | None, where=None) -> float | None:
    """The first value of a numeric DICOM tag as a finite float; ``default`` if absent or empty.

    A NaN or infinite value raises DecodeError naming the file (``where``'s, for an item
    of a sequence) and the tag: rescaling or windowing with it would silently turn every
    pixel into NaN (or a constant).
    """
    value = _first(ds.get(keyword, None), None)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    number = float(value)
    if not math.isfinite(number):
        raise DecodeError(f"{dataset_place(where if where is not None else ds)}: DICOM tag "
                          f"{keyword} is {value!r}, not a finite number")
    return number


def _group_item(ds, frame: int, sequence: str):
    """In an enhanced multi-frame object (Enhanced CT / MR / ...), the item of the
    functional group ``sequence`` that holds for ``frame``: the frame's own, else the
    shared one. None in a classic object, whose tags sit at the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups, None)
        if items and index < len(items):
            found = items[index].get(sequence, None)
            if found:
                return found[0]
    return None


def rescale(ds, frame: int = 0) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of ``frame``: the top-level tags, else the
    frame's PixelValueTransformationSequence; (1, 0) when neither is there."""
    holder = ds if ("RescaleSlope" in ds or "RescaleIntercept" in ds) else \
        _group_item(ds, frame, "PixelValueTransformationSequence")
    if holder is None:
        return 1.0, 0.0
    slope = dicom_number(holder, "RescaleSlope", 1.0, ds) or 1.0  # zero would erase the image
    return slope, dicom_number(holder, "RescaleIntercept", 0.0, ds)


#: VOILUTFunction's defined terms (PS3.3 C.11.2.1.3); any other value reads as LINEAR.
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window(ds) -> tuple[float, float, str] | None:
    """(WindowCenter, WindowWidth, VOILUTFunction): the first window of the top-level tags,
    else of the first frame's FrameVOILUTSequence; None without one. The function is LINEAR
    where the tag is absent or holds a term the standard does not define."""
    holder = ds if "WindowCenter" in ds else _group_item(ds, 0, "FrameVOILUTSequence")
    if holder is None:
        return None
    center = dicom_number(holder, "WindowCenter", None, ds)
    width = dicom_number(holder, "WindowWidth", None, ds)
    function = str(holder.get("VOILUTFunction", ds.get("VOILUTFunction", "")) or "").strip().upper()
    function = function if function in VOI_FUNCTIONS else "LINEAR"
    return None if center is None or width is None else (center, width, function)


#: How to split an enhanced object whose frames are not one stack of slices.
SPLIT_FRAMES = ("(dcm4che's emf2sf writes an enhanced multi-frame object's frames as "
                "single-frame files)")


def frame_order(ds) -> np.ndarray:
    """Stored frame index of each slice, in anatomical order: an enhanced multi-frame
    object places each frame by its PlanePositionSequence, and its frames need not be
    stored in order along the slice normal (they follow its dimension index); a classic
    object's frames are read as stored.

    An enhanced object whose frames are not one stack is refused as a series folder is
    (``dicom_series``), naming the file and the frames: frames in several orientations
    (PlaneOrientationSequence), or several frames at one position (the echoes or time
    points of an MR or perfusion object, stored echo after echo): sorted by depth they
    read as one volume whose slices alternate between planes or contrasts."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    stored = np.arange(n)
    if n < 2 or not ds.get("PerFrameFunctionalGroupsSequence", None):
        return stored
    depth, at_position, oriented = [], {}, {}
    for f in range(n):
        position = _group_item(ds, f, "PlanePositionSequence")
        orientation = _group_item(ds, f, "PlaneOrientationSequence")
        pos = None if position is None else position.get("ImagePositionPatient", None)
        ori = None if orientation is None else orientation.get("ImageOrientationPatient", None)
        if pos is None or ori is None or len(pos) != 3 or len(ori) != 6:
            return stored
        name = f"frame {f + 1}"
        at_position.setdefault(position_key(pos), []).append(name)
        oriented[name] = [float(v) for v in ori]
        normal = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
        depth.append(float(np.dot(normal, np.asarray(pos, float))))
    refuse_several_orientations(
        dataset_place(ds), oriented, "frames",
        f"save each orientation's frames as a file or folder of their own {SPLIT_FRAMES}")
    refuse_shared_positions(dataset_place(ds), at_position, "frames",
                            f"{SPLIT_ECHOES} {SPLIT_FRAMES}")
    return np.asarray(sorted(stored.tolist(), key=lambda f: (depth[f], f)))


#: The sigmoid window's stored units per unit of display are capped at this many widths
#: where the curve is flat (a pixel within 1.6% of black or white), as a table's flat stretch
#: is: a change there hardly shows, and the privacy writers' budget check shrinks what does not fit.
SIGMOID_FLAT_CAP = 16.0


def dicom_window(x: np.ndarray, center: float, width: float,
                 function: str = "LINEAR") -> np.ndarray:
    """A VOI window mapped to [0, 1] (PS3.3 C.11.2.1.2 and C.11.2.1.3): LINEAR, its
    ``center - 0.5`` and ``width - 1`` included; LINEAR_EXACT, ``(x - c) / w + 0.5``
    clipped; SIGMOID, ``1 / (1 + exp(-4 (x - c) / w))``, the curve some DX and mammography
    systems store in place of a straight window."""
    if function == "LINEAR_EXACT":
        y = (x.astype(np.float32) - np.float32(center)) / np.float32(max(float(width), 1e-6))
        return np.clip(y + np.float32(0.5), 0.0, 1.0).astype(np.float32)
    if function == "SIGMOID":
        z = -4.0 * (x.astype(np.float64) - center) / max(float(width), 1e-6)
        return (1.0 / (1.0 + np.exp(np.clip(z, -80.0, 80.0)))).astype(np.float32)
    width = max(float(width), 1.0)
    lo = center - 0.5 - (width - 1.0) / 2.0
    hi = center - 0.5 + (width - 1.0) / 2.0
    y = ((x.astype(np.float32) - np.float32(center - 0.5)) / np.float32(width - 1.0 if width > 1 else 1.0)
         + np.float32(0.5))
    y = np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def window_bounds(center: float, width: float,
                  function: str = "LINEAR") -> tuple[float, float] | None:
    """(lo, hi): the modality values a straight window (LINEAR, LINEAR_EXACT) maps to 0
    and 1, reading ``(x - lo) / (hi - lo)`` in between and clipping outside; None for the
    sigmoid, which clips nowhere, and for a LINEAR window of width 1 (a threshold)."""
    if function == "LINEAR_EXACT":
        width = max(float(width), 1e-6)
        return center - width / 2.0, center + width / 2.0
    if function == "SIGMOID" or float(width) <= 1.0:
        return None
    return center - 0.5 - (width - 1.0) / 2.0, center - 0.5 + (width - 1.0) / 2.0


def window_units_per_unit(x: np.ndarray, center: float, width: float,
                          function: str = "LINEAR"):
    """Modality units per unit of display at ``x`` under ``dicom_window``: the inverse of
    its slope, a constant for the straight windows, per pixel for the sigmoid (capped
    where it is flat: ``SIGMOID_FLAT_CAP``). The privacy writers put a change back with it."""
    if function == "LINEAR_EXACT":
        return max(float(width), 1e-6)
    if function == "SIGMOID":
        y = dicom_window(x, center, width, function).astype(np.float64)
        return np.minimum(float(width) / (4.0 * np.maximum(y * (1.0 - y), 1e-12)),
                          SIGMOID_FLAT_CAP * float(width))
    return max(float(width) - 1.0, 1.0)


def photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper()


def shown_inverted(ds) -> bool:
    """Whether a grey image is displayed light-for-low: MONOCHROME1 (minimum value white),
    or a Presentation LUT Shape of INVERSE (PS3.3 C.11.6), which some CR/DX and mammography
    files stored as MONOCHROME2 carry instead. A file that has both (the DX rule for
    MONOCHROME1) is inverted once; one that says IDENTITY beside MONOCHROME1 keeps the
    photometric reading."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return photometric(ds) == "MONOCHROME1" or shape == "INVERSE"


# ----------------------------------------------------------------------- stored values

def _name_transfer_syntax(ds) -> None:
    """A file without a meta header's TransferSyntaxUID (ACR-NEMA style, or a meta written
    without it) gets the syntax pydicom read its elements with: without one, pydicom
    cannot tell the pixel data's byte order and refuses to decode it."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") is not None:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        raise DecodeError(f"{dataset_place(ds)}: the DICOM file names no transfer syntax and its "
                          "encoding cannot be told from its elements")
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                              uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)


def stored_pixels(ds) -> np.ndarray:
    """``ds.pixel_array``: the stored values, decompressed; (frames,) rows, columns(, samples).

    Raises DecodeError naming the file when it holds no pixel data or when no installed
    plugin decodes its transfer syntax (the plugins' reasons and what to install)."""
    return _decoding(ds, lambda: ds.pixel_array)


def decompress(ds) -> None:
    """Rewrites a compressed ``ds`` uncompressed in place (pydicom's ``decompress``: one
    decoding, after which ``stored_pixels`` reads the raw values), with the errors of
    ``stored_pixels``; an uncompressed ``ds`` is left as it is."""
    _decoding(ds, lambda: ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed
              else None)


def _decoding(ds, decode):
    if not any(k in ds for k in PIXEL_ELEMENTS):
        kind = getattr(ds.get("SOPClassUID", None), "name", None) or "DICOM object"
        raise DecodeError(f"{dataset_place(ds)}: holds no pixel data ({kind}); only images can "
                          "be read")
    _name_transfer_syntax(ds)
    try:
        return decode()
    except (RuntimeError, NotImplementedError) as e:
        syntax = ds.file_meta.TransferSyntaxUID
        if not syntax.is_compressed:
            raise
        reasons = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        if syntax == JPEG_EXTENDED:
            remedy = (". 12-bit JPEG needs 'pip install pylibjpeg pylibjpeg-libjpeg' (GPL-3.0, "
                      "so not a mami_jax dependency); python-gdcm reads the other JPEG syntaxes")
        elif "missing dependencies" in str(e):   # the reasons name what to install
            remedy = ": install what a plugin above requires, or convert the file uncompressed"
        else:
            remedy = "; every installed decoder failed on it, so the file is likely damaged"
        raise DecodeError(
            f"{dataset_place(ds)}: no installed decoder reads its pixel data, compressed as "
            f"{syntax.name} ({syntax}): {reasons or e}{remedy}") from e


# ----------------------------------------------------------------------- display values

def rescaled_frames(ds) -> np.ndarray:
    """Pixel data of a dataset as (F, H, W, C) in stored frame order, after the modality
    LUT (its table, or each frame's rescale), or the palette's RGB for PALETTE COLOR."""
    arr = stored_pixels(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if samples == 1 and photometric(ds) == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)[..., :3]
        return arr.reshape((frames,) + arr.shape[-3:])
    if samples == 1:
        arr = arr.reshape((frames,) + arr.shape[-2:])[..., None]
    else:
        arr = arr.reshape((frames,) + arr.shape[-3:])
    if samples > 1:
        return arr
    table = ModalityLut.of(ds)
    if table is not None:
        return table.apply(arr)
    per_frame = np.asarray([rescale(ds, f) for f in range(frames)], np.float32)
    if np.any(per_frame != np.float32([1.0, 0.0])):
        arr = arr.astype(np.float32) * per_frame[:, 0, None, None, None] \
            + per_frame[:, 1, None, None, None]
    return arr


def palette_bits(ds) -> int:
    """Bits of a PALETTE COLOR file's palette entries (its descriptors' third value: 8 or
    16; PS3.3 C.7.6.3.1.5), 16 where the file names none."""
    for keyword in ("RedPaletteColorLookupTableDescriptor",
                    "LargeRedPaletteColorLookupTableDescriptor"):
        descriptor = ds.get(keyword)
        if descriptor is not None and len(descriptor) >= 3 and int(descriptor[-1]) in (8, 16):
            return int(descriptor[-1])
    return 16


def colour_full_scale(ds) -> float:
    """The stored value of a colour image's full intensity: 2^bits - 1 of its palette's
    entries (PALETTE COLOR) or of BitsStored (RGB, YBR). Colour pixels are what the
    screen shows, with no window to read them through: scaled by their own minimum and
    maximum, a dark picture (a palette of values 0-127) read as bright as a full one."""
    if photometric(ds) == "PALETTE COLOR":
        return float(2 ** palette_bits(ds) - 1)
    return float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)


def padding(ds, stored: np.ndarray | None = None) -> np.ndarray | None:
    """Where a grey image's stored values (``stored``, or the dataset's own) are padding:
    PixelPaddingValue, or every value between it and PixelPaddingRangeLimit; None where
    the dataset names none or no pixel holds it. A value given unsigned for signed pixels
    (the element's VR is "US or SS") is read as the signed value of the same bits."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric(ds) == "PALETTE COLOR":
        return None
    value = dicom_number(ds, "PixelPaddingValue", None)
    if value is None:
        return None
    limit = dicom_number(ds, "PixelPaddingRangeLimit", value)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    value, limit = (as_pixel_value(ds, v, bits) for v in (value, limit))
    lo, hi = min(value, limit), max(value, limit)
    stored = stored_pixels(ds) if stored is None else stored
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def padded_frames(ds) -> np.ndarray | None:
    """``padding`` shaped like ``rescaled_frames``: (F, H, W, 1), or None."""
    mask = padding(ds)
    if mask is None:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return mask.reshape((frames,) + mask.shape[-2:])[..., None]


def to_unit(frames: np.ndarray, ref, padded: np.ndarray | None = None,
            value_window: tuple[float, float] | None = None) -> np.ndarray:
    """Rescaled frames (of one file or one series) -> [0, 1] using ``ref``'s VOI tags, or
    ``value_window`` (lo, hi in modality units, ``image_values.window``) in their place;
    ``padded`` (like ``frames``, grey): padding pixels, left out of min-max and read as 0."""
    if frames.shape[-1] == 3 and value_window is None and frames.dtype != np.uint8:
        out = np.clip(frames.astype(np.float32) * np.float32(1.0 / colour_full_scale(ref)),
                      0.0, 1.0)
    elif frames.shape[-1] == 3:
        out = scale_integer_or_float(frames, value_window)
    elif value_window is not None:
        out = fixed_window(frames, value_window)
    else:
        shown = window(ref)
        lut = None if shown is not None else VoiLut.of(ref)
        if lut is not None:
            out = lut.to_unit(frames)
        elif shown is not None:
            out = dicom_window(frames, *shown)
        else:
            out = minmax(frames, ignore=padded)
    if frames.shape[-1] == 1 and shown_inverted(ref):
        out = np.float32(1.0) - out
    if padded is not None and frames.shape[-1] == 1:
        out = np.where(padded, np.float32(0.0), out)
    return out.astype(np.float32, copy=False)
