"""NIH ChestX-ray14 (112,120 frontal chest X-rays of 30,805 patients).

Get it: https://nihcc.app.box.com/v/ChestXray-NIHCC (or the Kaggle mirror
"nih-chest-xrays/data"); no credential needed.

Layout expected under ``root``::

    Data_Entry_2017_v2020.csv   (or Data_Entry_2017.csv; the v2020 file wins if both exist)
    images/00000001_000.png     (the Box tarballs images_001..012.tar.gz extract here)
  or
    images_001/images/00000001_000.png ... images_012/images/...   (Kaggle layout)

Metadata columns used: "Image Index", "Patient ID", "Follow-up #", "View Position".

Mapping: patient = Patient ID (also the first 8 digits of the file name; a row where
they disagree is skipped), study = order = Follow-up # (0, 1, 2, ... in time order),
view = View Position (PA/AP), modality xray. Without the images
(``verify_files=False``) a file not found on disk is placed at ``images/<name>``.

Labels (when the metadata has "Finding Labels"): the source's '|'-separated findings,
written as the text itself ("Finding Labels") and as one 0/1 column per finding
("No Finding" and the 14 findings, spelled as the source spells them). A finding
outside these 15, an empty cell, or "No Finding" together with a finding is an
``UnknownLabelError`` naming the file and line.
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, find_one, label_error, read_csv,
                                           require_root, walk_files)

NAME = "nih_chestxray14"
MODALITY = "xray"
NO_FINDING = "No Finding"
FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
            "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening",
            "Pneumonia", "Pneumothorax")
FINDING_LABELS = "Finding Labels"
LABEL_COLUMNS = (FINDING_LABELS, NO_FINDING) + FINDINGS


def finding_labels(text: str, root: str, source: str) -> dict[str, str]:
    """The label columns of one "Finding Labels" cell (UnknownLabelError if malformed)."""
    expected = f"'{NO_FINDING}' or '|'-separated findings among {', '.join(FINDINGS)}"
    found = [f.strip() for f in text.strip().split("|")]
    known = set(FINDINGS) | {NO_FINDING}
    if not text.strip() or any(f not in known for f in found) or (
            NO_FINDING in found and len(set(found)) > 1):
        raise label_error(root, source, FINDING_LABELS, text, expected)
    out = {FINDING_LABELS: "|".join(found), NO_FINDING: str(int(NO_FINDING in found))}
    out.update({f: str(int(f in found)) for f in FINDINGS})
    return out


def _image_index(root: str) -> dict[str, str]:
    found = {}
    for entry in sorted(os.listdir(root)):
        if entry.startswith("images") and os.path.isdir(os.path.join(root, entry)):
            for folder, name in walk_files(os.path.join(root, entry)):
                found.setdefault(name, os.path.join(folder, name))
    return found


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    meta = find_one(root, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"))
    c.notes.append(f"metadata: {meta}")
    index = _image_index(root)
    for line, rec in read_csv(meta, ("Image Index", "Patient ID", "Follow-up #", "View Position")):
        src = f"{os.path.basename(meta)}:{line}"
        name = rec["Image Index"].strip()
        labels = None
        if FINDING_LABELS in rec:
            c.label_columns = LABEL_COLUMNS
            labels = finding_labels(rec[FINDING_LABELS] or "", root, src)
        try:
            pid = int(rec["Patient ID"])
            follow = int(rec["Follow-up #"])
        except ValueError:
            c.skip(f"{src} ({rec['Patient ID']!r}, {rec['Follow-up #']!r})",
                   "non-integer Patient ID or Follow-up #")
            continue
        stem = os.path.splitext(name)[0]
        if not stem[:8].isdigit() or int(stem[:8]) != pid:
            c.skip(f"{src} ({name!r}, patient {pid})", "image name does not start with the Patient ID")
            continue
        path = index.get(name, c.path("images", name))
        c.add(local_id=stem, patient_id=str(pid), study_id=str(follow), order=str(follow),
              view=rec["View Position"].strip(), path=path, source=src, labels=labels)
    return c.result()
