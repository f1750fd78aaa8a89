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

Labels (from a CSV that has the 14 observation columns, "No Finding" to "Support
Devices"; a CSV with only some of them is an error naming it): one column per
observation, spelled as in the CSV. The source codes each as 1 (positive), 0
(negative), -1 (uncertain) or blank (not mentioned in the report; valid.csv has no
blanks nor -1). Written: blank -> 0 (the usual reading: an observation the report does
not mention is taken as absent), 1 -> 1, 0 -> 0, and -1 by the ``uncertain`` policy:
``ones`` (default; -1 -> 1, "U-Ones" of the CheXpert paper), ``zeros`` (-1 -> 0) or
``keep`` (-1 stays -1, a third class the history config must then list). Values may be
written as floats ("1.0"); any other value is an ``UnknownLabelError`` naming the file
and line.
"""

from __future__ import annotations

import os
import re

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, label_error,
                                           read_csv, require_root)

NAME = "chexpert"
MODALITY = "xray"
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity",
                "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
UNCERTAIN_POLICIES = {"ones": "1", "zeros": "0", "keep": "-1"}
_CODES = {1.0: "1", 0.0: "0"}
_SPLITS = ("train", "valid", "test")
_PATIENT = re.compile(r"^patient\d+$")
_STUDY = re.compile(r"^study(\d+)$")


def observation_labels(rec: dict, uncertain: str, root: str, source: str) -> dict[str, str]:
    """The 14 observation columns of one CSV row under the ``uncertain`` policy."""
    out = {}
    for column in OBSERVATIONS:
        text = (rec.get(column) or "").strip()
        try:
            code = float(text) if text else 0.0
        except ValueError:
            code = None
        if code == -1.0:
            out[column] = UNCERTAIN_POLICIES[uncertain]
        elif code in _CODES:
            out[column] = _CODES[code]
        else:
            raise label_error(root, source, column, text,
                              "1, 0, -1 (uncertain) or blank (not mentioned)")
    return out


def build(root: str, verify_files: bool = True, uncertain: str = "ones") -> BuildResult:
    """``uncertain``: how -1 (uncertain) observations are written (see the module doc)."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain={uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}")
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    metas = [os.path.join(root, f"{s}.csv") for s in _SPLITS if os.path.isfile(os.path.join(root, f"{s}.csv"))]
    if not metas:
        raise DatasetLayoutError(f"{root}: none of train.csv, valid.csv, test.csv found")
    for meta in metas:
        c.notes.append(f"metadata: {meta}")
        labelled = None
        for line, rec in read_csv(meta, ("Path",)):
            src = f"{os.path.basename(meta)}:{line}"
            if labelled is None:
                present = [o for o in OBSERVATIONS if o in rec]
                if present and len(present) < len(OBSERVATIONS):
                    raise DatasetLayoutError(
                        f"{meta}: has some observation columns but not "
                        f"{[o for o in OBSERVATIONS if o not in rec]}")
                labelled = bool(present)
                if labelled:
                    c.label_columns = OBSERVATIONS
                    c.notes.append(f"labels: {os.path.basename(meta)}, uncertain (-1) -> "
                                   f"{UNCERTAIN_POLICIES[uncertain]} ({uncertain})")
            labels = observation_labels(rec, uncertain, root, src) if labelled else None
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
                  path=c.path(split, patient, study, fname), source=src, labels=labels)
    return c.result()
