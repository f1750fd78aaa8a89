"""Putting a change of unit pixels ([0, 1]) back into a file's stored values.

Every protected-copy writer (``writers``, ``dicom_writer``) maps the protection's change
through the inverse of the reader's intensity rule and then through these helpers, which
keep what the reader relies on: the dtype and its range, and the pixels that hold the
minimum and maximum a min-max reader scales by. Under a fixed value window
(``data.modalities.<m>.value_window``) nothing depends on the range read, and a pixel the
window clips moves only where the change brings it into view (``windowed_change``).
"""

from __future__ import annotations

import numpy as np


def apply_change(stored: np.ndarray, change: np.ndarray, lo=None, hi=None,
                 limits: tuple[int, int] | None = None,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """``stored + change`` in ``stored``'s dtype: rounded, clipped to the dtype's range and
    to [lo, hi] when given (the range of every slice read together, in stored units), with
    the pixel that holds lo and the one that holds hi kept as they were, so the reader's
    min-max range stays. A slice that holds neither (one frame of a series) keeps none:
    setting its own extremes to the series' would paint a dot of air or metal into it.
    ``limits``: the stored values' own range where it is narrower than the dtype's (a
    DICOM's BitsStored: a 12-bit value above 4095 is read with its high bits dropped).
    ``keep`` (a mask like ``stored``): pixels kept exactly as stored and left out of the
    extremes (a DICOM's padding, which min-max does not count)."""
    new = stored.astype(np.float64) + change
    if np.issubdtype(stored.dtype, np.integer):
        info = np.iinfo(stored.dtype)
        floor, ceil = limits if limits is not None else (info.min, info.max)
        new = np.clip(np.round(new), max(floor, info.min), min(ceil, info.max))
    if lo is not None:
        new = np.clip(new, lo, hi)
        flat, values = new.reshape(-1), stored.reshape(-1).astype(np.float64)  # flat: a view
        counted = np.ones(values.shape, bool) if keep is None else ~keep.reshape(-1)
        slack = 1e-9 * max(1.0, abs(float(lo)), abs(float(hi)))
        if counted.any():
            for i, extreme in ((int(np.argmin(np.where(counted, values, np.inf))), lo),
                               (int(np.argmax(np.where(counted, values, -np.inf))), hi)):
                if abs(float(values[i]) - float(extreme)) <= slack:
                    flat[i] = values[i]
    if keep is not None:
        new = np.where(keep, stored, new)
    return new.astype(stored.dtype)


def per_slice_change(delta: np.ndarray, slices, n: int) -> dict[int, np.ndarray]:
    """delta (T, H, W, C) of the read slices -> {slice index: mean change} (repeats averaged)."""
    out: dict[int, list] = {}
    for t, i in enumerate(np.asarray(slices).tolist()):
        if not 0 <= i < n:
            raise ValueError(f"slice {i} out of range for {n} slices")
        out.setdefault(int(i), []).append(delta[t])
    return {i: np.mean(v, axis=0) for i, v in out.items()}


def windowed_change(values: np.ndarray, change: np.ndarray,
                    value_window: tuple[float, float]) -> np.ndarray:
    """The change of ``values`` (in the window's units: a CT's Hounsfield units) that makes
    them read, through ``image_values.window``, as their unit pixels plus ``change``. A
    pixel inside the window moves by ``change * (hi - lo)``. One the window clips (air
    below ``lo``, bone above ``hi``) reads as 0 or 1 however far outside it lies: it keeps
    its value where the change leaves it there (a darker air pixel is still 0) and is set
    to the value that shows the change where the change brings it into view."""
    lo, hi = (float(v) for v in value_window)
    v = np.asarray(values, np.float64)
    unit = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    target = np.clip(unit + np.asarray(change, np.float64), 0.0, 1.0)
    return np.where(target != unit, lo + target * (hi - lo) - v, 0.0)


def plain_pixels_changed(arrays: list, changes: list,
                         value_window: tuple[float, float] | None = None) -> list:
    """Each of ``arrays`` (image files' pixels read together: a 2-D image, or a slice
    folder's read slices) with its unit ``changes`` (shaped like it: ``channels``) put
    back under the decoder's rule for plain pixels: /255 for 8 bits, else min-max over
    them all, or ``value_window`` where the modality sets one."""
    if value_window is not None and arrays[0].dtype not in (np.uint8, np.bool_):
        return [apply_change(a, windowed_change(a, c, value_window))
                for a, c in zip(arrays, changes)]
    scale, lo, hi = unit_scale(arrays)
    return [apply_change(a, c * scale, lo, hi) for a, c in zip(arrays, changes)]


def unit_scale(arrays) -> tuple[float, float | None, float | None]:
    """(stored units per unit intensity, lo, hi) of the decoder's rule for plain pixels."""
    dtype = arrays[0].dtype
    if dtype == np.uint8:
        return 255.0, None, None
    if dtype == np.bool_:
        raise ValueError("1-bit images cannot carry a protection")
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    return max(hi - lo, 1e-12), lo, hi


def channels(change: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(H, W, C) change shaped like ``stored`` ((H, W) grey or (H, W, 3))."""
    if stored.ndim == 2:
        return change.mean(axis=-1)
    if change.shape[-1] == 1:
        return np.repeat(change, stored.shape[-1], axis=-1)
    return change
