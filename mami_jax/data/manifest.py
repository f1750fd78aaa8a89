"""The common manifest: one row per image or series, for every dataset.

Every dataset builder (``mami_jax.data.datasets``) and the synthetic phantoms
(``mami_jax.phantoms.generator``) write this format, and the input pipeline, the
evaluators and the applications read only this format. Keeping one schema is
what lets a single model train on eleven datasets at once.

The file is a UTF-8 CSV with exactly the columns in ``COLUMNS``. It is written
atomically (temporary file + rename, ``runtime.atomic_files``) so a crash never
leaves half a manifest, with the permissions the user's umask asks for. Reading
accepts what a spreadsheet makes of it (a UTF-8 byte-order mark, the columns in another
order, blank lines), validates every row and fails naming the file and line number; a file
separated by ';' or tabs, or not in UTF-8, is an error saying how to save it.

Where a row is named (a bad value here, an unreadable image in the input pipeline), it is
named one way everywhere: ``FILE: line N (image_id=...)``, N the line of the file with the
header as line 1, the line an editor shows. A row read from a file remembers that place
(``ManifestRow.location``, kept through ``replace``, filtering and split assignment); a
row about to be written is named by the line it will have.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Iterable, Sequence

from mami_jax.data.csv_text import not_utf8, separated_otherwise
from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.runtime.local_paths import url_hint

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
        """A copy with ``changes``; it keeps the ``location`` of this row."""
        new = dataclasses.replace(self, **changes)
        return new.located(*self.location) if self.location else new

    @property
    def location(self) -> tuple[str, int] | None:
        """(manifest file, line number with the header as line 1) this row was read from;
        None for a row made in memory. Not a column: it is no dataclass field, so it takes
        no part in equality, hashing or the file's columns."""
        return self.__dict__.get("_location")

    def located(self, path: str, line: int) -> "ManifestRow":
        """Records where the row was read (``read_manifest``, as it makes the row); returns it."""
        object.__setattr__(self, "_location", (str(path), int(line)))
        return self


def row_place(row: ManifestRow) -> str | None:
    """``FILE: line N``, where ``row`` was read; None for a row made in memory."""
    return f"{row.location[0]}: line {row.location[1]}" if row.location else None


def _place(row: ManifestRow, i: int, source: str, first_line: int | None) -> tuple[str, str]:
    """(file, "line N") naming row ``i`` of rows checked as ``source``: where it was read,
    else its line in ``source`` when the rows are written there from ``first_line`` on,
    else ("source", "row i+1") for rows that are in no file."""
    if row.location:
        return row.location[0], f"line {row.location[1]}"
    if first_line is not None:
        return source, f"line {first_line + i}"
    return source, f"row {i + 1}"


def _other(rows, j: int, source: str, first_line: int | None, here: str) -> str:
    """How a message names a second row: ``line N``, with its file when not ``here``."""
    path, number = _place(rows[j], j, source, first_line)
    return number if path == here else f"{path}: {number}"


#: A date written year last ("3/1/2019", "01.03.2019", "15_01_2019", "15 01 2019"): as text
#: it sorts by day or month. ``fullmatch``: the whole text is one; ``search``: a name holds
#: one ("visit_15-01-2019"), its digits not part of a longer run of digit groups, so the
#: time after a date written year first ("2019-03-01_10-30-00", "2019-03-01T10-30-00") or a
#: date written year first itself is none.
YEAR_LAST_DATE = re.compile(r"(?<!\d)(?<!\d[-/._ T])"
                            r"\d{1,2}[-/._ ]\d{1,2}[-/._ ]\d{2,4}(?![-/._ ]?\d)")


#: A date written year first, its month and day of one or two digits, then anything (a time).
YEAR_FIRST_DATE = re.compile(r"(\d{4})[/.\-](\d{1,2})[/.\-](\d{1,2})(.*)")
#: The hours, minutes and seconds of a time after a date (each of one or two digits).
CLOCK = re.compile(r"(?<![\d.])(\d{1,2})(?=:)|(?<=:)(\d{1,2})(?![\d])")


def _padded_date(order: str) -> str:
    """A year-first date with its month and day (and a time's hours, minutes and seconds)
    written with two digits and '-' between, so that it sorts in time as text:
    '2019-9-1' came after '2019-11-1' (and '2019/10/1' after '2019-11-01'); other text
    is returned as it is."""
    date = YEAR_FIRST_DATE.fullmatch(order.strip())
    if date is None:
        return order
    year, month, day, rest = date.groups()
    rest = CLOCK.sub(lambda m: (m.group(1) or m.group(2)).zfill(2), rest)
    return f"{year}-{int(month):02d}-{int(day):02d}{rest}"


