"""Which tiles of a whole-slide image to cut, at which pyramid level, at which size.

Tiles are cut at a physical resolution, not at a pyramid level: ``--mpp 0.5`` (microns
per pixel, about 20x) gives tiles that show the same tissue area on slides scanned at
0.25 (40x) and at 0.5, which re-identification across scanners needs. A tile of ``tile``
pixels then covers ``tile * mpp / slide_mpp`` level-0 pixels (its footprint); it is read
from the coarsest level that is still at least as fine as the target (the least reading
for the same detail) and resized to ``tile`` pixels. A target finer than the slide's own
resolution would invent detail and is refused. ``mpp=0`` cuts level-0 pixels as stored.

The grid: non-overlapping footprints from the slide's top-left, whole tiles only; a tile
is kept when the tissue share of its footprint reaches ``min_tissue``
(``slide_tissue``); with ``max_tiles``, a slide with more kept tiles gives a random
``max_tiles`` of them, drawn from ``seed`` and the slide's name (the same tiles on every
run), in reading order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from mami_jax.data.slide_tissue import tissue_fractions

#: A target this much finer than the slide (rounding in the metadata) is still the slide's.
MPP_TOLERANCE = 1.02


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """The tiles of one slide: read ``read_size`` pixels at ``level`` from each level-0
    ``position`` (x, y) and resize to ``tile``; ``tissue``: each one's tissue share."""
    level: int
    read_size: int
    footprint: int
    tile: int
    positions: tuple[tuple[int, int], ...]
    tissue: tuple[float, ...]
    grid_tiles: int           # whole tiles on the slide, before the tissue rule


def reading_level(downsamples: Sequence[float], wanted: float) -> int:
    """The coarsest pyramid level whose downsample is at most ``wanted`` (level 0 when
    every level is coarser)."""
    fine_enough = [i for i, d in enumerate(downsamples) if d <= wanted * 1.0001]
    return max(fine_enough, key=lambda i: downsamples[i]) if fine_enough else 0


def footprint_of(tile: int, mpp: float, slide_mpp: float | None, name: str) -> int:
    """Level-0 pixels a tile covers; ValueError naming the slide when ``mpp`` cannot be
    met (no resolution in the slide's metadata, or a target finer than the slide)."""
    if mpp == 0:
        return tile
    if not slide_mpp:
        raise ValueError(f"{name}: no resolution in the slide's metadata (openslide.mpp-x); "
                         "--mpp 0 cuts its level-0 pixels as stored")
    if mpp * MPP_TOLERANCE < slide_mpp:
        raise ValueError(f"{name}: scanned at {slide_mpp:g} microns per pixel, coarser than "
                         f"--mpp {mpp:g}; give --mpp {slide_mpp:g} or more")
    return max(1, int(round(tile * mpp / slide_mpp)))


def plan_tiles(name: str, dimensions: tuple[int, int], downsamples: Sequence[float],
               slide_mpp: float | None, *, tile: int, mpp: float, mask: np.ndarray,
               mask_scale: float, min_tissue: float, max_tiles: int, seed: int) -> TilePlan:
    """The plan of the module docstring for a slide of level-0 ``dimensions`` (width,
    height); ``mask``: its tissue mask, ``mask_scale`` level-0 pixels per mask pixel."""
    footprint = footprint_of(tile, mpp, slide_mpp, name)
    level = reading_level(downsamples, footprint / tile)
    read_size = max(1, int(round(footprint / downsamples[level])))
    columns, rows = dimensions[0] // footprint, dimensions[1] // footprint
    if columns == 0 or rows == 0:
        return TilePlan(level, read_size, footprint, tile, (), (), 0)
    share = tissue_fractions(mask, mask_scale, footprint, columns, rows)
    r, c = np.nonzero(share >= min_tissue)
    if max_tiles and len(r) > max_tiles:
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        chosen = np.sort(rng.choice(len(r), size=max_tiles, replace=False))
        r, c = r[chosen], c[chosen]
    positions = tuple((int(x) * footprint, int(y) * footprint) for y, x in zip(r, c))
    return TilePlan(level, read_size, footprint, tile, positions,
                    tuple(float(share[y, x]) for y, x in zip(r, c)), columns * rows)
