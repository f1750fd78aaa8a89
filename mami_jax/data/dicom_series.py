"""Which files of a folder make one DICOM series, and in what order its slices lie.

Order: by position along the slice normal (ImagePositionPatient projected on the normal
of ImageOrientationPatient), else InstanceNumber, else file name in natural order. A
folder that is not one stack of slices is refused, naming what it holds, because read as
one volume it would give slices that alternate between images of different kinds:

- files of several series (SeriesInstanceUID: a study's scout and axial series, a scan
  before and after contrast, copied into one folder);
- several images at one slice position (the echoes of a multi-echo MR series, the time
  points of a perfusion or cine series);
- a DICOM file without an image (a structured report, a presentation state).

Files that are not DICOM (a text note, Windows' Thumbs.db: no 128-byte preamble and no
image in what parses as a header) are ignored, as a folder of slice images ignores its
files that are not images; a slice written without the preamble is still read.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mami_jax.data.decode_errors import DecodeError
from mami_jax.data.natural_order import examples, natural_key


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
    keyed, series, at_position, others = [], {}, {}, []
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
        pos = ds.get("ImagePositionPatient", None)
        ori = ds.get("ImageOrientationPatient", None)
        if pos is not None and ori is not None and len(pos) == 3 and len(ori) == 6:
            normal = np.cross(np.asarray(ori[:3], float), np.asarray(ori[3:], float))
            key = (0, float(np.dot(normal, np.asarray(pos, float))), natural_key(n))
            at_position.setdefault(tuple(round(float(v), 3) for v in pos), []).append(n)
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
    shared = {p: files for p, files in at_position.items() if len(files) > 1}
    if shared:
        position, files = min(shared.items(), key=lambda kv: min(natural_key(f) for f in kv[1]))
        raise DecodeError(
            f"{folder}: {len(shared)} slice position(s) hold several images (at "
            f"{list(position)}: {examples(files)}), the echoes or time points of one "
            "series: put each echo or time point in its own folder")
    keyed.sort(key=lambda t: t[0])
    return tuple(p for _, p in keyed)
