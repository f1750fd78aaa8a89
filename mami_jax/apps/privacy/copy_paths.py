"""Where ``protect`` writes each row's copy and ``cues`` its maps, one place per row.

An image inside the manifest's folder keeps its path below ``OUT/images``, so the copy
mirrors the dataset's layout. An image outside it goes to
``OUT/images/MODALITY/PATIENT/IMAGE_ID/NAME``: its own name (the format's extension, an
Analyze pair's shared stem) in a folder of its own, because two images of one patient
from different folders often share a name (``img.png``, a series folder ``1``), and one
copy written over the other would leave two manifest rows on one file. The manifest's
ids become path components only with their separators replaced, so no id reaches
outside OUT. ``cues`` names its maps by ``file_name(image_id)``: dataset ids hold
slashes (``chexpert:patient00001/study1/view1_frontal``), and one of ``../`` wrote its
maps outside OUT.
"""

from __future__ import annotations

import os
from typing import Sequence

from mami_jax.data.manifest import ManifestRow


def file_name(name: str) -> str:
    """``name`` as one path component: separators replaced, "." and ".." renamed."""
    for sep in {os.sep, os.altsep or os.sep, "/"}:
        name = name.replace(sep, "_")
    return name if name not in ("", ".", "..") else f"_{name}_"


def output_path(row: ManifestRow, manifest_dir: str, out_dir: str) -> tuple[str, str]:
    """(absolute, relative to out_dir) path of the protected copy of ``row``."""
    source = os.path.normpath(row.path)
    rel = os.path.relpath(source, manifest_dir)
    if rel == ".." or rel.startswith(".." + os.sep):
        rel = os.path.join(*(file_name(part) for part in (
            row.modality, row.patient_id, row.image_id, os.path.basename(source))))
    rel = os.path.join("images", rel)
    return os.path.join(out_dir, rel), rel


def check_distinct_copies(rows: Sequence[ManifestRow], manifest_dir: str, out_dir: str) -> None:
    """ValueError naming two rows whose copies would be one file (two rows of one image:
    the second copy would replace the first, under both rows)."""
    seen: dict[str, ManifestRow] = {}
    for row in rows:
        path = output_path(row, manifest_dir, out_dir)[0]
        if path in seen:
            first = seen[path]
            same = os.path.realpath(first.path) == os.path.realpath(row.path)
            advice = ("give each image one row" if same else
                      "rename one image_id in the manifest (outside the manifest's folder a "
                      "copy is named by its image_id)")
            raise ValueError(f"rows {first.image_id!r} ({first.path}) and {row.image_id!r} "
                             f"({row.path}) would be copied to one file, {path}: {advice}")
        seen[path] = row


def check_distinct_names(rows: Sequence[ManifestRow]) -> None:
    """ValueError naming two rows whose ids give one ``file_name`` ("a/b" and "a_b")."""
    seen: dict[str, str] = {}
    for row in rows:
        name = file_name(row.image_id)
        if name in seen:
            raise ValueError(f"image ids {seen[name]!r} and {row.image_id!r} both give the file "
                             f"name {name!r}: rename one in the manifest")
        seen[name] = row.image_id
