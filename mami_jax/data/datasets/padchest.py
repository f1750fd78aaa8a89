"""PadChest (Hospital San Juan, Alicante; 160,868 chest X-rays of 67,625 patients).

Get it: https://bimcv.cipf.es/bimcv-projects/padchest/ (free registration).
Images are 16-bit PNGs.

Layout expected under ``root``::

    PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   (or .csv.gz; any PADCHEST_*.csv[.gz])
    0/<ImageID>.png  1/...  ...  54/...     (one folder per downloaded zip, "ImageDir")

Columns used: ImageID, ImageDir, PatientID, StudyID, StudyDate_DICOM (or StudyDate),
Projection. An image not in its ImageDir folder is looked up by name anywhere under
``root`` (some mirrors flatten the folders): the files are listed once, folder by folder,
before the metadata is read, and their existence is then checked as every builder's is
(``Collector.result``: many at a time on a slow file system). Each row's file was asked
about alone while the metadata was read, 160,000 questions one after another, which on a
mounted bucket took hours before the parallel check began.

Mapping: patient = PatientID, study = StudyID, order = StudyDate (YYYYMMDD),
view = Projection (PA, L, AP, AP_horizontal, ...), modality xray. A row without a
patient, study or date is skipped.
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, find_one,
                                           read_csv, read_header, require_root, walk_files)

NAME = "padchest"
MODALITY = "xray"


def _date_column(meta: str) -> str:
    header = read_header(meta)
    for col in ("StudyDate_DICOM", "StudyDate"):
        if col in header:
            return col
    raise DatasetLayoutError(f"{meta}: no StudyDate_DICOM or StudyDate column; header is {header}")


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    meta = find_one(root, ("PADCHEST_",), prefix=True, suffixes=(".csv", ".csv.gz"))
    c.notes.append(f"metadata: {meta}")
    date_col = _date_column(meta)
    listed: set[str] = set()
    by_name: dict[str, str] = {}
    if verify_files:
        for d, n in walk_files(c.root):
            listed.add(os.path.join(d, n))
            if n.lower().endswith(".png"):
                by_name.setdefault(n, os.path.join(d, n))
    for line, rec in read_csv(meta, ("ImageID", "PatientID", "StudyID", "Projection", date_col)):
        src = f"{os.path.basename(meta)}:{line}"
        image, patient, study = rec["ImageID"].strip(), rec["PatientID"].strip(), rec["StudyID"].strip()
        date = rec[date_col].strip()
        if not (image and patient and study):
            c.skip(src, "empty ImageID, PatientID or StudyID")
            continue
        if not date.isdigit():
            c.skip(f"{src} ({date!r})", "no usable study date")
            continue
        folder = rec.get("ImageDir", "").strip()
        path = c.inside(c.path(folder, image) if folder else c.path(image), src)
        if verify_files and path not in listed:     # elsewhere, or missing (then counted)
            path = by_name.get(image, path)
        c.add(local_id=os.path.splitext(image)[0], patient_id=patient, study_id=study,
              order=date, view=rec["Projection"].strip(), path=path, source=src)
    return c.result()
