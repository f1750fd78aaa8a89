"""Where a batch's change may go: each view's own slices, less the pixels a reader's range
hangs on.

A series is protected as several views (``model_input.read_parts``), and a slice in two
views is changed by the first only (``owned_mask``); a reader that scales intensities by
the range of the slices it reads would rescale a whole view when its darkest or
brightest pixel moved (``range_keeping_mask``); one that reads through a fixed value window
rescales nothing, and every pixel may change.
"""

from __future__ import annotations

import numpy as np


def owned_mask(parts, shape) -> np.ndarray | None:
    """The perturbation mask of a batch of views (``model_input.read_parts``): zero on a
    slice another view of the same series protects; None when every view owns all its
    slices (the plain case)."""
    if all(p.owned is None or p.owned.all() for p in parts):
        return None
    owned = np.stack([np.ones(len(p.slices), bool) if p.owned is None else p.owned
                      for p in parts])
    return np.broadcast_to(owned[:, :, None, None, None], shape).astype(np.float32)


def range_keeping_mask(x0: np.ndarray) -> np.ndarray:
    """Ones (B, T, H, W, C) but for each view's darkest and brightest pixel (the first of
    each), which stay as they are. A reader that scales a series by the range of the slices
    it reads (NIfTI: min-max) would otherwise rescale the whole view when the change lowers
    its brightest or raises its darkest pixel, a change the budget never counted (a CT
    series read as two slices ended at 29.1 dB for a 30.5 dB budget)."""
    b = len(x0)
    flat = np.asarray(x0).reshape(b, -1)
    mask = np.ones_like(flat, np.float32)
    mask[np.arange(b), flat.argmin(1)] = 0.0
    mask[np.arange(b), flat.argmax(1)] = 0.0
    return mask.reshape(x0.shape)


def change_mask(parts, x0: np.ndarray, value_window=None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(where a batch's change may go, ``owned_mask``): each view's own slices
    (``owned_mask``) less its darkest and brightest pixel (``range_keeping_mask``), these
    too where the views are read through ``value_window`` (a fixed range: no view's range
    is read from its pixels)."""
    owned = owned_mask(parts, x0.shape)
    keep = (np.ones(x0.shape, np.float32) if value_window is not None
            else range_keeping_mask(x0))
    return keep * (1.0 if owned is None else owned), owned
