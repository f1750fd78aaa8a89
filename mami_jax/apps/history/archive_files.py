"""An archive folder's files read back (``Archive.load``), each checked: a damaged or
foreign file is an ``ArchiveError`` naming it and what is wrong (a list where archive.json
holds an object, a metadata line of another number of fields, a truncated .npz), not a
traceback from deep inside the reader, nor an error blamed on another file."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from mami_jax.apps.history.npz_files import NPZ_ERRORS, npz_error
from mami_jax.data.manifest import ManifestRow

FORMAT = 2
META_COLUMNS = tuple(f.name for f in dataclasses.fields(ManifestRow))
ARCHIVE_JSON, METADATA_CSV, CENTERS_NPZ = "archive.json", "metadata.csv", "centers.npz"
RECORDS_CSV = "records.csv"
DENSITY_NPZ = "density.npz"


class ArchiveError(ValueError):
    """An archive that cannot be read or extended: names the file, image or setting."""


#: archive.json's entries: key -> (type, what it must be, its value when absent or null;
#: REQUIRED: an error). Every entry is checked on load.
REQUIRED = object()
_HEADER = {"format": (int, "a whole number", REQUIRED),
           "kind": (str, "text", REQUIRED),
           "dim": (int, "a whole number", REQUIRED),
           "modalities": (dict, "an object", REQUIRED),
           "settings": (dict, "an object", {}),
           "model": (dict, "an object", {}),
           "calibration": (dict, "an object", {}),
           "centred": (bool, "true or false", False),
           "record_column": (str, "text or null", None),
           "count": (int, "a whole number", None)}


def read_header(path: str) -> dict:
    """archive.json of archive folder ``path``, every entry checked (``_HEADER``); an
    ArchiveError names the file and the entry."""
    from mami_jax.runtime.json_object import parse_json_object
    header_path = os.path.join(path, ARCHIVE_JSON)
    try:
        with open(header_path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ArchiveError(f"{path} is not an archive: {ARCHIVE_JSON} cannot be read "
                           f"({e.strerror})") from e
    header = parse_json_object(text, header_path, "archive settings", ArchiveError)
    if header.get("format") != FORMAT:
        raise ArchiveError(f"{header_path}: archive format {header.get('format')!r}, this "
                           f"code reads format {FORMAT}; build it again with `index`")
    for key, (kind, what, default) in _HEADER.items():
        if header.get(key) is None:
            if default is REQUIRED:
                raise ArchiveError(f"{header_path}: no {key!r} entry")
            header[key] = default
            continue
        value = header[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ArchiveError(f"{header_path}: {key!r} is {value!r}, expected {what}")
    if header["dim"] < 1:
        raise ArchiveError(f"{header_path}: 'dim' is {header['dim']}, expected at least 1")
    for m, n in header["modalities"].items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ArchiveError(f"{header_path}: 'modalities' gives {m!r} {n!r} images, "
                               f"expected a whole number of at least 1")
    for m, c in header["calibration"].items():
        needed = ("threshold",) + (("impostor_mean", "impostor_sd")
                                   if isinstance(c, dict) and c.get("method") == "topk-visits"
                                   else ())
        for key in needed:
            value = c.get(key) if isinstance(c, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArchiveError(f"{header_path}: 'calibration' of {m!r} has {key} {value!r}, "
                                   f"expected a number")
    return header


def read_metadata(meta_path: str) -> list[ManifestRow]:
    """metadata.csv: the archived rows in archive order; a missing file, another header, a
    line of another number of fields, an empty id or modality or an id listed twice is an
    ArchiveError naming the file (and line)."""
    try:
        with open(meta_path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            head = next(reader, None)
            if tuple(head or ()) != META_COLUMNS:
                raise ArchiveError(f"{meta_path}: columns {head}, expected {list(META_COLUMNS)}")
            rows, seen = [], set()
            for values in reader:
                where = f"{meta_path}: line {reader.line_num}"
                if len(values) != len(META_COLUMNS):
                    raise ArchiveError(f"{where} has {len(values)} fields, expected "
                                       f"{len(META_COLUMNS)}")
                row = ManifestRow(*values)
                if not row.image_id or not row.modality:
                    raise ArchiveError(f"{where}: empty image_id or modality")
                if row.image_id in seen:
                    raise ArchiveError(f"{where}: image {row.image_id!r} listed twice")
                seen.add(row.image_id)
                rows.append(row)
    except OSError as e:
        raise ArchiveError(f"{meta_path}: the archive's image list cannot be read "
                           f"({e.strerror})") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise ArchiveError(f"{meta_path}: not a CSV text file ({e})") from e
    return rows


def read_arrays(path: str, state: str, what: str) -> dict[str, np.ndarray]:
    """The arrays of ``path`` (an .npz the archive needs because it ``state``); a missing,
    truncated or foreign file is an ArchiveError naming it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {m: np.asarray(f[m]) for m in f.files}
    except NPZ_ERRORS as e:
        raise ArchiveError(f"{path}: the archive {state} but its {what} cannot be read "
                           f"({npz_error(e)})") from e
