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

import concurrent.futures
import logging
import os
import time
from typing import Iterable, Sequence

from mami_jax.data.manifest import ManifestRow, row_place
from mami_jax.runtime.local_paths import url_hint


SKIP_SWITCH = "--config.data.skip_bad_images=True"

#: Threads asking the file system at once where one ``stat`` waits a round trip (a network
#: mount: a million rows one at a time took minutes there), measured on the first
#: ``PROBE_ROWS``; on a local disk (a few microseconds a ``stat``) threads only cost.
STAT_THREADS = 32
PROBE_ROWS = 512
SLOW_STAT_SECONDS = 100e-6


def _absent(rows: list[ManifestRow]) -> list[bool]:
    return [not os.path.exists(r.path) for r in rows]


def missing_rows(rows: Iterable[ManifestRow]) -> list[ManifestRow]:
    """The rows whose ``path`` does not exist, in row order."""
    rows = list(rows)
    start = time.perf_counter()
    flags = _absent(rows[:PROBE_ROWS])
    rest = rows[PROBE_ROWS:]
    slow = time.perf_counter() - start > SLOW_STAT_SECONDS * PROBE_ROWS
    if slow and rest:
        size = -(-len(rest) // STAT_THREADS)
        with concurrent.futures.ThreadPoolExecutor(STAT_THREADS) as pool:
            for part in pool.map(_absent, [rest[i:i + size] for i in range(0, len(rest), size)]):
                flags += part
    else:
        flags += _absent(rest)
    return [r for r, gone in zip(rows, flags) if gone]


def refuse_missing_files(rows: Iterable[ManifestRow], remedy: str = "") -> None:
    """FileNotFoundError naming the first row whose ``path`` does not exist (its manifest
    file and line, its image id) and how many more are missing; ``remedy`` ends it."""
    missing = missing_rows(rows)
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
                         purpose: str) -> int:
    """The number of ``rows`` whose image is missing, read for ``purpose`` ("training", ...).
    Without ``skip_bad_images`` the first one is refused (``refuse_missing_files``, naming
    the switch); with it they are logged as a count: the readers skip and count them."""
    if not skip_bad_images:
        refuse_missing_files(rows, remedy=f"; {purpose} can skip missing and unreadable "
                                          f"images, counted: {SKIP_SWITCH}")
        return 0
    missing = len(missing_rows(rows))
    if missing:
        logging.warning("%d of the %d images for %s are missing: they will be skipped and "
                        "counted (data.skip_bad_images)", missing, len(rows), purpose)
    return missing
