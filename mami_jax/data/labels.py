"""Diagnosis labels: a CSV table keyed by ``image_id`` beside the manifest.

The phantoms write ``labels.csv`` (``disease_stage`` 0..3 and ``disease_label`` 0/1
per image); the dataset builders that carry labels (ChestX-ray14, CheXpert, EyePACS,
ODIR, CC-CCII; docs/datasets.md) write theirs in the same shape through
``write_labels``: one row per image, one column per label (a multi-label source gets
one 0/1 column per finding), so a user picks one column and its classes. A label is
one of the configured class values; anything else (a typo, an empty cell, a value of
another label scheme) is an error naming the file, row and image, never a silent drop,
because a dropped image would change the evaluation set unnoticed.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Iterable, Mapping, Sequence

from mami_jax.data.csv_text import not_utf8, separated_otherwise
from mami_jax.runtime.atomic_files import write_text_atomic

LABELS_CSV = "labels.csv"


class LabelError(ValueError):
    """A labels table that cannot be used: names the file, row, image or column."""


def default_labels_path(manifest: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(manifest)), LABELS_CSV)


def image_ids_in(path: str) -> set[str]:
    """The ``image_id`` column of the CSV table ``path`` (a labels table or a manifest:
    any column order), spaces around values dropped; a table that cannot be read is a
    LabelError naming it."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            return {(rec.get("image_id") or "").strip() for rec in reader} - {""}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise LabelError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e


def refuse_other_labels(path: str, manifest: str, image_ids: Iterable[str]) -> None:
    """LabelError when the labels table ``path``, about to be replaced by the labels of
    the manifest ``manifest``, holds an image id not in ``image_ids`` (the images of that
    manifest, as written now and as it was before): it is the labels of another manifest
    in the same folder.

    Every manifest reads the ``labels.csv`` beside it (``default_labels_path``), so two
    manifests built into one folder share it; replacing it (``--overwrite`` was asked for
    the manifest, not for another's labels) left the first manifest with none of its
    labels, found only when a run read them. A rebuild of the same manifest, with more
    images or fewer, keeps to its own ids and replaces it as before.
    """
    own = set(image_ids)
    other = sorted(image_ids_in(path) - own)
    if other:
        raise LabelError(
            f"{path}: holds the labels of another manifest ({len(other)} of its image ids are "
            f"not in {manifest}, e.g. {other[0]!r}); refusing to replace it, even with "
            "--overwrite (each manifest reads the labels.csv beside it: write this one into "
            "another folder)")


def write_labels(path: str, columns: Sequence[str], labels: Mapping[str, Mapping[str, str]],
                 image_ids: Sequence[str]) -> int:
    """Writes the labels of ``image_ids`` (in that order; ids without labels are left
    out) as ``image_id,<columns>``, all-or-nothing; returns the rows written.

    Every labelled image must have every column (a builder's bug otherwise, raised as
    LabelError naming the image and column), so a reader never meets an empty cell.
    """
    columns = list(columns)
    if not columns or "image_id" in columns or len(set(columns)) != len(columns):
        raise LabelError(f"labels table {path}: bad columns {columns}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id"] + columns)
    n = 0
    for image_id in image_ids:
        values = labels.get(image_id)
        if values is None:
            continue
        missing = [c for c in columns if str(values.get(c, "")).strip() == ""]
        if missing:
            raise LabelError(f"labels table {path}: image {image_id!r} has no value for "
                             f"{missing}")
        writer.writerow([image_id] + [str(values[c]) for c in columns])
        n += 1
    write_text_atomic(path, buf.getvalue())
    return n


def read_labels(path: str, column: str, classes: Sequence[str]) -> dict[str, int]:
    """image_id -> class index (position of the value in ``classes``); every fault of the
    table, a file that is not UTF-8 CSV text included, is a LabelError naming it."""
    try:
        return _read_labels(path, column, classes)
    except UnicodeDecodeError as e:
        raise LabelError(f"labels table {path}: {not_utf8(path)}") from e
    except csv.Error as e:
        raise LabelError(f"labels table {path}: not a CSV text file ({e})") from e


def _read_labels(path: str, column: str, classes: Sequence[str]) -> dict[str, int]:
    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    try:
        f = open(path, newline="", encoding="utf-8-sig")   # a spreadsheet's byte-order mark
    except OSError as e:
        raise LabelError(f"labels table {path}: cannot be read ({e.strerror})") from e
    with f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]   # "image_id, label"
        reader.fieldnames = fields
        sep = separated_otherwise(fields)
        if sep:
            raise LabelError(f"labels table {path}: columns separated by {sep}, not commas; "
                             "save it as comma-separated CSV")
        for needed in ("image_id", column):
            if needed not in fields:
                raise LabelError(f"labels table {path}: no column {needed!r} (columns: "
                                 f"{', '.join(fields) or 'none'})")
        out: dict[str, int] = {}
        for rec in reader:
            line = reader.line_num     # where the row ends, as an editor numbers lines
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
