"""A digest of a phantom folder that survives the CPU's rounding: every image's shape and
mean pixel value (compared with a tolerance), every text file's bytes.

numpy's vectorised math rounds differently on CPUs with and without AVX-512, so the same
generator writes images whose pixels differ in the last bits from one machine to another
(their bytes then differ wholesale: PNG and JPEG compress whatever they get). A change to
the generator's random stream or drawing moves image means by far more than that.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".nii.gz")
#: Mean pixel values may differ by this much (0-255 images; NIfTI values are relative).
MEAN_TOLERANCE = 0.05
SKIPPED = ("labels.csv", "phantoms.json")


def _pixels(path: str) -> np.ndarray:
    if path.endswith(".nii.gz"):
        import nibabel
        return np.asarray(nibabel.load(path).get_fdata(), np.float64)
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im, np.float64)


def pixel_digest(root: str) -> dict[str, list]:
    """{relative path: [shape, mean] for images, ["sha256", hex] for other files}."""
    out = {}
    for here, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name in SKIPPED:
                continue
            path = os.path.join(here, name)
            key = os.path.relpath(path, root)
            if name.endswith(IMAGE_SUFFIXES):
                x = _pixels(path)
                out[key] = [list(x.shape), round(float(x.mean()), 4)]
            else:
                with open(path, "rb") as f:
                    out[key] = ["sha256", hashlib.sha256(f.read()).hexdigest()]
    return out


def differences(got: dict, want: dict) -> list[str]:
    """What differs beyond rounding, one line per file."""
    lines = [f"{k}: missing" for k in sorted(set(want) - set(got))]
    lines += [f"{k}: unexpected" for k in sorted(set(got) - set(want))]
    for k in sorted(set(got) & set(want)):
        g, w = got[k], want[k]
        if w[0] == "sha256" or g[0] != w[0]:
            if g != w:
                lines.append(f"{k}: {g} != {w}")
        elif abs(g[1] - w[1]) > MEAN_TOLERANCE * max(1.0, abs(w[1]) / 255.0):
            lines.append(f"{k}: mean {g[1]} != {w[1]}")
    return lines
