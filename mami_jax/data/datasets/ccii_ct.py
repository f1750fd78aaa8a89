"""CC-CCII chest CT (China Consortium of Chest CT Image Investigation; ~4,150 patients).

Get it: http://ncov-ai.big.ac.cn/download (China National Center for Bioinformation;
registration). Slices are PNG/JPEG images of lung-windowed CT.

Layout expected under ``root``::

    NCP/<patient_id>/<scan_id>/0000.png ...     (novel coronavirus pneumonia)
    CP/<patient_id>/<scan_id>/...               (common pneumonia)
    Normal/<patient_id>/<scan_id>/...
    [unzip_filenames.csv]   (columns zip_file, label, patient_id, scan_id, n_slice)

One row per scan folder (a folder of slice images, read in file-name order).
Scans listed in unzip_filenames.csv but absent on disk are reported missing
(``verify_files=True``) or added at <label>/<patient>/<scan> (without verification).

Mapping: patient = "<class>-<patient_id>" (the classes are released as separate
archives with their own patient numbering, so a bare number could join two people),
study = scan_id, order = scan_id (assumed increasing in time; the dataset documents no
dates), modality ct.

Labels: ``label``, the scan's class, NCP, CP or Normal (its class folder, or the CSV's
"label" column for a scan listed only there). A CSV label outside these three is an
``UnknownLabelError`` naming the file and line.
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, is_image_name,
                                           label_error, read_csv, require_root)

NAME = "ccii_ct"
MODALITY = "ct"
CLASSES = ("NCP", "CP", "Normal")
LABEL = "label"


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    c.label_columns = (LABEL,)
    seen = set()
    for name in sorted(os.listdir(root)):
        if (os.path.isdir(os.path.join(root, name)) and name not in CLASSES
                and not name.startswith(".")):
            c.skip(name + "/", f"not a class folder ({', '.join(CLASSES)}; names are "
                               "case-sensitive)")
    for cls in CLASSES:
        cls_dir = os.path.join(root, cls)
        if not os.path.isdir(cls_dir):
            continue
        for patient in sorted(os.listdir(cls_dir)):
            pdir = os.path.join(cls_dir, patient)
            if patient.startswith(".") or not os.path.isdir(pdir):
                continue
            for scan in sorted(os.listdir(pdir)):
                sdir = os.path.join(pdir, scan)
                if scan.startswith(".") or not os.path.isdir(sdir):
                    continue
                src = os.path.relpath(sdir, root)
                seen.add((cls, patient, scan))
                if not any(is_image_name(n) for n in os.listdir(sdir)):
                    c.skip(src, "scan folder holds no slice images")
                    continue
                c.add(local_id=f"{cls}/{patient}/{scan}", patient_id=f"{cls}-{patient}",
                      study_id=scan, order=scan, view="", path=sdir, source=src, folder=True,
                      labels={LABEL: cls})
    meta = os.path.join(root, "unzip_filenames.csv")
    if os.path.isfile(meta):
        c.notes.append(f"metadata: {meta}")
        for line, rec in read_csv(meta, ("label", "patient_id", "scan_id")):
            cls, patient, scan = rec["label"].strip(), rec["patient_id"].strip(), rec["scan_id"].strip()
            if (cls, patient, scan) in seen:
                continue
            src = f"unzip_filenames.csv:{line}"
            if cls not in CLASSES:
                raise label_error(root, src, LABEL, cls, " or ".join(CLASSES))
            if not patient or not scan:
                c.skip(f"{src} ({patient!r}, {scan!r})", "empty patient_id or scan_id")
                continue
            c.add(local_id=f"{cls}/{patient}/{scan}", patient_id=f"{cls}-{patient}", study_id=scan,
                  order=scan, view="", path=c.path(cls, patient, scan), source=src, folder=True,
                  labels={LABEL: cls})
    if c.found_nothing():
        raise DatasetLayoutError(f"{root}: no NCP/, CP/ or Normal/ scan folders and no unzip_filenames.csv")
    return c.result()
