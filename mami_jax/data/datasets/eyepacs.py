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
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, is_image_name,
                                           read_csv, require_root, walk_files)
from mami_jax.data.datasets.eyes import add_eye_image, rel

NAME = "eyepacs"
MODALITY = "fundus"
_PARTS = ("train", "test")
_LABELS = {"train": "trainLabels.csv", "test": "retinopathy_solution.csv"}


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    seen: set[tuple[str, str]] = set()
    for part in _PARTS:
        folder = os.path.join(root, part)
        if not os.path.isdir(folder):
            continue
        for d, name in walk_files(folder):
            if is_image_name(name):
                path = os.path.join(d, name)
                add_eye_image(c, part, name, path, rel(root, path))
                seen.add((part, os.path.splitext(name)[0]))
    for part, csv_name in _LABELS.items():
        meta = os.path.join(root, csv_name)
        if not os.path.isfile(meta):
            continue
        c.notes.append(f"metadata: {meta}")
        for line, rec in read_csv(meta, ("image",)):
            stem = rec["image"].strip()
            if (part, stem) in seen:
                continue
            src = f"{csv_name}:{line}"
            add_eye_image(c, part, f"{stem}.jpeg", c.path(part, f"{stem}.jpeg"), src)
    if not c.rows and not c.skipped:
        raise DatasetLayoutError(f"{root}: no train/ or test/ images and no trainLabels.csv")
    return c.result()
