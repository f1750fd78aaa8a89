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

Pictures (PNG, JPEG, TIFF, ...) read as viewers show them (``read_picture``): turned by
their EXIF Orientation (a camera's fundus photo stored on its side reads upright, as
``PIL.ImageOps.exif_transpose`` shows it), and laid on white where an alpha channel or a
transparent colour makes them transparent (``on_white``), as ``slide_reader`` lays a
slide's regions on glass: a fully transparent pixel reads white, whatever colour it stores.

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
refuses a folder of several series, of images in several orientations or of several
images at one position; an enhanced multi-frame file's frames likewise,
``dicom_pixels.frame_order``). The slices of a folder share one size: it is compared
from the files' headers when the folder is opened (DICOM Rows and Columns, a picture's
size as shown), so a folder with one odd slice fails every read, not only the training
draws that meet it; what the headers do not tell (a pixel type) is compared in the slices
each read draws.

A file that cannot be read raises ``DecodeError`` whose message starts with the
file's path, so a failure in a million-image run names the culprit. Decoding never
hands on a non-finite image: a NaN or infinite DICOM RescaleSlope, RescaleIntercept,
WindowCenter or WindowWidth is a ``DecodeError`` naming the file and the tag, and
every reader's output is checked for NaN/infinity (``Volume.read``): in the slices read,
except for a NIfTI read whole (a .nii.gz always), which is checked whole
(``nifti_slices.refuse_non_finite``); ``python -m mami_jax.data.check_images`` reads every
slice of every row. The input
pipeline can then skip such a file (``data.skip_bad_images``) instead of training on
NaNs that would surface much later as a non-finite loss.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from mami_jax.data import dicom_pixels, nifti_slices
from mami_jax.data.decode_errors import DecodeError, refuse_odd_slices, slice_kind
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
    """Pixels of an image file as a viewer shows them: (H, W) grey or (H, W, 3) RGB, in
    the stored dtype, turned upright by its EXIF Orientation and laid on white where it is
    transparent (``read_picture``, ``on_white``).

    ``min_short_side``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling, ``Image.draft``) as long as its short side stays at least this long. A
    2500 px MIMIC-CXR JPEG then decodes several times faster for a 224 px model input.
    """
    return on_white(read_picture(path, min_short_side))


class Picture(NamedTuple):
    """An image file's pixels before they are laid on white: ``colour`` (H, W) grey or
    (H, W, 3) RGB in the stored dtype, ``alpha`` (H, W) uint8 (255 opaque) or None for a
    file without transparency, both turned upright; ``orientation``: the EXIF Orientation
    they were turned by (1: stored upright). The privacy writers need the parts: a change
    of the shown pixels goes back through the alpha and the turn (``stored_turn``)."""

    colour: np.ndarray
    alpha: np.ndarray | None
    orientation: int


#: EXIF Orientation (0x0112) -> the turn of a stored (H, W[, C]) array that shows it as
#: viewers do: the transposes of ``PIL.ImageOps.exif_transpose`` (2 mirrored, 3 upside
#: down, 4 mirrored upside down, 5 mirrored about the diagonal, 6 a camera held turned
#: right, 7 mirrored about the other diagonal, 8 turned left), as numpy index operations
#: so that the writers can undo them on any dtype (``stored_turn``).
EXIF_TURNS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, 1),
}
#: The turn that undoes each: a quarter turn right is undone by one left; the others
#: (mirrors, the half turn) undo themselves.
EXIF_UNDO = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
EXIF_ORIENTATION = 0x0112


