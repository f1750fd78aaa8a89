"""DeepLesion (NIH Clinical Center; 32,120 CT slabs of 4,427 patients).

Get it: https://nihcc.app.box.com/v/DeepLesion (no credential; Images_png_01..56.zip).
Slices are 16-bit PNGs holding HU + 32768; each series folder holds the slices
around annotated lesions.

Layout expected under ``root``::

    DL_info.csv                         (File_name, Patient_index, Study_index, Series_ID, ...)
    Images_png/000001_01_01/103.png ... (folder <patient:6>_<study:2>_<series:2>)

One row per series folder (a folder of slice images, read in slice-number order).
Series named in DL_info.csv ("000001_01_01_109.png" -> series 000001_01_01) but
absent on disk are reported missing (``verify_files=True``) or added at
Images_png/<series> (without verification).

Mapping: patient = the 6-digit patient index, study = the 2-digit study index,
order = study index (DeepLesion numbers a patient's studies from 1 in time order;
it publishes no dates), view = series id, modality ct.
"""

from __future__ import annotations

import os
import re

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, is_image_name,
                                           read_csv, require_root)

NAME = "deeplesion"
MODALITY = "ct"
_SERIES = re.compile(r"^(\d{6})_(\d{2})_(\d{2})$")
_FILE = re.compile(r"^(\d{6}_\d{2}_\d{2})_\d+\.png$")


def _add(c: Collector, name: str, path: str, src: str) -> None:
    m = _SERIES.match(name)
    patient, study, series = m.groups()
    c.add(local_id=name, patient_id=patient, study_id=study, order=str(int(study)), view=series,
          path=path, source=src, folder=True)


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    images = os.path.join(root, "Images_png")
    seen = set()
    if os.path.isdir(images):
        for name in sorted(os.listdir(images)):
            path = os.path.join(images, name)
            if name.startswith(".") or not os.path.isdir(path):
                continue
            src = os.path.relpath(path, root)
            seen.add(name)
            if not _SERIES.match(name):
                c.skip(src, "folder name is not <patient:6>_<study:2>_<series:2>")
                continue
            if not any(is_image_name(n) for n in os.listdir(path)):
                c.skip(src, "series folder holds no slice images")
                continue
            _add(c, name, path, src)
    meta = os.path.join(root, "DL_info.csv")
    if os.path.isfile(meta):
        c.notes.append(f"metadata: {meta}")
        for line, rec in read_csv(meta, ("File_name",)):
            m = _FILE.match(rec["File_name"].strip())
            src = f"DL_info.csv:{line}"
            if not m:
                c.skip(f"{src} ({rec['File_name']!r})", "File_name is not <patient>_<study>_<series>_<slice>.png")
                continue
            if m.group(1) in seen:
                continue
            seen.add(m.group(1))
            _add(c, m.group(1), c.path("Images_png", m.group(1)), src)
    if c.found_nothing():
        raise DatasetLayoutError(f"{root}: no Images_png/ series folders and no DL_info.csv")
    return c.result()
