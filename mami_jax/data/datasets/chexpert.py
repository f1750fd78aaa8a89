"""CheXpert (Stanford; 224,316 chest X-rays of 65,240 patients).

Get it: https://stanfordmlgroup.github.io/competitions/chexpert/ (registration;
"CheXpert-v1.0" or the downsampled "CheXpert-v1.0-small").

Layout expected under ``root`` (the folder holding train.csv)::

    train.csv, valid.csv, [test.csv]
    train/patient00001/study1/view1_frontal.jpg
    valid/patient64541/study1/view1_frontal.jpg

The CSV "Path" column reads "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg":
leading folders before train/valid/test are dropped and the rest joined to ``root``.
Columns used: "Path", "Frontal/Lateral", "AP/PA".

Mapping: patient = patientNNNNN, study = studyN, order = N (CheXpert numbers a
patient's studies in time order), view = AP/PA of a frontal image, "lateral"
otherwise, modality xray. Train, valid and test hold different patients.
"""

from __future__ import annotations

import os
import re

from mami_jax.data.datasets.common import BuildResult, Collector, DatasetLayoutError, read_csv, require_root

NAME = "chexpert"
MODALITY = "xray"
_SPLITS = ("train", "valid", "test")
_PATIENT = re.compile(r"^patient\d+$")
_STUDY = re.compile(r"^study(\d+)$")


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    metas = [os.path.join(root, f"{s}.csv") for s in _SPLITS if os.path.isfile(os.path.join(root, f"{s}.csv"))]
    if not metas:
        raise DatasetLayoutError(f"{root}: none of train.csv, valid.csv, test.csv found")
    for meta in metas:
        c.notes.append(f"metadata: {meta}")
        for line, rec in read_csv(meta, ("Path",)):
            src = f"{os.path.basename(meta)}:{line}"
            parts = rec["Path"].strip().replace("\\", "/").split("/")
            starts = [i for i, p in enumerate(parts) if p in _SPLITS]
            if not starts or len(parts) - starts[0] != 4:
                c.skip(f"{src} ({rec['Path']!r})", "Path is not <split>/patientN/studyN/<file>")
                continue
            split, patient, study, fname = parts[starts[0]:]
            m = _STUDY.match(study)
            if not _PATIENT.match(patient) or not m:
                c.skip(f"{src} ({rec['Path']!r})", "Path has no patientN/studyN folders")
                continue
            frontal = rec.get("Frontal/Lateral", "").strip().lower()
            if frontal == "lateral":
                view = "lateral"
            else:
                view = rec.get("AP/PA", "").strip() or ("frontal" if frontal == "frontal" else "")
            c.add(local_id=f"{patient}/{study}/{os.path.splitext(fname)[0]}", patient_id=patient,
                  study_id=study, order=m.group(1), view=view,
                  path=c.path(split, patient, study, fname), source=src)
    return c.result()
