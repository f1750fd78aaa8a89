"""ODIR-5K (Peking University, Ocular Disease Intelligent Recognition 2019; ~7,000 fundus photos).

Get it: https://odir2019.grand-challenge.org/dataset/ (registration), or the Kaggle
mirror "andrewmvd/ocular-disease-recognition-odir5k".

Layout expected under ``root`` (any depth; the Kaggle mirror nests ODIR-5K/ODIR-5K/)::

    Training Images/0_left.jpg, 0_right.jpg, ...
    Testing Images/937_left.jpg, ...

Only these two folders are read. The spreadsheet (data.xlsx) is not needed: file
names carry patient and eye. Mirrors' derived copies (e.g. preprocessed_images/) are
not read, so each photo enters once.

Mapping (see ``eyes.py``): patient = "train-<ID>" or "test-<ID>", study = view = eye,
order 0, modality fundus.
"""

from __future__ import annotations

import os

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, is_image_name,
                                           require_root, walk_files)
from mami_jax.data.datasets.eyes import add_eye_image, rel

NAME = "odir"
MODALITY = "fundus"
_PARTS = {"training images": "train", "testing images": "test"}


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    folders = []
    for d, dirs, _ in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for x in dirs:
            if x.lower() in _PARTS:
                folders.append((os.path.join(d, x), _PARTS[x.lower()]))
    if not folders:
        raise DatasetLayoutError(f"{root}: no 'Training Images' or 'Testing Images' folder")
    for folder, part in folders:
        c.notes.append(f"images: {folder} (part {part})")
        for d, name in walk_files(folder):
            if is_image_name(name):
                path = os.path.join(d, name)
                add_eye_image(c, part, name, path, rel(root, path))
    return c.result()
