"""Refusing, before any work, rows whose image is not on disk.

A command that reads its images one by one met a missing file half-way: after loading its
models and embedding for minutes, and after it had begun its output (a cue-map record, an
output folder, a stopped run's chunks). One ``stat`` per row up front names the first
missing image by its manifest line instead. Files that are there but unreadable are still
found where they are read.
"""

from __future__ import annotations

import os
from typing import Iterable

from mami_jax.data.manifest import ManifestRow, row_place


def refuse_missing_files(rows: Iterable[ManifestRow]) -> None:
    """FileNotFoundError naming the first row whose ``path`` does not exist (its manifest
    file and line, its image id) and how many more are missing."""
    missing = [r for r in rows if not os.path.exists(r.path)]
    if not missing:
        return
    first = missing[0]
    where = row_place(first)
    n = len(missing) - 1
    more = f" ({n} more image{'s' if n > 1 else ''} missing)" if n else ""
    raise FileNotFoundError(f"{where + ' ' if where else ''}(image_id={first.image_id!r}): "
                            f"{first.path}: no such file or folder{more}")
