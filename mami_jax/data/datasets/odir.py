"""ODIR-5K (Peking University, Ocular Disease Intelligent Recognition 2019; ~7,000 fundus photos).

Get it: https://odir2019.grand-challenge.org/dataset/ (registration), or the Kaggle
mirror "andrewmvd/ocular-disease-recognition-odir5k".

Layout expected under ``root`` (any depth; the Kaggle mirror nests ODIR-5K/ODIR-5K/)::

    Training Images/0_left.jpg, 0_right.jpg, ...
    Testing Images/937_left.jpg, ...

Only these two folders are read for images: file names carry patient and eye.
Mirrors' derived copies (e.g. preprocessed_images/) are not read, so each photo enters
once.

Mapping (see ``eyes.py``): patient = "train-<ID>" or "test-<ID>", study = view = eye,
order 0, modality fundus.

Labels (optional): the training annotations, one row per patient, found at any depth
under the first of these names: ``ODIR-5K_Training_Annotations(Updated)_V2.xlsx``,
``data.xlsx`` (both need ``openpyxl``, in the ``apps`` extra), ``data.csv`` (the sheet
saved as CSV) or the Kaggle mirror's ``full_df.csv`` (a patient's row repeated per
image). Columns used: "ID", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords"
and the eight flags N (normal), D (diabetes), G (glaucoma), C (cataract), A (AMD),
H (hypertension), M (myopia), O (other). Written per image of ``Training Images``:
the flags N..O, 0/1 as the source gives them for the *patient* (both eyes carry the
same flags; ODIR grades patients, not eyes), and ``Diagnostic Keywords``, the text the
graders wrote for *this* eye. A flag other than 0/1, an empty keyword cell, a
non-integer ID or an ID listed twice with different labels is an ``UnknownLabelError``
naming the file and line (CSV) or sheet row (xlsx). Testing images have no published
labels and get none.
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, UnknownLabelError,
                                           NOT_AN_IMAGE, is_image_name, label_error, read_csv, require_root,
                                           walk, walk_files)
from mami_jax.data.datasets.eyes import EYE_NAME, add_eye_image, rel

NAME = "odir"
MODALITY = "fundus"
_PARTS = {"training images": "train", "testing images": "test"}
ANNOTATIONS = ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "data.xlsx", "data.csv", "full_df.csv")
FLAGS = ("N", "D", "G", "C", "A", "H", "M", "O")
KEYWORDS = "Diagnostic Keywords"
LABEL_COLUMNS = FLAGS + (KEYWORDS,)
_EYES = {"left": "Left-Diagnostic Keywords", "right": "Right-Diagnostic Keywords"}
_FLAG_VALUES = {"0": "0", "1": "1", "0.0": "0", "1.0": "1"}


def find_annotations(root: str) -> str | None:
    """The first annotation file (in ``ANNOTATIONS`` order) anywhere under ``root``."""
    found: dict[str, str] = {}
    for d, dirs, files in walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in sorted(files):
            if name in ANNOTATIONS:
                found.setdefault(name, os.path.join(d, name))
    return next((found[n] for n in ANNOTATIONS if n in found), None)


def _xlsx_rows(path: str, required: tuple[str, ...]):
    """(sheet row number, row dict of text) of the first sheet, like ``read_csv``."""
    try:
        import openpyxl
    except ImportError as e:
        raise DatasetLayoutError(f"{path}: reading .xlsx needs openpyxl (pip install -e "
                                 "'.[apps]'), or save the sheet as data.csv beside it") from e
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # a zip or XML error from a damaged file
        raise DatasetLayoutError(f"{path}: unreadable spreadsheet ({type(e).__name__}: {e})") from e
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = [_cell(v) for v in next(rows, ())]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetLayoutError(f"{path}: missing columns {missing}; header is {header}")
        for number, values in enumerate(rows, start=2):
            if any(v is not None for v in values):
                yield number, {h: _cell(v) for h, v in zip(header, values)}
    finally:
        book.close()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def read_annotations(root: str, path: str) -> dict[tuple[int, str], dict[str, str]]:
    """(patient ID, eye) -> label values, from the annotation file at ``path``."""
    required = ("ID",) + tuple(_EYES.values()) + FLAGS
    rows = _xlsx_rows(path, required) if path.endswith(".xlsx") else read_csv(path, required)
    name = os.path.relpath(path, root)
    out: dict[tuple[int, str], dict[str, str]] = {}
    first: dict[int, str] = {}
    for line, rec in rows:
        src = f"{name}:{line}"
        text = (rec.get("ID") or "").strip()
        if not text.isdigit():
            raise label_error(root, src, "ID", text, "the patient's integer ID")
        patient = int(text)
        flags = {}
        for flag in FLAGS:
            value = (rec.get(flag) or "").strip()
            if value not in _FLAG_VALUES:
                raise label_error(root, src, flag, value, "0 or 1")
            flags[flag] = _FLAG_VALUES[value]
        per_eye = {}
        for eye, column in _EYES.items():
            words = " ".join((rec.get(column) or "").split())
            if not words:
                raise label_error(root, src, column, rec.get(column) or "",
                                  "the eye's diagnostic keywords")
            per_eye[eye] = dict(flags, **{KEYWORDS: words})
        if patient in first:
            if any(out[(patient, eye)] != per_eye[eye] for eye in _EYES):
                raise UnknownLabelError(f"{os.path.join(os.path.abspath(root), src)}: ID "
                                        f"{patient} is labelled differently at {first[patient]}")
            continue
        first[patient] = src
        out.update({(patient, eye): labels for eye, labels in per_eye.items()})
    return out


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    folders = []
    for d, dirs, _ in walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for x in dirs:
            if x.lower() in _PARTS:
                folders.append((os.path.join(d, x), _PARTS[x.lower()]))
    if not folders:
        raise DatasetLayoutError(f"{root}: no 'Training Images' or 'Testing Images' folder")
    annotations: dict[tuple[int, str], dict[str, str]] = {}
    path = find_annotations(root)
    if path is not None:
        c.notes.append(f"annotations: {path}")
        annotations = read_annotations(root, path)
        c.label_columns = LABEL_COLUMNS
    for folder, part in folders:
        c.notes.append(f"images: {folder} (part {part})")
        for d, name in walk_files(folder):
            if not is_image_name(name):
                c.skip(rel(root, os.path.join(d, name)), NOT_AN_IMAGE)
            else:
                path = os.path.join(d, name)
                m = EYE_NAME.match(name)
                labels = (annotations.get((int(m.group(1)), m.group(2).lower()))
                          if m and part == "train" else None)
                add_eye_image(c, part, name, path, rel(root, path), labels)
    return c.result()