def order_key(order: str):
    """Sort key for the ``order`` column: numbers numerically, else as text.

    Dates written as YYYYMMDD or ISO sort correctly as text; follow-up numbers
    ("2", "10") must sort numerically; a year-first date of one-digit months or days
    ("2019-9-1") is read zero-padded (``_padded_date``).
    """
    try:
        return (0, float(order), "")
    except ValueError:
        return (1, 0.0, _padded_date(order))


def is_number_order(order: str) -> bool:
    """Whether ``order`` sorts as a number (``order_key``), not as text: every number sorts
    before every text, so one patient's orders must be all of one kind."""
    return order_key(order)[0] == 0


def _order_kind_clash(seen: dict, row: ManifestRow, i: int) -> int | None:
    """The index of an earlier row of ``row``'s patient whose order is a number where
    ``row``'s is text, or the reverse (``seen``: patient -> (is a number, first index),
    updated); None when they agree or ``row`` has no order."""
    if not row.order:
        return None
    number = is_number_order(row.order)
    first = seen.setdefault(row.patient_key, (number, i))
    return None if first[0] == number else first[1]


def order_clash(row: ManifestRow, other: ManifestRow, where_other: str) -> str:
    """Why ``row``'s order cannot stand beside ``other``'s (one patient, found at
    ``where_other``)."""
    number = is_number_order(row.order)
    return (f"order {row.order!r} is {'a number' if number else 'text'}, but patient "
            f"{row.patient_key!r} has order {other.order!r} at {where_other}; every number "
            "sorts before every text, so write one patient's orders one way (all visit "
            "numbers, or all dates: 2019-03-01 or 20190301)")


def first_order_clash(rows: Sequence[ManifestRow], start: int = 0) -> tuple[int, int] | None:
    """(i, j): the first row from ``start`` on whose order is of another kind than that of
    an earlier row ``j`` of its patient (rows before ``start`` only set the kinds)."""
    seen: dict = {}
    for i, row in enumerate(rows):
        j = _order_kind_clash(seen, row, i)
        if j is not None and i >= start:
            return i, j
    return None


def validate_rows(rows: Sequence[ManifestRow], source: str = "<rows>",
                  first_line: int | None = None) -> None:
    """Checks the invariants every consumer relies on; raises ManifestError.

    - every required field is non-empty, modality known, split known, no '/' in a dataset
      name (the patient's identity is ``dataset/patient_id``: a '/' in both could make two
      patients one);
    - ``order`` is no date written year last (it would sort by day or month), and a
      patient's orders are all numbers or all text (``order_key`` sorts every number
      before every text, so a visit number among dates would come first, whatever it is);
    - image ids are unique;
    - no patient appears in two splits.

    A row is named ``FILE: line N (image_id=...)`` by the place it was read from, else by
    the line it will have when the rows are written to ``source`` with the first on line
    ``first_line`` (``write_manifest``: 2, after the header), else as ``source: row N``.
    """
    seen_ids: dict[str, int] = {}
    patient_split: dict[str, tuple[str, int]] = {}
    patient_order: dict[str, tuple[bool, int]] = {}
    for i, row in enumerate(rows):
        path, number = _place(row, i, source, first_line)
        where = f"{path}: {number} (image_id={row.image_id!r})"
        for name in ("image_id", "patient_id", "study_id", "modality", "dataset", "path"):
            if not getattr(row, name):
                raise ManifestError(f"{where}: empty required column {name!r}")
        if "/" in row.dataset:
            raise ManifestError(
                f"{where}: dataset {row.dataset!r} holds '/', which joins it to the patient "
                f"id in the patient's identity ({row.patient_key!r} could be patient "
                "'.../...' of another dataset); name the dataset without '/'")
        if row.modality not in MODALITIES:
            raise ManifestError(
                f"{where}: unknown modality {row.modality!r}; expected one of {MODALITIES}")
        if row.split not in SPLITS:
            raise ManifestError(f"{where}: unknown split {row.split!r}; expected one of {SPLITS}")
        if YEAR_LAST_DATE.fullmatch(row.order.strip()):
            raise ManifestError(
                f"{where}: order {row.order!r} is a date written year last, which does not "
                "sort in time (as text '10/1/2019' comes before '3/1/2019'); write dates year "
                "first: 2019-03-01 or 20190301")
        first = _order_kind_clash(patient_order, row, i)
        if first is not None:
            there = _other(rows, first, source, first_line, path)
            raise ManifestError(f"{where}: {order_clash(row, rows[first], there)}")
        if row.image_id in seen_ids:
            raise ManifestError(
                f"{where}: duplicate image_id, first seen at "
                f"{_other(rows, seen_ids[row.image_id], source, first_line, path)}")
        seen_ids[row.image_id] = i
        if row.split:
            prev = patient_split.get(row.patient_key)
            if prev is not None and prev[0] != row.split:
                raise ManifestError(
                    f"{where}: patient {row.patient_key!r} is in split {row.split!r} here "
                    f"and in split {prev[0]!r} at "
                    f"{_other(rows, prev[1], source, first_line, path)}")
            patient_split.setdefault(row.patient_key, (row.split, i))


