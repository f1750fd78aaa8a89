"""EyePACS (Kaggle Diabetic Retinopathy Detection; 88,702 fundus photos, 44,351 patients).

Get it: https://www.kaggle.com/c/diabetic-retinopathy-detection/data (Kaggle account;
the multi-part zips extract to train/ and test/).

Layout expected under ``root``::

    train/10_left.jpeg, train/10_right.jpeg, ...
    test/1_left.jpeg, ...
    [trainLabels.csv]              (column "image": 10_left, ...)
    [retinopathy_solution.csv]     (test labels, column "image")

Images are found by listing train/ and test/ (any depth, .jpeg/.jpg/.png/.tif).
Names listed in the label CSVs but absent on disk are reported missing
(``verify_files=True``) or, without verification, added at
``<part>/<name>.jpeg`` so splits can be planned from the CSVs alone.

Mapping (see ``eyes.py``): patient = "<part>-<number>", study = view = eye
(left/right), order 0, modality fundus.

Labels (from the label CSVs' "level" column, for the images they list): ``level``, the
diabetic retinopathy grade of the eye, 0 (none), 1 (mild), 2 (moderate), 3 (severe),
4 (proliferative). Any other value, or an image listed twice with two grades, is an
``UnknownLabelError`` naming the file and line. Images without a CSV entry (e.g. test/
without retinopathy_solution.csv) get no label.
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, UnknownLabelError,
                                           NOT_AN_IMAGE, is_image_name, label_error, read_csv, require_root,
                                           walk_files)
from mami_jax.data.datasets.eyes import add_eye_image, rel

NAME = "eyepacs"
MODALITY = "fundus"
_PARTS = ("train", "test")
_LABELS = {"train": "trainLabels.csv", "test": "retinopathy_solution.csv"}
LEVEL = "level"
LEVELS = ("0", "1", "2", "3", "4")


def _read_label_csv(root: str, csv_name: str) -> list[tuple[str, str, str | None]]:
    """(image stem, source, grade or None when the CSV has no "level" column) per row;
    a grade outside 0-4 or a stem listed with two grades is an UnknownLabelError."""
    meta = os.path.join(root, csv_name)
    rows, grades = [], {}
    for line, rec in read_csv(meta, ("image",)):
        stem, src = rec["image"].strip(), f"{csv_name}:{line}"
        level = None
        if LEVEL in rec:
            level = (rec[LEVEL] or "").strip()
            if level not in LEVELS:
                raise label_error(root, src, LEVEL, level, "a grade 0-4")
            first = grades.setdefault(stem, (level, src))
            if first[0] != level:
                raise UnknownLabelError(f"{os.path.join(os.path.abspath(root), src)}: image "
                                        f"{stem!r} has level {level} here and {first[0]} at "
                                        f"{first[1]}")
        rows.append((stem, src, level))
    return rows


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    listed: dict[str, list[tuple[str, str, str | None]]] = {}
    grade: dict[tuple[str, str], str] = {}
    for part, csv_name in _LABELS.items():
        if os.path.isfile(os.path.join(root, csv_name)):
            c.notes.append(f"metadata: {os.path.join(root, csv_name)}")
            listed[part] = _read_label_csv(root, csv_name)
            grade.update({(part, stem): level for stem, _, level in listed[part]
                          if level is not None})
    if grade:
        c.label_columns = (LEVEL,)

    def labels(part: str, stem: str):
        level = grade.get((part, stem))
        return None if level is None else {LEVEL: level}

    seen: set[tuple[str, str]] = set()
    for part in _PARTS:
        folder = os.path.join(root, part)
        if not os.path.isdir(folder):
            continue
        for d, name in walk_files(folder):
            if not is_image_name(name):
                c.skip(rel(root, os.path.join(d, name)), NOT_AN_IMAGE)
            else:
                path = os.path.join(d, name)
                stem = os.path.splitext(name)[0]
                add_eye_image(c, part, name, path, rel(root, path), labels(part, stem))
                seen.add((part, stem))
    for part, rows in listed.items():
        for stem, src, _ in rows:
            if (part, stem) in seen:
                continue
            add_eye_image(c, part, f"{stem}.jpeg", c.path(part, f"{stem}.jpeg"), src,
                          labels(part, stem))
    if c.found_nothing():
        raise DatasetLayoutError(f"{root}: no train/ or test/ images and no trainLabels.csv")
    return c.result()
