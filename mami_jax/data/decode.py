"""Reading every image format of the public MedReID datasets into one array layout.

A manifest ``path`` is one of: a 2-D image file (8- or 16-bit PNG, JPEG, TIFF, BMP; WebP,
JPEG 2000, PGM/PPM), a DICOM file (single- or multi-frame), a NIfTI volume (``.nii``,
``.nii.gz``, or an Analyze/NIfTI pair ``.img``/``.hdr`` as OASIS ships it), a folder of
slice images (in any of those 2-D formats), or a folder holding one DICOM series.
Everything becomes float32 in [0, 1].

Two entry points:

- ``decode(path) -> (S, H, W, 3)``: the whole image or series, grey replicated to
  three channels (S = 1 for a 2-D image).
- ``open_volume(path)`` returns a ``Volume`` with ``num_slices`` and
  ``read(indices) -> (n, H, W, C)`` with C = 1 (grey) or 3 (colour). The input
  pipeline uses it to read only the T slices it samples from a long series and to
  replicate grey to RGB only after resizing (three times less work).

Intensity rules (one rule per format, so the same scan always looks the same):

- 8-bit integer images are divided by 255.
- wider integer images (16-bit PNG X-rays use 12, 14 or 16 bits depending on the
  scanner) and float images are scaled by the minimum and maximum of the slices
  read together (one range for the whole set, so slices of a series stay comparable).
  A 16-bit-per-channel colour PNG is the exception: Pillow reads it as 8-bit RGB (each
  channel's high byte), so it is divided by 255 like an 8-bit colour image
  (``tests/test_data_decode.py`` pins this); a 16-bit grey PNG with alpha, which Pillow
  would read by its high byte too, is refused (a 12-bit radiograph would read dark).
- DICOM (``dicom_pixels``): RescaleSlope/RescaleIntercept first; then the first VOI
  window (WindowCenter/WindowWidth, through its VOILUTFunction) when present, else the first VOI LUT of the
  VOILUTSequence, else min-max as above; MONOCHROME1 and a Presentation LUT Shape of
  INVERSE are inverted (1 - x) so bone is always bright; PALETTE COLOR is read through its
  palette as RGB; colour is divided by its full scale (2^bits - 1 of BitsStored, or of the
  palette's entries), not min-max: it is what the screen shows. Compressed transfer
  syntaxes decode through pydicom's plugins (python-gdcm is a dependency).
- A value window (``open_volume(..., value_window=(lo, hi))``, from a modality's
  ``data.modalities.<m>.value_window``) replaces min-max and a DICOM's VOI window or LUT:
  stored values (after a DICOM's rescale) map to [0, 1] by one fixed range, clipped
  (``image_values.window``); 8-bit image files keep /255.
- NIfTI (``nifti_slices``): the volume is reoriented to the closest canonical (RAS+)
  orientation and sliced axially; each slice is shown in radiological convention
  (anterior at the top, patient right on the image left). A header whose sform is
  empty reads by its qform, else by its voxel sizes.

Series order: slice images by natural file-name order ("2.png" before "10.png"), the
folder's other files ignored unless they are DICOM (a folder of both is refused: a
series exported with a preview JPEG would otherwise read as that one image);
DICOM files by their position along the slice normal (ImagePositionPatient and
ImageOrientationPatient), else InstanceNumber, else file name (``dicom_series``, which
refuses a folder of several series or of several images at one position).

A file that cannot be read raises ``DecodeError`` whose message starts with the
file's path, so a failure in a million-image run names the culprit. Decoding never
hands on a non-finite image: a NaN or infinite DICOM RescaleSlope, RescaleIntercept,
WindowCenter or WindowWidth is a ``DecodeError`` naming the file and the tag, and
every reader's output is checked for NaN/infinity (``Volume.read``). The input
pipeline can then skip such a file (``data.skip_bad_images``) instead of training on
NaNs that would surface much later as a non-finite loss.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mami_jax.data import dicom_pixels, nifti_slices
from mami_jax.data.decode_errors import DecodeError
from mami_jax.data.dicom_series import nested_series_hint, series_files
from mami_jax.data.image_signature import path_signature
from mami_jax.data.image_values import minmax, scale_integer_or_float, window
from mami_jax.data.natural_order import examples, natural_key

#: The 2-D picture files a slice folder's slices are recognised by (its other files, a note
#: or a Thumbs.db, are ignored): the formats a protected copy can be saved in
#: (``apps.privacy.copy_formats``). Any other file PIL reads is still read when a row names it.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".j2k",
                    ".pgm", ".ppm", ".pnm")
NIFTI_EXTENSIONS = (".nii", ".nii.gz", ".img", ".hdr")
DICOM_EXTENSIONS = (".dcm", ".dicom")


def _lower_ext(path: str) -> str:
    low = path.lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(low)[1]


def is_dicom_file(path: str) -> bool:
    if _lower_ext(path) in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_volume_file(path: str) -> bool:
    """Whether the file ``path`` is read as a NIfTI/Analyze volume or a DICOM file, not as
    a picture (``open_volume``'s choice for a file)."""
    return _lower_ext(path) in NIFTI_EXTENSIONS or (
        _lower_ext(path) not in IMAGE_EXTENSIONS and is_dicom_file(path))


# --------------------------------------------------------------------------- 2-D files


def _read_pil_array(path: str, min_short_side: int | None = None) -> np.ndarray:
    """Raw pixels of an image file: (H, W) grey or (H, W, 3) RGB, original dtype.

    ``min_short_side``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling, ``Image.draft``) as long as its short side stays at least this long. A
    2500 px MIMIC-CXR JPEG then decodes several times faster for a 224 px model input.
    """
    from PIL import Image

    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as e:
        raise DecodeError(f"{path}: {e.args[0].split(', could be')[0]}, PIL's guard against "
                          "decompression bombs: a whole slide or a large region is read as "
                          "tiles, one manifest row each (cut it first)") from e
    with opened as img:
        _refuse_several_pages(img, path)
        if min_short_side and img.format in ("JPEG", "MPO"):
            w, h = img.size
            f = min_short_side / float(min(w, h))
            if f < 1.0:
                img.draft(img.mode, (max(1, int(np.ceil(w * f))), max(1, int(np.ceil(h * f)))))
        img.load()
        mode = img.mode
        if img.format == "PNG" and _png_depth_and_colour(path) == (16, GREY_ALPHA):
            raise DecodeError(
                f"{path}: a 16-bit grey PNG with an alpha channel, of which Pillow reads only "
                "the upper 8 bits (a 12-bit radiograph would read nearly black): save it "
                "without the alpha channel, as a 16-bit grey PNG, which is read in full")
        if mode in ("1", "LA", "La"):
            img = img.convert("L")
        elif mode in ("P", "PA"):
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode == "RGBA":
                img = img.convert("RGB")
        elif mode in ("RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            img = img.convert("RGB")
        elif mode.startswith("I;16"):
            arr = np.asarray(img)
            return arr.astype(np.uint16, copy=False)
        arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ValueError(f"unexpected channel count {arr.shape[2]} (mode {mode})")
    return arr


#: PNG's colour type of grey samples with alpha (Pillow opens a 16-bit one as 8-bit RGBA).
GREY_ALPHA = 4


def _png_depth_and_colour(path: str) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's header (IHDR, the first chunk)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return (head[24], head[25]) if len(head) == 26 and head[12:16] == b"IHDR" else (0, 0)


def _refuse_several_pages(img, path: str) -> None:
    """A multi-page TIFF (a z-stack, a slide's pyramid with its label and thumbnail) or an
    animated PNG/GIF: PIL shows only its first page, so reading it would drop the others
    without a word (and a protected copy would lose them). An MPO JPEG's second picture is
    the camera's preview of the first: read as the JPEG it is."""
    pages = int(getattr(img, "n_frames", 1) or 1)
    if pages > 1 and img.format != "MPO":
        raise DecodeError(
            f"{path}: {img.format} file holds {pages} pages; only single-page image files "
            f"are read: save the page to use as a file of its own, and a stack of slices as "
            f"a folder of one image per slice")


def _to_slices(arr: np.ndarray) -> np.ndarray:
    """(H, W) -> (1, H, W, 1); (H, W, 3) -> (1, H, W, 3)."""
    if arr.ndim == 2:
        return arr[None, :, :, None]
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr[None]
    raise ValueError(f"unexpected image shape {arr.shape}")


# --------------------------------------------------------------------------- volumes


class Volume:
    """A readable image or series: ``num_slices`` and ``read(indices)``."""

    kind = "?"

    def __init__(self, path: str):
        self.path = path
        # (lo, hi) in stored units (``open_volume``), or None: the format's own rule.
        self.value_window: tuple[float, float] | None = None

    @property
    def num_slices(self) -> int:
        raise NotImplementedError

    def read(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """(n, H, W, C) float32 in [0, 1] for the given slice indices (all if None).

        Every reader's result passes one check here: a NaN or infinite value is a
        DecodeError naming the path, never an image handed onward.
        """
        try:
            x = self._read(None if indices is None else [int(i) for i in indices])
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the path named
            raise DecodeError(f"{self.path}: cannot read {self.kind}: {type(e).__name__}: {e}") from e
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise DecodeError(f"{self.path}: decoded {self.kind} holds {bad} NaN or infinite "
                              f"value(s) of {np.size(x)}")
        return x

    def _check(self, indices, n):
        if indices is None:
            return list(range(n))
        bad = [i for i in indices if i < 0 or i >= n]
        if bad:
            raise DecodeError(f"{self.path}: slice indices {bad} out of range for {n} slices")
        return indices

    def _read(self, indices):
        raise NotImplementedError


def _refuse_mixed_slices(path: str, slices: dict[str, np.ndarray], types: bool = True) -> None:
    """Refuses a series whose read slices (file -> pixels) differ in size or (``types``:
    as stored, not rescaled) pixel type, naming the files that differ from the most common
    kind: a localizer or a thumbnail saved among the slices is the usual cause, and a
    message listing only the sizes left the user to open every file to find it."""
    def kind(a):
        size = "x".join(str(n) for n in a.shape[:2])
        colour = " RGB" if a.ndim == 3 and a.shape[2] == 3 else ""
        return f"{size}{colour} {a.dtype}" if types else f"{size}{colour}"

    kinds = {name: kind(a) for name, a in slices.items()}
    counts: dict[str, int] = {}
    for k in kinds.values():
        counts[k] = counts.get(k, 0) + 1
    if len(counts) == 1:
        return
    common = max(counts, key=counts.get)
    odd = [f"{os.path.basename(name)} ({k})" for name, k in kinds.items() if k != common]
    raise DecodeError(
        f"{path}: {len(odd)} of the {len(kinds)} slices read "
        f"{'differs' if len(odd) == 1 else 'differ'} from the others ({common}): "
        f"{examples(odd)}; a series' slices share one size and pixel type: move the odd ones "
        "(a localizer, a thumbnail) out of the folder")


class ImageFile(Volume):
    """A 2-D image (PNG/JPEG/...): one slice; repeated indices repeat it."""

    kind = "image file"

    def __init__(self, path: str, min_short_side: int | None = None):
        super().__init__(path)
        self.min_short_side = min_short_side

    @property
    def num_slices(self) -> int:
        return 1

    def _read(self, indices):
        indices = self._check(indices, 1)
        x = scale_integer_or_float(_to_slices(_read_pil_array(self.path, self.min_short_side)),
                                   self.value_window)
        return np.repeat(x, len(indices), axis=0) if len(indices) != 1 else x


class DicomFile(Volume):
    """A single DICOM file: one slice, or F frames of a multi-frame object."""

    kind = "DICOM file"

    def __init__(self, path: str):
        super().__init__(path)
        self._n = None

    @property
    def num_slices(self) -> int:
        if self._n is None:
            try:
                import pydicom

                ds = pydicom.dcmread(self.path, stop_before_pixels=True, force=True)
                self._n = int(ds.get("NumberOfFrames", 1) or 1)
            except Exception as e:  # noqa: BLE001
                raise DecodeError(f"{self.path}: unreadable DICOM header: {e}") from e
        return self._n

    def _read(self, indices):
        ds = dicom_pixels.read_dataset(self.path)
        order = dicom_pixels.frame_order(ds)
        frames = dicom_pixels.rescaled_frames(ds)[order]
        padded = dicom_pixels.padded_frames(ds)
        self._n = frames.shape[0]
        indices = self._check(indices, frames.shape[0])
        return dicom_pixels.to_unit(frames[indices], ds,
                                    None if padded is None else padded[order][indices],
                                    self.value_window)


class DicomSeries(Volume):
    """A folder holding the DICOM files of one series, one slice per file."""

    kind = "DICOM series"

    def __init__(self, path: str):
        super().__init__(path)
        try:
            self.files = series_files(os.path.abspath(path), path_signature(path))
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DecodeError(f"{path}: cannot list DICOM series: {e}") from e

    @property
    def num_slices(self) -> int:
        return len(self.files)

    def _read(self, indices):
        indices = self._check(indices, len(self.files))
        cache, frames, ref = {}, [], None
        for i in indices:
            if i not in cache:
                try:
                    ds = dicom_pixels.read_dataset(self.files[i])
                    f = dicom_pixels.rescaled_frames(ds)
                    padded = dicom_pixels.padded_frames(ds)
                except DecodeError:
                    raise
                except Exception as e:  # noqa: BLE001
                    raise DecodeError(f"{self.files[i]}: unreadable slice {i} of DICOM series "
                                      f"{self.path}: {type(e).__name__}: {e}") from e
                if f.shape[0] != 1:
                    raise DecodeError(f"{self.files[i]}: multi-frame file inside a series folder")
                cache[i] = (f[0].astype(np.float32), ds,
                            np.zeros(f.shape[1:], bool) if padded is None else padded[0])
            frames.append(cache[i][0])
        ref = cache[0][1] if 0 in cache else \
            dicom_pixels.read_dataset(self.files[0], header_only=True)
        _refuse_mixed_slices(self.path, {self.files[i]: cache[i][0] for i in cache},
                             types=False)
        padded = np.stack([cache[i][2] for i in indices])
        return dicom_pixels.to_unit(np.stack(frames), ref, padded if padded.any() else None,
                                    self.value_window)


class NiftiVolume(Volume):
    """A NIfTI-1/2 or Analyze volume, sliced axially in canonical orientation."""

    kind = "NIfTI volume"

    def __init__(self, path: str):
        super().__init__(path)
        self._n = None

    @property
    def num_slices(self) -> int:
        if self._n is None:
            try:
                import nibabel as nib

                self._n = nifti_slices.num_slices(nib.load(self.path))
            except Exception as e:  # noqa: BLE001
                raise DecodeError(f"{self.path}: cannot read {self.kind}: {type(e).__name__}: {e}") from e
        return self._n

    def _read(self, indices):
        n, raw = nifti_slices.read_slices(self.path, indices)
        self._n = n
        return minmax(raw) if self.value_window is None else window(raw, self.value_window)


class SliceFolder(Volume):
    """A folder of 2-D slice images in natural file-name order."""

    kind = "slice folder"

    def __init__(self, path: str, names: list[str], min_short_side: int | None = None):
        super().__init__(path)
        self.min_short_side = min_short_side
        self.files = [os.path.join(path, n) for n in sorted(names, key=natural_key)]

    @property
    def num_slices(self) -> int:
        return len(self.files)

    def _read(self, indices):
        indices = self._check(indices, len(self.files))
        cache, raw = {}, []
        for i in indices:
            if i not in cache:
                try:
                    cache[i] = _read_pil_array(self.files[i], self.min_short_side)
                except Exception as e:  # noqa: BLE001
                    raise DecodeError(f"{self.files[i]}: unreadable slice {i} of {self.path}: "
                                      f"{type(e).__name__}: {e}") from e
            raw.append(cache[i])
        _refuse_mixed_slices(self.path, {self.files[i]: cache[i] for i in cache})
        stack = np.stack(raw)
        if stack.ndim == 3:
            stack = stack[..., None]
        return scale_integer_or_float(stack, self.value_window)


def open_volume(path: str, min_short_side: int | None = None,
                value_window: tuple[float, float] | None = None) -> Volume:
    """Chooses the reader for ``path`` (file or folder); raises DecodeError if none fits.

    ``min_short_side`` lets JPEG files decode at reduced scale (see ``_read_pil_array``);
    None decodes at full resolution. ``value_window`` (lo, hi): the stored values (after a
    DICOM's rescale: Hounsfield units for a CT) mapped to [0, 1], clipped, in place of
    min-max and of a DICOM's own VOI window or table; 8-bit image files keep /255.
    """
    volume = _choose_volume(path, min_short_side)
    volume.value_window = None if value_window is None else (
        float(value_window[0]), float(value_window[1]))
    return volume


def _choose_volume(path: str, min_short_side: int | None) -> Volume:
    if os.path.isdir(path):
        try:
            names = [n for n in os.listdir(path)
                     if not n.startswith(".") and os.path.isfile(os.path.join(path, n))]
        except OSError as e:
            raise DecodeError(f"{path}: cannot list folder: {e}") from e
        images = [n for n in names if _lower_ext(n) in IMAGE_EXTENSIONS]
        if images:
            dicom = [n for n in names
                     if n not in images and is_dicom_file(os.path.join(path, n))]
            if dicom:
                raise DecodeError(
                    f"{path}: holds both slice images ({examples(images)}) and DICOM files "
                    f"({examples(dicom)}): a manifest row's folder holds one or the other: "
                    "move the images or the DICOM files into a folder of their own")
            return SliceFolder(path, images, min_short_side)
        if names:
            return DicomSeries(path)
        raise DecodeError(f"{path}: folder holds no slice images or DICOM files"
                          f"{nested_series_hint(path)}")
    if not os.path.exists(path):
        raise DecodeError(f"{path}: no such file or folder")
    ext = _lower_ext(path)
    if ext in NIFTI_EXTENSIONS:
        return NiftiVolume(path)
    if ext in IMAGE_EXTENSIONS:
        return ImageFile(path, min_short_side)
    if is_dicom_file(path):
        return DicomFile(path)
    return ImageFile(path, min_short_side)  # let PIL try other formats; fails naming the file


def decode(path: str, slices: Sequence[int] | None = None,
           value_window: tuple[float, float] | None = None) -> np.ndarray:
    """The image or series at ``path`` as float32 (S, H, W, 3) in [0, 1] (``value_window``:
    as ``open_volume``)."""
    return as_rgb(open_volume(path, value_window=value_window).read(slices))


def as_rgb(x: np.ndarray) -> np.ndarray:
    """Read slices (S, H, W, 1 or 3) with a grey image's one channel repeated three times."""
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
