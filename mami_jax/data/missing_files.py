"""Refusing, before any work, rows whose image is not on disk.

A command that reads its images one by one met a missing file half-way: after loading its
models and embedding for minutes, and after it had begun its output (a cue-map record, an
output folder, a stopped run's chunks). One ``stat`` per row up front names the first
missing image by its manifest line instead. Files that are there but unreadable are still
found where they are read.

Training is the longest such command: a missing image that the sampler drew only hours in
stopped the run there. ``check_images_on_disk`` refuses it before the run starts, or, where
the user asked for unreadable images to be skipped (``data.skip_bad_images``), says up front
how many will be.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

from mami_jax.data.file_questions import ask_each
from mami_jax.data.image_signature import ImageFiles
from mami_jax.data.manifest import ManifestRow, row_place
from mami_jax.runtime.local_paths import url_hint


SKIP_SWITCH = "--config.data.skip_bad_images=True"

def missing_rows(rows: Iterable[ManifestRow],
                 files: ImageFiles | None = None) -> list[ManifestRow]:
    """The rows whose ``path`` does not exist, in row order (asked many at once on a slow
    file system, with a bar when that takes long: ``file_questions``), or as ``files``
    found them (the caller keys a cache by the same answers)."""
    rows = list(rows)
    if files is not None:
        return files.missing(rows)
    gone = ask_each(rows, lambda r: not os.path.exists(r.path), "checking the images are there")
    return [r for r, g in zip(rows, gone) if g]


def refuse_missing_files(rows: Iterable[ManifestRow], remedy: str = "",
                         files: ImageFiles | None = None) -> None:
    """FileNotFoundError naming the first row whose ``path`` does not exist (its manifest
    file and line, its image id) and how many more are missing; ``remedy`` ends it.
    ``files``: as ``missing_rows``."""
    missing = missing_rows(rows, files)
    if not missing:
        return
    first = missing[0]
    where = row_place(first)
    n = len(missing) - 1
    more = f" ({n} more image{'s' if n > 1 else ''} missing)" if n else ""
    raise FileNotFoundError(f"{where + ' ' if where else ''}(image_id={first.image_id!r}): "
                            f"{first.path}: no such file or folder{more}"
                            f"{_windows_separators(first.path)}{url_hint(first.path)}{remedy}")


def _windows_separators(path: str) -> str:
    """A hint for a manifest written on Windows (``ct\\P1\\v0.nii.gz``): on this system
    the backslash is part of a file name, so such a path names no file."""
    if "\\" not in path or os.sep == "\\":
        return ""
    return " (the path is written with '\\' separators: this system separates folders by '/')"


def check_images_on_disk(rows: Sequence[ManifestRow], skip_bad_images: bool,
                         purpose: str, files: ImageFiles | None = None) -> int:
    """The number of ``rows`` whose image is missing, read for ``purpose`` ("training", ...).
    Without ``skip_bad_images`` the first one is refused (``refuse_missing_files``, naming
    the switch); with it they are logged as a count: the readers skip and count them.
    ``files``: as ``missing_rows``."""
    if not skip_bad_images:
        refuse_missing_files(rows, remedy=f"; {purpose} can skip missing and unreadable "
                                          f"images, counted: {SKIP_SWITCH}", files=files)
        return 0
    missing = len(missing_rows(rows, files))
    if missing:
        logging.warning("%d of the %d images for %s are missing: they will be skipped and "
                        "counted (data.skip_bad_images)", missing, len(rows), purpose)
    return missing
