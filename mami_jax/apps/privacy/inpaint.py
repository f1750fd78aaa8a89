"""Removal of the strongest identity regions (identity removal, method b).

The ``region_fraction`` of pixels (per slice) with the highest identity-cue value
(``cues``) are removed and filled by diffusion from their surroundings: each of
``iterations`` steps replaces every removed pixel by the mean of its 4 neighbours
(edges replicated), starting from the mean of the kept pixels. The result is the
harmonic fill of the hole (the smoothest surface matching its border), so the
region keeps the local intensity and loses the fine structure a re-ID model matches on.
"""

from __future__ import annotations

import numpy as np


def region_mask(maps: np.ndarray, fraction: float) -> np.ndarray:
    """(B, T, H, W) bool: the top ``fraction`` of pixels of each slice's map; none of a
    slice whose map is all zero (no cue: its top pixels would be the first in memory, a
    block in the top rows)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"inpaint.region_fraction={fraction}: expected 0 <= fraction < 1")
    b, t, h, w = maps.shape
    flat = maps.reshape(b, t, -1)
    k = int(round(fraction * h * w))
    mask = np.zeros_like(flat, bool)
    if k > 0:
        top = np.argsort(-flat, axis=-1, kind="stable")[..., :k]
        np.put_along_axis(mask, top, True, axis=-1)
        mask &= (flat.max(-1) > 0)[..., None]
    return mask.reshape(maps.shape)


def diffuse_fill(x: np.ndarray, mask: np.ndarray, iterations: int) -> np.ndarray:
    """x (B, T, H, W, C) with the pixels of ``mask`` (B, T, H, W) filled by diffusion."""
    out = np.asarray(x, np.float32).copy()
    m = mask[..., None]
    keep = ~m
    mean = (out * keep).sum(axis=(2, 3), keepdims=True) / np.maximum(keep.sum(axis=(2, 3), keepdims=True), 1)
    out = np.where(m, mean, out)
    for _ in range(int(iterations)):
        p = np.pad(out, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        avg = 0.25 * (p[:, :, :-2, 1:-1] + p[:, :, 2:, 1:-1] + p[:, :, 1:-1, :-2] + p[:, :, 1:-1, 2:])
        out = np.where(m, avg, out)
    return out


def inpaint(x: np.ndarray, maps: np.ndarray, fraction: float, iterations: int) -> np.ndarray:
    """The change (B, T, H, W, C) that removes and fills the strongest cue regions."""
    mask = region_mask(maps, fraction)
    return diffuse_fill(x, mask, iterations) - np.asarray(x, np.float32)
