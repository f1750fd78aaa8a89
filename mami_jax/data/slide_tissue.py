"""Where a whole-slide image holds tissue: a mask of a small thumbnail of the slide.

A stained section (H&E and most immunostains) is coloured; the glass around it is white
or light grey, that is unsaturated. The mask is the thumbnail's HSV saturation,
``(max - min) / max`` over the three channels, above a threshold chosen per slide by
Otsu's method (the split of the saturation histogram with the largest between-class
variance), never below ``MIN_SATURATION`` so that a slide of clean glass and faint dust
is not split in two by noise, and never above ``MAX_SATURATION``: Otsu splits the
histogram in two, and of glass, pale (eosin-rich) and dense (haematoxylin-rich) tissue
it split pale from dense, the wider gap, so all of the pale tissue was dropped as glass
(from 60 % glass down to 10 %); a section without glass was cut in half the same way.
Pixels darker than ``MIN_VALUE`` (black borders of some scanners, where saturation is
noise) are not tissue.

A tile keeps when the share of its footprint that is tissue reaches the tiler's
``--min-tissue``; ``tissue_fractions`` gives that share for every cell of a grid.
"""

from __future__ import annotations

import numpy as np

#: Saturation below this is glass, whatever the histogram says.
MIN_SATURATION = 0.05
#: Saturation above this is tissue, whatever the histogram says: below pale eosin-stained
#: tissue's (RGB 235, 190, 220: 0.19), above glass with a scanner's colour noise (under 0.1)
#: and a scanner's dark grey border (40, 40, 46: 0.13), which Otsu's split left out.
MAX_SATURATION = 0.14
#: Value (max channel, 0-1) below this is a scanner's black border, not tissue.
MIN_VALUE = 0.1


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold in [0, 1] that splits ``values`` (in [0, 1]) into the two classes of
    largest between-class variance; 0 for constant values."""
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1e-12)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    if not np.any(between > 0):
        return 0.0
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: which pixels of an (H, W, 3) uint8 thumbnail are tissue."""
    x = rgb[..., :3].astype(np.float32) / 255.0
    value = x.max(axis=-1)
    saturation = (value - x.min(axis=-1)) / np.maximum(value, 1e-6)
    lit = value >= MIN_VALUE
    otsu = otsu_threshold(saturation[lit]) if lit.any() else 0.0
    threshold = min(max(otsu, MIN_SATURATION), MAX_SATURATION)
    return lit & (saturation > threshold)


def tissue_fractions(mask: np.ndarray, scale: float, footprint: int, columns: int,
                     rows: int) -> np.ndarray:
    """(rows, columns): the share of tissue in each grid cell of ``footprint`` level-0
    pixels, cell (r, c) starting at level-0 (c * footprint, r * footprint); ``mask`` is
    the thumbnail's, ``scale`` level-0 pixels per thumbnail pixel. A cell is read from
    the thumbnail pixels it covers (at least one)."""
    def edges(n: int, size: int):
        at = np.clip(np.rint(np.arange(n + 1) * footprint / scale), 0, size).astype(int)
        start = np.minimum(at[:-1], size - 1)
        return start, np.maximum(at[1:], start + 1)

    (y0, y1), (x0, x1) = edges(rows, mask.shape[0]), edges(columns, mask.shape[1])
    total = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    total[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    tissue = (total[y1][:, x1] - total[y0][:, x1] - total[y1][:, x0] + total[y0][:, x0])
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return (tissue / area).astype(np.float32)
