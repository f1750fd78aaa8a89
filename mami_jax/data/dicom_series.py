"""Which files of a folder make one DICOM series, and in what order its slices lie.

Order: by position along the slice normal (ImagePositionPatient projected on the normal
of ImageOrientationPatient), else InstanceNumber, else file name in natural order. A
folder that is not one stack of slices is refused, naming what it holds, because read as
one volume it would give slices that alternate between images of different kinds:

- files of several series (SeriesInstanceUID: a study's scout and axial series, a scan
  before and after contrast, copied into one folder);
- images in more than one orientation (ImageOrientationPatient: a 3-plane localizer saved
  under one SeriesInstanceUID, a reformatted image among axial slices), whose positions
  along each file's own normal put slices of other planes between them;
- several images at one slice position (the echoes of a multi-echo MR series, the time
  points of a perfusion or cine series);
- slices of different sizes (Rows, Columns, SamplesPerPixel: a localizer or a secondary
  capture among them), told from the headers when the folder is opened, so a read fails
  whichever slices it draws rather than only the training draws that meet the odd one;
- a DICOM file without an image (a structured report, a presentation state).

An enhanced multi-frame file's frames are refused by the same rules
(``dicom_pixels.frame_order`` calls ``refuse_several_orientations`` and
``refuse_shared_positions``).

Files that are not DICOM (a text note, Windows' Thumbs.db: no 128-byte preamble and no
image in what parses as a header) are ignored, as a folder of slice images ignores its
files that are not images; a slice written without the preamble is still read.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mami_jax.data.decode_errors import DecodeError, refuse_odd_slices, slice_kind
from mami_jax.data.natural_order import examples, natural_key

#: Two ImageOrientationPatient whose direction cosines differ by at most this are one
#: orientation: exporters write the cosines to a varying number of decimals, and their
#: last places are rounding noise, where another plane differs by far more (a tilted
#: gantry's axial series shares one orientation; a localizer's planes differ by 1).
ORIENTATION_TOLERANCE = 1e-3

#: What to do with a series of several images at one position (``refuse_shared_positions``).
SPLIT_ECHOES = "put each echo or time point in its own folder"


def position_key(position) -> tuple[float, ...]:
    """An ImagePositionPatient rounded to 1/1000 mm: images at one key share a position."""
    return tuple(round(float(v), 3) for v in position)


def refuse_shared_positions(where: str, at_position: dict, kind: str = "images",
                            remedy: str = SPLIT_ECHOES) -> None:
    """Refuses a stack where several of its ``kind`` share a slice position
    (``at_position``: ``position_key`` -> the names of the images there): the echoes or
    time points of one series, which read as one volume would alternate between their
    contrasts. The message names how many positions are shared, the first of them (by
    the names held there) and its images."""
    shared = {p: names for p, names in at_position.items() if len(names) > 1}
    if not shared:
        return
    position, names = min(shared.items(), key=lambda kv: min(natural_key(f) for f in kv[1]))
    raise DecodeError(
        f"{where}: {len(shared)} slice position(s) hold several {kind} (at "
        f"{list(position)}: {examples(names)}), the echoes or time points of one "
        f"series: {remedy}")


def orientation_groups(orientations: dict) -> list[tuple[tuple[float, ...], list[str]]]:
    """Names grouped by their ImageOrientationPatient (``orientations``: name -> its six
    direction cosines), each group's cosines those of its first name, two orientations
    one group within ``ORIENTATION_TOLERANCE``; the largest group first."""
    groups: list[tuple[np.ndarray, list[str]]] = []
    for name, cosines in orientations.items():
        vector = np.asarray(cosines, float)
        for first, names in groups:
            if np.abs(first - vector).max() <= ORIENTATION_TOLERANCE:
                names.append(name)
                break
        else:
            groups.append((vector, [name]))
    groups.sort(key=lambda g: (-len(g[1]), min(natural_key(n) for n in g[1])))
    return [(tuple(round(float(v), 3) + 0.0 for v in first), names) for first, names in groups]


def refuse_several_orientations(where: str, orientations: dict, kind: str = "images",
                                remedy: str = "move each orientation's images into a folder "
                                              "of their own") -> None:
    """Refuses a stack whose ``kind`` lie in more than one orientation (``orientations``:
    name -> ImageOrientationPatient), listing each orientation's count and first names.
    Ordered by their positions along each image's own normal, the planes of a 3-plane
    localizer (or one reformatted image among axial slices) read as one volume whose
    slices jump between planes."""
    groups = orientation_groups(orientations)
    if len(groups) < 2:
        return
    found = "; ".join(f"{list(cosines)}: {len(names)} {kind[:-1]}(s), {examples(names)}"
                      for cosines, names in groups)
    raise DecodeError(
        f"{where}: its {kind} lie in {len(groups)} orientations (ImageOrientationPatient "
        f"{found}); a volume is one stack of parallel slices: {remedy}")


def nested_series_hint(folder: str, looked_at: int = 1000) -> str:
    """For a folder without slices of its own: the sub-folders it holds and the first one
    that holds files, so that the message shows which folder a row should name (a study
    exported as STUDY/SERIES/files, or a DICOMDIR's PT000000/ST000000/SE000000); "" when
    it holds no folders."""
    subfolders = sorted((n for n in os.listdir(folder)
                         if not n.startswith(".") and os.path.isdir(os.path.join(folder, n))),
                        key=natural_key)
    if not subfolders:
        return ""
    index = " and a DICOMDIR (the index of the series in them)" if os.path.isfile(
        os.path.join(folder, "DICOMDIR")) else ""
    hint = (f"; it holds {len(subfolders)} folder(s) ({examples(subfolders)}){index}: a "
            "manifest row names the folder of one series")
    for n, (where, dirs, files) in enumerate(os.walk(folder)):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        if where != folder and any(not f.startswith(".") for f in files):
            return f"{hint}, such as {where}"
        if n >= looked_at:
            break
    return hint


@functools.lru_cache(maxsize=256)
def series_files(folder: str, stamp: str) -> tuple[str, ...]:
    """Paths of the files of the DICOM series folder ``folder`` in anatomical order; a
    DecodeError names what is wrong with it. Cached per ``stamp``, the sizes and
    modification times of the folder's files (``image_signature.path_signature``): a
    slice whose header is rewritten in place changes no folder time, and keying by the
    folder's alone kept the old order for the rest of the process (a notebook's)."""
    del stamp  # part of the cache key only
    import pydicom

    names = [n for n in os.listdir(folder)
             if not n.startswith(".") and n.upper() != "DICOMDIR"
             and os.path.isfile(os.path.join(folder, n))]
    keyed, series, at_position, oriented, sizes, others = [], {}, {}, {}, {}, []
    for n in names:
        p = os.path.join(folder, n)
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise DecodeError(f"{p}: unreadable DICOM header in series {folder}: {e}") from e
        if "Rows" not in ds:
            if ds.preamble is None:  # not DICOM: a note or Thumbs.db parsed as garbage
                others.append(n)
                continue
            raise DecodeError(f"{p}: a DICOM file without an image (no Rows) in series "
                              f"folder {folder}: a series folder holds only its slices")
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or "").strip(), []).append(n)
        sizes[p] = slice_kind(ds.get("Rows"), ds.get("Columns"),
                              int(ds.get("SamplesPerPixel", 1) or 1))
        pos = ds.get("ImagePositionPatient", None)
        ori = ds.get("ImageOrientationPatient", None)
        if pos is not None and ori is not None and len(pos) == 3 and len(ori) == 6:
            normal = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
            key = (0, float(np.dot(normal, np.asarray(pos, float))), natural_key(n))
            at_position.setdefault(position_key(pos), []).append(n)
            oriented[n] = [float(v) for v in ori]
        elif ds.get("InstanceNumber", None) not in (None, ""):
            key = (1, float(ds.InstanceNumber), natural_key(n))
        else:
            key = (2, 0.0, natural_key(n))
        keyed.append((key, p))
    if not keyed:
        held = f" ({len(others)} other file(s): {examples(others)})" if others else ""
        raise DecodeError(f"{folder}: folder holds no slice images or DICOM files{held}"
                          f"{nested_series_hint(folder)}")
    if len(series) > 1:
        found = "; ".join(
            f"{uid or 'no SeriesInstanceUID'}: {len(files)} file(s), e.g. "
            f"{min(files, key=natural_key)}"
            for uid, files in sorted(series.items(), key=lambda kv: (-len(kv[1]), kv[0])))
        raise DecodeError(f"{folder}: holds {len(series)} DICOM series ({found}); a manifest "
                          "row's folder must hold one series: move each into its own folder")
    refuse_several_orientations(folder, oriented)
    refuse_shared_positions(folder, at_position)
    refuse_odd_slices(folder, sizes)
    keyed.sort(key=lambda t: t[0])
    return tuple(p for _, p in keyed)
