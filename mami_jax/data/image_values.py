"""Stored pixel values to unit intensities ([0, 1]): the rules every format shares.

8-bit integers are divided by 255; wider integers (16-bit X-rays hold 12, 14 or 16 bits
depending on the scanner) and floats are scaled by the minimum and maximum of what is
read together, so the slices of one series stay comparable; or, where the modality
sets a value window (``data.modalities.<m>.value_window``), by that fixed range.
"""

from __future__ import annotations

import numpy as np


def scale_integer_or_float(arr: np.ndarray,
                           value_window: tuple[float, float] | None = None) -> np.ndarray:
    """8-bit -> /255; anything wider -> min-max over the whole array, or ``value_window``
    (``window``) when given."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1.0 / 255.0)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"unsupported pixel type {arr.dtype}")
    return minmax(arr) if value_window is None else window(arr, value_window)


def window(arr: np.ndarray, value_window: tuple[float, float]) -> np.ndarray:
    """(x - lo) / (hi - lo) clipped to [0, 1], as float32: a fixed range in the stored
    values' own units (Hounsfield units for a CT), so a scan maps to the same intensities
    whichever of its slices are read, whatever its padding or metal holds, and one visit
    of a patient looks as another does (min-max depends on both)."""
    x = arr.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("pixel data contains NaN or infinity")
    lo, hi = (float(v) for v in value_window)
    return np.clip((x - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0).astype(
        np.float32, copy=False)


def minmax(arr: np.ndarray, ignore: np.ndarray | None = None) -> np.ndarray:
    """(x - min) / (max - min) as float32; a constant array becomes zeros. ``ignore``
    (a mask like ``arr``): pixels left out of min and max (a DICOM's padding), which
    then fall outside [0, 1] until their reader sets them."""
    x = arr.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError("pixel data contains NaN or infinity")
    lo, hi = value_range(x, ignore)
    if hi <= lo:
        return np.zeros(x.shape, np.float32)
    return (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))


def value_range(arr: np.ndarray, ignore: np.ndarray | None = None) -> tuple[float, float]:
    """(min, max) of ``arr`` without the pixels ``ignore`` marks (every pixel counted when
    it marks them all): the range ``minmax`` scales by, which a writer that puts a change
    back into stored values must scale by too."""
    counted = arr if ignore is None or ignore.all() else arr[~np.broadcast_to(ignore, arr.shape)]
    return float(counted.min()), float(counted.max())
