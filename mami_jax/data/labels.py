"""Diagnosis labels: a CSV table keyed by ``image_id`` beside the manifest.

The phantoms write ``labels.csv`` (``disease_stage`` 0..3 and ``disease_label`` 0/1
per image); dataset builders that carry labels write theirs in the same shape. A
label is one of the configured class values; anything else (a typo, an empty cell, a
value of another label scheme) is an error naming the file, row and image, never a
silent drop, because a dropped image would change the evaluation set unnoticed.
"""

from __future__ import annotations

import csv
import os
from typing import Sequence


class LabelError(ValueError):
    """A labels table that cannot be used: names the file, row, image or column."""


def default_labels_path(manifest: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), "labels.csv")


def read_labels(path: str, column: str, classes: Sequence[str]) -> dict[str, int]:
    """image_id -> class index (position of the value in ``classes``)."""
    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise LabelError(f"labels table {path}: cannot be read ({e.strerror})") from e
    with f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        for needed in ("image_id", column):
            if needed not in fields:
                raise LabelError(f"labels table {path}: no column {needed!r} (columns: "
                                 f"{', '.join(fields) or 'none'})")
        out: dict[str, int] = {}
        for line, rec in enumerate(reader, start=2):  # line 1 is the header
            image_id, value = (rec.get("image_id") or "").strip(), (rec.get(column) or "").strip()
            where = f"labels table {path}: line {line} (image_id={image_id!r})"
            if not image_id:
                raise LabelError(f"{where}: empty image_id")
            if value not in index:
                raise LabelError(f"{where}: {column}={value!r} is not a known label "
                                 f"(expected one of {', '.join(classes)})")
            if image_id in out:
                raise LabelError(f"{where}: image_id appears twice")
            out[image_id] = index[value]
    if not out:
        raise LabelError(f"labels table {path}: no rows")
    return out


def labels_for(rows, labels: dict[str, int], path: str) -> list[int]:
    """The class index of every manifest row; an unlabelled row is an error naming it."""
    missing = [r.image_id for r in rows if r.image_id not in labels]
    if missing:
        raise LabelError(f"labels table {path}: {len(missing)} of {len(rows)} images have no "
                         f"label, e.g. {missing[:5]}")
    return [labels[r.image_id] for r in rows]
