"""Shared pieces of the dataset builders: the result type, row collection, file helpers.

Every builder returns a ``BuildResult``: the rows it could make, every metadata row or
file it could not use with the reason (counted and printed, never silently dropped),
and how many referenced files are missing. Paths in rows are absolute;
``build_manifest`` rewrites them relative to the manifest's folder when the image
lies inside it.

Labels: a builder whose dataset carries diagnosis labels declares its label columns
(``Collector.label_columns``) and passes each row's values to ``Collector.add``; the
result holds them for the rows it kept (``BuildResult.labels``, keyed by image id), and
``build_manifest`` writes them as ``labels.csv`` beside the manifest
(``mami_jax.data.labels.write_labels``). A label value the builder does not know is an
``UnknownLabelError`` naming the metadata file, line and value (``label_error``), not a
skipped row: a wrong label scheme or a corrupted file must stop the build.

``verify_files``: True checks every path exists (a missing file is reported as
skipped with reason "file not found" and counted in ``missing_files``); False builds
the rows from metadata alone, so splits can be planned without the images. The checks
run together when the builder is done (``Collector.result``, ``file_questions``).

Containment: every path a builder adds goes through ``Collector.add``, which refuses a
path outside the dataset root (an absolute path or ``..`` components in a metadata
value) with ``PathOutsideRootError`` naming the metadata file and line, before the path
is looked at or written into a manifest. A metadata file names images of its own
dataset; a value pointing elsewhere is a corrupted or tampered file, not a row to skip.
The check is lexical: a symbolic link inside the root (an image folder kept on another
disk) is the user's own layout and is followed.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import os
import zlib
from typing import Iterator

from mami_jax.data.decode import IMAGE_EXTENSIONS
from mami_jax.data.file_questions import BAR_DELAY, ask_each
from mami_jax.data.manifest import ManifestRow
from mami_jax.runtime.progress import progress_bar


@dataclasses.dataclass
class BuildResult:
    rows: list[ManifestRow]
    skipped: list[tuple[str, str]]  # (metadata row or file [with the offending value], reason)
    missing_files: int
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. which metadata file was read
    label_columns: tuple[str, ...] = ()                 # empty: the dataset carries no labels
    labels: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # image id -> values

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(collections.Counter(reason for _, reason in self.skipped))


class DatasetLayoutError(ValueError):
    """The root folder does not have the layout the builder documents."""


class PathOutsideRootError(DatasetLayoutError):
    """A metadata row names an image outside the dataset root; the message names the row."""


class UnknownLabelError(DatasetLayoutError):
    """A metadata row holds a label value outside the dataset's label scheme."""


def label_error(root: str, source: str, column: str, value: str, expected: str) -> UnknownLabelError:
    """The error for ``column=value`` at ``source`` (``file:line`` relative to ``root``)."""
    where = source if os.path.isabs(source) else os.path.join(os.path.abspath(root), source)
    return UnknownLabelError(f"{where}: {column}={value!r} is not a known label value "
                             f"(expected {expected})")


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """A row ``Collector.add`` was given, its file not yet checked."""
    row: ManifestRow
    source: str
    folder: bool
    labels: dict[str, str] | None


