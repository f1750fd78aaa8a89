"""Manifest rows that stand for a user's own image files, so that files without a manifest
are embedded exactly as a manifest's rows are (``Embedder.embed_files`` in JAX,
``TorchEmbedder.embed_files`` in PyTorch)."""

from __future__ import annotations

import os
from typing import Sequence

from mami_jax.data.manifest import MODALITIES, ManifestRow


def file_rows(paths: Sequence[str], modality: str) -> list[ManifestRow]:
    """Manifest rows standing for image files (or DICOM series folders, NIfTI volumes,
    slice folders) of one ``modality``, each its own patient and visit: what
    ``Embedder.embed_files`` embeds. A missing path or unknown modality is refused here,
    naming it."""
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths: a list of paths, not one path ({paths!r}): [{str(paths)!r}]")
    rows = []
    for i, path in enumerate(map(os.fspath, paths)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or folder")
        rows.append(ManifestRow(image_id=f"file{i}:{os.path.abspath(path)}",
                                patient_id=f"file{i}", study_id=f"file{i}", order="0",
                                modality=modality, dataset="files", view="",
                                path=os.path.abspath(path)))
    return rows
