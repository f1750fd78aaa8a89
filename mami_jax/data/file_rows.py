"""Manifest rows that stand for a user's own image files, so that files without a manifest
are embedded exactly as a manifest's rows are (``Embedder.embed_files`` in JAX,
``TorchEmbedder.embed_files`` in PyTorch), and the check of the rows both embedders'
``embed_rows`` are handed (a notebook's slip named, not failed on deep inside a reader)."""

from __future__ import annotations

import os
from typing import Sequence

from mami_jax.data.manifest import MODALITIES, ManifestRow


def file_rows(paths: Sequence[str], modality: str) -> list[ManifestRow]:
    """Manifest rows standing for image files (or DICOM series folders, NIfTI volumes,
    slice folders) of one ``modality``, each its own patient and visit: what
    ``Embedder.embed_files`` embeds. A missing path or unknown modality is refused here,
    naming it, as is a folder of several images given as one image of a 2-D modality (it
    would be read as a series, and only its middle image embedded)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths: a list of paths, not one path ({paths!r}): [{str(paths)!r}]")
    if paths is None or not hasattr(paths, "__iter__"):
        raise TypeError(f"paths: a list of paths, got {type(paths).__name__}")
    paths = list(paths)
    if not paths:
        raise ValueError("paths: empty; nothing to embed")
    rows = []
    for i, path in enumerate(map(os.fspath, paths)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or folder")
        refuse_image_folder(path, modality)
        rows.append(ManifestRow(image_id=f"file{i}:{os.path.abspath(path)}",
                                patient_id=f"file{i}", study_id=f"file{i}", order="0",
                                modality=modality, dataset="files", view="",
                                path=os.path.abspath(path)))
    return rows


def refuse_image_folder(path: str, modality: str, what: str = "") -> None:
    """ValueError when ``path`` (``what``: the argument that named it) is a folder of several
    images given as one image of the 2-D ``modality``: a folder is read as one series, of
    which a 2-D modality reads the middle image, so the others would be left out unsaid."""
    from mami_jax.data.config import SERIES_MODALITIES
    from mami_jax.data.decode import open_volume
    if modality in SERIES_MODALITIES or not os.path.isdir(path):
        return
    n = open_volume(path).num_slices
    if n > 1:
        raise ValueError(f"{what + ' ' if what else ''}{path}: a folder of {n} images, given as "
                         f"one {modality} image (a folder is read as one series); give the "
                         "image files themselves")


def embeddable_rows(rows) -> list[ManifestRow]:
    """``rows`` as a list, or an error naming the slip: no rows, or an item that is not a
    ``ManifestRow`` (a path: ``embed_files`` takes those)."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows: empty; nothing to embed")
    for i, r in enumerate(rows):
        manifest_row(r, f"rows[{i}]")
    return rows


def manifest_row(row, name: str = "row") -> ManifestRow:
    """``row``, or a TypeError naming ``name`` when it is not a ``ManifestRow`` (a path:
    ``embed_files`` takes those), rather than an AttributeError inside the reader."""
    if not isinstance(row, ManifestRow):
        raise TypeError(f"{name}: a {type(row).__name__}, not a ManifestRow (read_manifest "
                        "gives them); for image files, embed_files(paths, modality)")
    return row