class Collector:
    """Accumulates rows; checks paths as rows arrive, files and image ids at ``result``.

    Every ``add`` and ``skip`` is recorded in order; ``result`` checks all files at once
    (``file_questions``: in parallel on a slow file system such as a mounted bucket, with a
    bar) and then settles the rows in that order, so the outcome is what checking each file
    as it came would give: the first row of an image id whose file exists keeps the id.
    Reading a large dataset shows a count of the entries looked at (after a moment).
    """

    def __init__(self, dataset: str, modality: str, root: str, verify_files: bool):
        self.dataset = dataset
        self.modality = modality
        self.root = os.path.abspath(root)
        self.verify = verify_files
        self.rows: list[ManifestRow] = []
        self.skipped: list[tuple[str, str]] = []
        self.missing = 0
        self.notes: list[str] = []
        self.label_columns: tuple[str, ...] = ()
        self.labels: dict[str, dict[str, str]] = {}
        self._seen: list[_Candidate | tuple[str, str]] = []   # candidates and skips, in order
        self._bar = None

    def path(self, *parts: str) -> str:
        return os.path.normpath(os.path.join(self.root, *parts))

    def found_nothing(self) -> bool:
        """Nothing added or skipped so far: the root holds nothing of the dataset."""
        return not self._seen

    def skip(self, source: str, reason: str) -> None:
        self._seen.append((source, reason))
        self._tick()

    def _tick(self) -> None:
        if self._bar is None:
            self._bar = progress_bar(None, f"reading {self.dataset}", unit="entry",
                                     delay=BAR_DELAY)
        self._bar.update(1)

    def inside(self, path: str, source: str) -> str:
        """``path`` made absolute (against the working folder, as the builder joined it to
        the root it was given) and normalised; PathOutsideRootError if it leaves the root.

        ``source`` is the metadata file and line (``name.csv:12``, relative to the root) or
        the file the path came from; the error names it in full.
        """
        full = os.path.abspath(path)
        if os.path.commonpath([self.root, full]) != self.root:
            where = source if os.path.isabs(source) else os.path.join(self.root, source)
            raise PathOutsideRootError(
                f"{where}: image path {full!r} is outside the dataset root {self.root}; "
                "a metadata value (absolute path or '..') points elsewhere, refusing to "
                "read it or write it into the manifest")
        return full

    def add(self, *, local_id: str, patient_id: str, study_id: str, order: str, view: str,
            path: str, source: str, folder: bool = False,
            labels: dict[str, str] | None = None) -> None:
        """Records a row; ``result`` keeps it unless its file is missing (when verifying)
        or its image id was kept first.

        A path outside the root raises (see ``inside``) before anything else is checked.
        ``labels`` (one value per ``label_columns``) are kept for the row when it is kept.
        ``folder``: the path is a series folder, present when it holds a visible entry.
        """
        path = self.inside(path, source)
        row = ManifestRow(
            image_id=f"{self.dataset}:{local_id}", patient_id=str(patient_id),
            study_id=str(study_id), order=str(order), modality=self.modality,
            dataset=self.dataset, view=str(view), path=path, split="")
        self._seen.append(_Candidate(row, source, folder, labels))
        self._tick()

    def result(self) -> BuildResult:
        if self._bar is not None:
            self._bar.close()
        candidates = [c for c in self._seen if isinstance(c, _Candidate)]
        present = iter(ask_each(candidates, lambda c: is_present(c.row.path, c.folder),
                               f"checking {self.dataset}'s files") if self.verify else
                       [True] * len(candidates))
        kept_from: dict[str, str] = {}
        for entry in self._seen:
            if not isinstance(entry, _Candidate):
                self.skipped.append(entry)
            else:
                self._settle(entry, next(present), kept_from)
        self._seen = []
        if self.labels:
            self.notes.append(f"labels: {len(self.labels)} of {len(self.rows)} images "
                              f"({', '.join(self.label_columns)})")
        return BuildResult(self.rows, self.skipped, self.missing, self.notes,
                           self.label_columns if self.labels else (), self.labels)

    def _settle(self, c: _Candidate, present: bool, kept_from: dict[str, str]) -> None:
        image_id = c.row.image_id
        if image_id in kept_from:
            self.skipped.append((f"{c.source} (image id {image_id!r} first from "
                                 f"{kept_from[image_id]})", "duplicate image id"))
            return
        if not present:
            self.missing += 1
            self.skipped.append((c.source, "series folder missing or empty" if c.folder
                                 else "file not found"))
            return
        kept_from[image_id] = c.source
        self.rows.append(c.row)
        if c.labels is not None:
            if set(c.labels) != set(self.label_columns):
                raise ValueError(f"{c.source}: labels {sorted(c.labels)} do not match the "
                                 f"label columns {list(self.label_columns)}")
            self.labels[image_id] = {k: str(c.labels[k]) for k in self.label_columns}