def upright_turn(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` as stored in a file with EXIF Orientation ``orientation``, turned as
    viewers show it (an orientation outside 2-8 leaves it as it is, as they do)."""
    turn = EXIF_TURNS.get(int(orientation or 1))
    return arr if turn is None else np.ascontiguousarray(turn(arr))


def stored_turn(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``upright_turn`` undone: shown pixels put back as the file stores them."""
    return upright_turn(arr, EXIF_UNDO.get(int(orientation or 1), 1))


def exif_orientation(img) -> int:
    """The EXIF Orientation of an opened image, 1 without one. A camera stores its photo
    as the sensor read it and says in this tag how to turn it; every viewer turns it, and
    a fundus photo read as stored lay on its side."""
    value = img.getexif().get(EXIF_ORIENTATION, 1)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def on_white(picture: Picture) -> np.ndarray:
    """The picture laid on white where it is transparent, as viewers and
    ``slide_reader`` (glass) show it: ``(colour * a + 255 * (255 - a)) / 255`` rounded,
    a fully transparent pixel white whatever colour it stores. Reading the colour alone
    showed a transparent red pixel red."""
    colour, alpha = picture.colour, picture.alpha
    if alpha is None or (alpha == 255).all():
        return colour
    a = alpha.astype(np.float32)[..., None] if colour.ndim == 3 else alpha.astype(np.float32)
    laid = (colour.astype(np.float32) * a + np.float32(255.0) * (np.float32(255.0) - a)) \
        * np.float32(1.0 / 255.0)
    return np.clip(np.rint(laid), 0, 255).astype(np.uint8)


def read_picture(path: str, min_short_side: int | None = None) -> Picture:
    """An image file's colour, alpha and EXIF Orientation (``Picture``); ``min_short_side``
    as ``_read_pil_array``. Transparency is an alpha channel (LA, RGBA, PA) or a palette's
    or a grey or RGB PNG's transparent colour (its tRNS chunk, as Pillow's ``info``)."""
    with open(path, "rb") as handle:
        return _picture(handle, path, min_short_side)


def _picture(handle, path: str, min_short_side: int | None) -> Picture:
    """``read_picture`` of the open file ``handle``. Pillow is given the file, not its
    name: by name, it maps an uncompressed file into memory at the size it reports, which
    for a TIFF with an Orientation of a quarter turn is the turned size, and a grey or
    16-bit TIFF stored on its side read as scrambled rows (Pillow 13)."""
    from PIL import Image

    try:
        opened = Image.open(handle)
    except Image.UnidentifiedImageError as e:   # named by its path, as Pillow names a name
        raise Image.UnidentifiedImageError(f"cannot identify image file {path!r}") from e
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
        orientation = exif_orientation(img)
        img.load()
        # Pillow turns a TIFF upright as it loads it (and drops its tag): turned once more
        # it would lie on its other side
        turn = 1 if orientation != 1 and exif_orientation(img) == 1 else orientation
        mode = img.mode
        if img.format == "PNG" and _png_depth_and_colour(path) == (16, GREY_ALPHA):
            raise DecodeError(
                f"{path}: a 16-bit grey PNG with an alpha channel, of which Pillow reads only "
                "the upper 8 bits (a 12-bit radiograph would read nearly black): save it "
                "without the alpha channel, as a 16-bit grey PNG, which is read in full")
        keyed = "transparency" in img.info
        alpha = None
        if mode in ("LA", "La") or (mode in ("L", "1") and keyed):
            img = img.convert("LA")
            alpha = np.asarray(img.getchannel("A"))
            img = img.convert("L")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and keyed):
            img = img.convert("RGBA")
            alpha = np.asarray(img.getchannel("A"))
            img = img.convert("RGB")
        elif mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            img = img.convert("RGB")
        arr = np.asarray(img)
        if mode.startswith("I;16"):     # I;16B and I;16L too: native uint16
            arr = arr.astype(np.uint16, copy=False)
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ValueError(f"unexpected channel count {arr.shape[2]} (mode {mode})")
    return Picture(upright_turn(arr, turn),
                   None if alpha is None else upright_turn(alpha, turn), orientation)


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
    kind (``decode_errors.refuse_odd_slices``). The sizes of every slice were compared
    from their headers when the folder was opened (``SliceFolder``, ``series_files``);
    this catches what headers do not tell (a grey slice among colour ones, 8 bits among
    16) in the slices a read draws."""
    refuse_odd_slices(path, {
        name: slice_kind(*a.shape[:2], a.shape[2] if a.ndim == 3 else 1,
                         a.dtype if types else None)
        for name, a in slices.items()}, "slices read")


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
                cache[i] = (f[0], ds,
                            np.zeros(f.shape[1:], bool) if padded is None else padded[0])
            frames.append(cache[i][0])
        ref = cache[0][1] if 0 in cache else \
            dicom_pixels.read_dataset(self.files[0], header_only=True)
        _refuse_mixed_slices(self.path, {self.files[i]: cache[i][0] for i in cache},
                             types=False)
        padded = np.stack([cache[i][2] for i in indices])
        # the slices' own dtype, as DicomFile hands its frames on: ``to_unit`` reads 8-bit
        # colour by /255 under a value window, as it reads an 8-bit picture, and a series
        # cast to float32 was windowed instead (dark), unlike the same file read alone.
        # Slices of several dtypes (one rescaled, one not) meet as float32.
        if len({a.dtype for a in frames}) > 1:
            frames = [a.astype(np.float32) for a in frames]
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


#: (folder, modification time, number of files) of the slice folders found uniform in
#: this process: one small entry a folder, so a training run over every series of a large
#: archive opens each folder's headers once (a bounded cache keyed on the file names
#: evicted, and opened every header again at each read, once it held more series than
#: its size).
_UNIFORM_SLICE_FOLDERS: set = set()


def _refuse_odd_slice_sizes(folder: str, files: tuple[str, ...], stamp) -> None:
    """Refuses a slice folder whose images differ in size (as shown: turned by their EXIF
    Orientation), read from their headers without decoding, naming the odd files. A read
    compares only the slices it draws, so one odd slice (a localizer, a thumbnail) failed
    only the training draws that met it, at random, and never the evaluation's. A folder
    found uniform is not looked at again while its modification time (``stamp``: a file
    added, removed or renamed) and its number of files stay; a slice rewritten in place
    with another size is still refused when a read draws it."""
    key = (folder, stamp, len(files))
    if stamp is not None and key in _UNIFORM_SLICE_FOLDERS:
        return
    from PIL import Image

    sizes = {}
    for f in files:
        try:
            with Image.open(f) as img:
                w, h = img.size
                if img.format == "TIFF":    # as stored: Pillow may give a TIFF's turned size
                    w, h = (int(img.tag_v2.get(tag, n)) for tag, n in ((256, w), (257, h)))
                # a PNG's EXIF may follow its pixels, which Pillow would decode to find it
                shown = 1 if img.format == "PNG" and "exif" not in img.info \
                    else exif_orientation(img)
        except Exception as e:  # noqa: BLE001 - re-raised naming the file
            raise DecodeError(f"{f}: unreadable slice image header in {folder}: "
                              f"{type(e).__name__}: {e}") from e
        sizes[f] = slice_kind(*((w, h) if shown in (5, 6, 7, 8) else (h, w)))
    refuse_odd_slices(folder, sizes)
    _UNIFORM_SLICE_FOLDERS.add(key)


class SliceFolder(Volume):
    """A folder of 2-D slice images in natural file-name order."""

    kind = "slice folder"

    def __init__(self, path: str, names: list[str], min_short_side: int | None = None):
        super().__init__(path)
        self.min_short_side = min_short_side
        self.files = [os.path.join(path, n) for n in sorted(names, key=natural_key)]
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            stamp = None
        _refuse_odd_slice_sizes(path, tuple(self.files), stamp)

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
