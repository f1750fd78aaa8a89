"""The common manifest: one row per image or series, for every dataset.

Every dataset builder (``mami_jax.data.datasets``) and the synthetic phantoms
(``mami_jax.phantoms.generator``) write this format, and the input pipeline, the
evaluators and the applications read only this format. Keeping one schema is
what lets a single model train on eleven datasets at once.

The file is a UTF-8 CSV with exactly the columns in ``COLUMNS``. It is written
atomically (temporary file + rename, ``runtime.atomic_files``) so a crash never
leaves half a manifest, with the permissions the user's umask asks for. Reading
accepts a UTF-8 byte-order mark (spreadsheet programs save CSVs with one),
validates every row and fails naming the file and line number.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterable, Sequence

from mami_jax.runtime.atomic_files import write_atomic

#: Modalities the system knows. An unknown modality is an error before training.
MODALITIES = ("xray", "ct", "mri", "fundus", "pathology")

#: Splits a row may carry. "" means "not assigned yet" (see ``splits.assign_splits``).
SPLITS = ("train", "val", "test", "")

COLUMNS = (
    "image_id",   # unique over the whole manifest
    "patient_id",  # identity label; unique within a dataset
    "study_id",   # the visit / study; the gallery excludes the query's own study
    "order",      # sortable position of the visit within the patient (date or number)
    "modality",   # one of MODALITIES
    "dataset",    # builder name, e.g. "nih_chestxray14" or "phantoms"
    "view",       # view / laterality where known ("PA", "left", ...), else ""
    "path",       # file, DICOM series folder, NIfTI volume or folder of slice images
    "split",      # one of SPLITS
)


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file, line and column."""


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One image (2-D) or series (3-D) of one patient at one visit."""

    image_id: str
    patient_id: str
    study_id: str
    order: str
    modality: str
    dataset: str
    view: str
    path: str
    split: str = ""

    @property
    def patient_key(self) -> str:
        """Patient identity across datasets: ids are only unique per dataset."""
        return f"{self.dataset}/{self.patient_id}"

    @property
    def study_key(self) -> str:
        return f"{self.dataset}/{self.patient_id}/{self.study_id}"

    def replace(self, **changes) -> "ManifestRow":
        return dataclasses.replace(self, **changes)


def order_key(order: str):
    """Sort key for the ``order`` column: numbers numerically, else as text.

    Dates written as YYYYMMDD or ISO sort correctly as text; follow-up numbers
    ("2", "10") must sort numerically.
    """
    try:
        return (0, float(order), "")
    except ValueError:
        return (1, 0.0, order)


def validate_rows(rows: Sequence[ManifestRow], source: str = "<rows>") -> None:
    """Checks the invariants every consumer relies on; raises ManifestError.

    - every required field is non-empty, modality known, split known;
    - image ids are unique;
    - no patient appears in two splits.
    """
    seen_ids: dict[str, int] = {}
    patient_split: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1} (image_id={row.image_id!r})"
        for name in ("image_id", "patient_id", "study_id", "modality", "dataset", "path"):
            if not getattr(row, name):
                raise ManifestError(f"{where}: empty required column {name!r}")
        if row.modality not in MODALITIES:
            raise ManifestError(
                f"{where}: unknown modality {row.modality!r}; expected one of {MODALITIES}")
        if row.split not in SPLITS:
            raise ManifestError(f"{where}: unknown split {row.split!r}; expected one of {SPLITS}")
        if row.image_id in seen_ids:
            raise ManifestError(
                f"{where}: duplicate image_id, first seen at row {seen_ids[row.image_id] + 1}")
        seen_ids[row.image_id] = i
        if row.split:
            prev = patient_split.get(row.patient_key)
            if prev is not None and prev[0] != row.split:
                raise ManifestError(
                    f"{where}: patient {row.patient_key!r} is in split {row.split!r} here "
                    f"and in split {prev[0]!r} at row {prev[1] + 1}")
            patient_split.setdefault(row.patient_key, (row.split, i))


def write_manifest(rows: Iterable[ManifestRow], path: str) -> None:
    """Validates and writes ``rows`` to ``path`` atomically (UTF-8, umask permissions)."""
    rows = list(rows)
    validate_rows(rows, source=str(path))

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([getattr(row, c) for c in COLUMNS])

    write_atomic(path, write)


def read_manifest(path: str, base_dir: str | None = None) -> list[ManifestRow]:
    """Reads and validates a manifest.

    Relative ``path`` entries are resolved against ``base_dir`` (default: the
    manifest's own folder), so a manifest and its images can move together.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = _read_rows(path, csv.reader(f), base_dir)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"{path}: unreadable CSV ({type(e).__name__}: {e})") from e
    validate_rows(rows, source=str(path))
    return rows


def _read_rows(path: str, reader, base_dir: str) -> list[ManifestRow]:
    """The rows of an open manifest CSV; relative paths resolved against ``base_dir``."""
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(f"{path}: empty file, expected header {','.join(COLUMNS)}") from None
    if tuple(header) != COLUMNS:
        missing = [c for c in COLUMNS if c not in header]
        extra = [c for c in header if c not in COLUMNS]
        raise ManifestError(
            f"{path}: header {header} does not match {list(COLUMNS)} "
            f"(missing {missing}, unexpected {extra})")
    rows = []
    for values in reader:
        if len(values) != len(COLUMNS):
            raise ManifestError(f"{path}: line {reader.line_num} has {len(values)} fields, "
                                f"expected {len(COLUMNS)}")
        fields = dict(zip(COLUMNS, values))
        if fields["path"] and not os.path.isabs(fields["path"]):
            fields["path"] = os.path.normpath(os.path.join(base_dir, fields["path"]))
        rows.append(ManifestRow(**fields))
    return rows