def rows_of_split(rows: Sequence[ManifestRow], split: str, source: str) -> list[ManifestRow]:
    """The rows of ``split`` ("": all of them); ValueError naming ``source`` (the flag and
    file they came from) when there is none."""
    if not split:
        return list(rows)
    kept = [r for r in rows if r.split == split]
    if not kept:
        raise ValueError(f"{source}: no rows of split {split!r} (the rows' splits: "
                         f"{sorted({r.split for r in rows})})")
    return kept


def manifest_paths(rows: Sequence[ManifestRow], out: str) -> list[ManifestRow]:
    """``rows`` with the path rule of a manifest written to ``out``: a path inside its folder
    relative to that folder (manifest and images move together), any other absolute."""
    base = os.path.dirname(os.path.abspath(out))
    result = []
    for r in rows:
        p = os.path.abspath(r.path)
        rel = os.path.relpath(p, base)
        inside = not (rel == os.pardir or rel.startswith(os.pardir + os.sep))
        result.append(r.replace(path=rel if inside else p))
    return result


def write_manifest(rows: Iterable[ManifestRow], path: str) -> None:
    """Validates and writes ``rows`` to ``path`` atomically (UTF-8, umask permissions)."""
    rows = list(rows)
    validate_rows(rows, source=str(path), first_line=2)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in rows:
                writer.writerow([getattr(row, c) for c in COLUMNS])

    write_atomic(path, write)


def csv_header(path: str) -> list[str] | None:
    """The first row of the CSV file ``path`` (a UTF-8 byte-order mark dropped), or None
    when it is no readable text file (a folder, an image, a missing file): what an output
    that exists is recognised by before it is replaced."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline(1 << 16)
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return next(csv.reader([first]), [])
    except csv.Error:
        return None


def is_manifest(path: str) -> bool:
    """Whether ``path`` is a manifest: a file whose header is ``COLUMNS`` in any order."""
    header = csv_header(path)
    return header is not None and sorted(h.strip() for h in header) == sorted(COLUMNS)


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
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: {not_utf8(path)}") from e
    except csv.Error as e:
        raise ManifestError(f"{path}: unreadable CSV ({type(e).__name__}: {e})") from e
    except FileNotFoundError:   # the OS's words name neither the file's role nor the file
        raise FileNotFoundError(f"manifest {path}: no such file{url_hint(path)}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"manifest {path}: is a folder, not a manifest file") from None
    validate_rows(rows, source=str(path))
    return rows


def _column_order(path: str, header: list[str]) -> list[str]:
    """The header's columns, which must be ``COLUMNS`` in any order; else a ManifestError
    that says what differs (a file separated by ';' or tabs, as a spreadsheet in a locale
    with decimal commas saves "CSV", is named as such)."""
    sep = separated_otherwise(header)
    if sep:
        raise ManifestError(f"{path}: columns separated by {sep}, not commas; save it as "
                            f"comma-separated CSV (header {','.join(COLUMNS)})")
    doubled = sorted({c for c in header if header.count(c) > 1})
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    if doubled or missing or extra:
        raise ManifestError(
            f"{path}: header {header} does not match {list(COLUMNS)} "
            f"(missing {missing}, unexpected {extra}{f', twice {doubled}' if doubled else ''})")
    return header


def _read_rows(path: str, reader, base_dir: str) -> list[ManifestRow]:
    """The rows of an open manifest CSV, its columns in any order and its blank lines
    skipped; relative paths resolved against ``base_dir``. Spaces around a name or value
    (``a, p1, s1``, as a CSV is written by hand) are not part of it; a path starting with
    ``~`` is in the user's home folder, as in a shell."""
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: empty file, expected header {','.join(COLUMNS)}") from None
    names = _column_order(path, header)
    rows = []
    for values in reader:
        if not values:   # a blank line (spreadsheets leave them at the end) holds no row
            continue
        if len(values) != len(COLUMNS):
            raise ManifestError(f"{path}: line {reader.line_num} has {len(values)} fields, "
                                f"expected {len(COLUMNS)}")
        fields = dict(zip(names, (v.strip() for v in values)))
        fields["path"] = os.path.expanduser(fields["path"])
        if fields["path"] and not os.path.isabs(fields["path"]):
            fields["path"] = os.path.normpath(os.path.join(base_dir, fields["path"]))
        rows.append(ManifestRow(**fields).located(path, reader.line_num))
    return rows
