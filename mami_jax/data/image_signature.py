"""A fingerprint of the image files behind manifest rows, for caches of per-image results.

Caches of features (the history application's re-ID features, teacher features, the
diagnosis reader's logits) are keyed by image ids, but an id names a row, not the pixels:
regenerating the phantoms with other settings, or re-exporting a study, keeps the ids and
changes the files. The signature adds each file's path, size and modification time (every
file of a series folder), so such a cache is computed again instead of silently reused.
Reading the stat of a file is cheap (on a mounted bucket, cheap when many are asked at
once: ``file_questions``); hashing the pixels of a million-image archive is not.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

from mami_jax.data.file_questions import ask_each
from mami_jax.data.manifest import ManifestRow


def _stat_line(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}|missing:{e.errno}"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


#: An Analyze / NIfTI pair: the header (orientation, scaling) and the voxels are two
#: files, and a manifest names one of them.
PAIRED = {".img": ".hdr", ".hdr": ".img"}


def files_behind(path: str) -> list[str]:
    """The files one image is read from: a folder's files below it (in walk order, names
    sorted), or the file and, for an Analyze / NIfTI pair, its other half."""
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs.sort()
            files += [os.path.join(root, n) for n in sorted(names)]
        return files
    stem, ext = os.path.splitext(path)
    other = PAIRED.get(ext.lower())
    return [path] + ([stem + other] if other else [])


def path_signature(path: str) -> str:
    """Path, size and mtime of a file (and of its pair's other half); of a folder, those
    of every file below it."""
    lines = [_stat_line(f) for f in files_behind(path)]
    return "\n".join(([path] if os.path.isdir(path) else []) + lines)


def file_stamp(path: str) -> str:
    """A short fingerprint (16 hex digits) of the sizes and modification times of the
    files behind one image (a folder's files by their names within it, a pair's two
    halves), not of where they lie: stored features stay valid for a dataset moved
    elsewhere, and are told apart from images rewritten under the same ids."""
    base = path if os.path.isdir(path) else os.path.dirname(path)
    lines = [_stat_line(f).replace(f, os.path.relpath(f, base), 1) for f in files_behind(path)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def rows_signature(rows: Sequence[ManifestRow]) -> str:
    """sha256 over every row's image id and its files' ``path_signature``, in row order
    (asked many at once on a slow file system, with a bar when that takes long)."""
    return ImageFiles(rows, "reading the images' sizes and dates").signature(rows)


class ImageFiles:
    """The ``path_signature`` of each row's files, asked once: which rows' images are
    missing (``missing_files``) and the fingerprint of any of the rows (``signature``).

    A command that refuses missing images and then keys a cache by the files (``--mode``
    eval and embed, the history archive) asked the file system about every image twice;
    on a bucket that is a request per file each time."""

    def __init__(self, rows: Sequence[ManifestRow], what: str = "checking the images are there"):
        self._of = dict(zip((r.image_id for r in rows),
                            ask_each(rows, lambda r: path_signature(r.path), what)))

    def missing(self, rows: Sequence[ManifestRow]) -> list[ManifestRow]:
        """Those of ``rows`` (all among those asked) whose ``path`` does not exist, in row
        order."""
        return [r for r in rows
                if self._of[r.image_id].split("\n", 1)[0].startswith(f"{r.path}|missing:")]

    def signature(self, rows: Sequence[ManifestRow]) -> str:
        """``rows_signature`` of ``rows``, every one of them among those asked; a row's
        modality counts too (it picks the preprocessing: a manifest whose mislabelled rows
        were corrected after a stop kept their embeddings made the other modality's way)."""
        h = hashlib.sha256()
        for r in rows:
            h.update(f"{r.image_id}\n{r.modality}\n{self._of[r.image_id]}\n".encode())
        return h.hexdigest()
