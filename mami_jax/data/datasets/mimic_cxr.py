"""MIMIC-CXR-JPG (377,110 chest X-rays of 65,379 patients, Beth Israel Deaconess).

Get it: https://physionet.org/content/mimic-cxr-jpg/ (credentialed PhysioNet access
and a signed data use agreement).

Layout expected under ``root`` (the version folder, e.g. mimic-cxr-jpg/2.0.0)::

    mimic-cxr-2.0.0-metadata.csv.gz   (or .csv; any mimic-cxr-*-metadata.csv[.gz])
    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

The image path follows from the metadata: files/p<first 2 digits of subject>/
p<subject_id>/s<study_id>/<dicom_id>.jpg. Columns used: dicom_id, subject_id,
study_id, ViewPosition, StudyDate, StudyTime.

Mapping: patient = subject_id, study = study_id, order = StudyDate and StudyTime as
YYYYMMDDHHMMSS (dates are shifted per patient, consistently, so the order within
a patient is real), view = ViewPosition, modality xray. A row without StudyDate is
skipped (its visit cannot be placed in time).
"""

from __future__ import annotations

import math
import os
import re

from mami_jax.data.datasets.common import BuildResult, Collector, DatasetLayoutError, read_csv, require_root

NAME = "mimic_cxr"
MODALITY = "xray"
_META = re.compile(r"^mimic-cxr-.*metadata\.csv(\.gz)?$")


def study_order(date: str, time: str) -> str:
    """YYYYMMDD + HHMMSS; StudyTime may be "13014.531" (leading zero lost by CSV tools),
    StudyDate "21520708.0" (a float column saved again by pandas); a time that is empty or
    "nan" counts as midnight, the date still orders the study."""
    t = float(time) if time.strip() else 0.0
    d = float(date)
    if not math.isfinite(d) or d != int(d):
        raise ValueError(f"StudyDate {date!r} is no YYYYMMDD")
    return f"{int(d):08d}{int(t) if math.isfinite(t) else 0:06d}"


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    metas = sorted(n for n in os.listdir(root) if _META.match(n))
    if not metas:
        raise DatasetLayoutError(f"{root}: no mimic-cxr-*-metadata.csv[.gz] found")
    meta = os.path.join(root, metas[-1])  # the newest version if several
    c.notes.append(f"metadata: {meta}")
    cols = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
    for line, rec in read_csv(meta, cols):
        src = f"{os.path.basename(meta)}:{line}"
        dicom, subject, study = rec["dicom_id"].strip(), rec["subject_id"].strip(), rec["study_id"].strip()
        if not (dicom and subject.isdigit() and study.isdigit()):
            c.skip(f"{src} ({dicom!r}, {subject!r}, {study!r})",
                   "missing or non-numeric dicom_id/subject_id/study_id")
            continue
        try:
            order = study_order(rec["StudyDate"], rec["StudyTime"])
        except ValueError:
            c.skip(f"{src} ({rec['StudyDate']!r}, {rec['StudyTime']!r})", "no usable StudyDate/StudyTime")
            continue
        path = c.path("files", f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg")
        c.add(local_id=dicom, patient_id=subject, study_id=study, order=order,
              view=rec["ViewPosition"].strip(), path=path, source=src)
    return c.result()