def is_present(path: str, folder: bool) -> bool:
    """A file: it exists and is a file. A series folder: it exists and holds a visible
    (not dot-hidden) entry."""
    if not folder:
        return os.path.isfile(path)
    try:
        return any(not name.startswith(".") for name in os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return False


def is_image_name(name: str) -> bool:
    return os.path.splitext(name.lower())[1] in IMAGE_EXTENSIONS


def walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` (top down: the caller may prune or sort ``dirs`` in place) that
    follows links to folders, each folder walked once.

    A folder linked into a dataset root (images kept on another disk, the layout the
    containment check above leaves to the user) is read like any other: ``os.walk``
    alone lists the link and never enters it, so its images were silently left out. A
    folder reached a second time, by a link back up the tree (a loop) or a second link
    to it, is identified by its (device, inode) and passed over with all below it, so a
    loop ends and no image is read twice.
    """
    visited: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:  # gone since it was listed, or a link that no longer leads anywhere
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((info.st_dev, info.st_ino))
        yield folder, dirs, files


def walk_files(root: str) -> Iterator[tuple[str, str]]:
    """(folder, file name) for every visible file under ``root``, in sorted order, links
    to folders followed (``walk``)."""
    for folder, dirs, files in walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield folder, name


def open_text(path: str):
    """Opens a CSV that may be gzip-compressed (``.gz``)."""
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


#: What reading a truncated (an interrupted download) or damaged ``.gz`` raises: the end
#: of the data before gzip's end marker, a damaged deflate stream, a bad gzip header.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def gzip_error(path: str, line_no: int, e: BaseException) -> DatasetLayoutError:
    """The error for a ``.gz`` that ends or breaks after ``line_no`` lines were read (0:
    within its header), naming the file: these exceptions name neither."""
    after = f" after line {line_no}" if line_no else ""
    kind = type(e).__name__ if type(e).__module__ == "builtins" else \
        f"{type(e).__module__}.{type(e).__name__}"                        # zlib.error
    return DatasetLayoutError(f"{path}: truncated or damaged gzip file, unreadable{after} "
                              f"({kind}: {e}); download it again")


def read_header(path: str) -> list[str]:
    """The first row of a CSV that may be gzip-compressed; a damaged ``.gz`` is a
    DatasetLayoutError naming the file (``gzip_error``)."""
    try:
        with open_text(path) as f:
            return next(csv.reader(f), [])
    except GZIP_ERRORS as e:
        raise gzip_error(path, 0, e) from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetLayoutError(f"{path}: unreadable CSV header ({type(e).__name__}: {e})") from e


def read_csv(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line number, row dict) of a CSV; fails naming the file if a column is missing.

    A UTF-8 byte-order mark (as spreadsheet programs save CSVs) is dropped. Text that is
    not UTF-8, or that the CSV reader rejects, is a DatasetLayoutError naming the file and
    the last line read; so is a ``.gz`` that is truncated or damaged (``gzip_error``: the
    decompressor's own exceptions name no file and ended the build in a traceback). A
    row's line number is the physical line where it ends (its only line unless a quoted
    field spans several; blank lines are counted).
    """
    line_no = 0  # last physical line consumed
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetLayoutError(f"{path}: missing columns {missing}; header is {header}")
            line_no = reader.line_num
            for row in reader:
                line_no = reader.line_num
                yield line_no, row
    except (UnicodeDecodeError, csv.Error) as e:
        raise DatasetLayoutError(f"{path}: unreadable CSV after line {line_no} "
                                 f"({type(e).__name__}: {e})") from e
    except GZIP_ERRORS as e:
        raise gzip_error(path, line_no, e) from e


#: Why a file of an image folder is no row (a note, a checksum list, a tiler's log).
NOT_AN_IMAGE = "not an image file"


def find_one(root: str, names_or_prefixes: tuple[str, ...], *, prefix: bool = False,
             what: str = "metadata file", suffixes: tuple[str, ...] = ("",)) -> str:
    """The first existing file among ``names`` directly in root (or starting with a prefix
    and ending with one of ``suffixes``: a README beside the tables is no table)."""
    entries = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for cand in names_or_prefixes:
        for name in entries:
            named = (name.startswith(cand) and name.lower().endswith(suffixes) if prefix
                     else name == cand)
            if named and os.path.isfile(os.path.join(root, name)):
                return os.path.join(root, name)
    raise DatasetLayoutError(f"{root}: no {what} found (looked for {list(names_or_prefixes)})")


def require_root(root: str) -> None:
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{root}: dataset root is not a folder")
