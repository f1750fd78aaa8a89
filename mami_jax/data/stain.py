"""Macenko stain normalisation for H&E tiles.

Two biopsies of the same patient, cut and stained months apart or in different
labs, differ more in colour (haematoxylin and eosin amounts, dye batches, the
scanner's white balance) than two patients' tissue does; a re-identification
model then learns to match stain, not tissue. Stain normalisation, standard in
computational pathology, maps every tile to one reference stain before the
model sees it (Macenko et al., "A method for normalizing histology slides for
quantitative analysis", ISBI 2009):

1. optical density ``OD = -log(I / I0)`` per pixel and channel, where ``I0`` is
   the white of empty glass (the brightest pixels of the tile, per channel, so
   that a white-balance shift is undone too);
2. pixels whose OD vector is shorter than ``beta`` are glass and are left out
   of the fit (a per-channel threshold would also drop pale eosin, whose red and
   blue optical densities are small);
3. the two principal directions of the tissue pixels' OD span the stain plane;
   the angles of the pixels in that plane, at the ``alpha`` and
   ``100 - alpha`` percentiles, give the two stain vectors (haematoxylin is the
   one with more red optical density);
4. every pixel's stain concentrations are solved by least squares, scaled so
   their 99th percentiles equal the reference's, and recombined with the
   reference stain vectors.

A tile with fewer than ``min_tissue_pixels`` tissue pixels (blank glass) has no
stain to estimate and is returned unchanged.
"""

from __future__ import annotations

import numpy as np

# Reference stain vectors (columns: haematoxylin, eosin; rows R, G, B) and 99th-percentile
# concentrations: the values commonly used with Macenko's method.
REFERENCE_STAINS = np.array([[0.5626, 0.2159],
                             [0.7201, 0.8012],
                             [0.4062, 0.5581]], np.float64)
REFERENCE_MAX_CONCENTRATION = np.array([1.9705, 1.0308], np.float64)
FIT_PIXELS = 16384   # at most about this many pixels (an even stride) estimate the stains


def macenko_normalize(image: np.ndarray, *, alpha: float = 1.0, beta: float = 0.15,
                      min_tissue_pixels: int = 64) -> np.ndarray:
    """RGB (H, W, 3) float in [0, 1] -> the same tile in the reference stain, float32 in [0, 1]."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"stain normalisation needs an RGB image (H, W, 3), got shape {image.shape}")
    eps = 1.0 / 255.0   # one grey level: keeps log finite on black pixels
    rgb = image.reshape(-1, 3).astype(np.float64)
    stride = max(1, len(rgb) // FIT_PIXELS)      # the fit needs statistics, not every pixel
    white = np.percentile(rgb[::stride], 99.5, axis=0)
    od = -np.log(np.clip((rgb + eps) / (white + eps), 1e-6, 1.0))
    fit = od[::stride]
    tissue = fit[np.linalg.norm(fit, axis=1) > beta]
    if len(tissue) < min_tissue_pixels:
        return image.astype(np.float32)
    _, vectors = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vectors[:, 1:3]                                       # the two largest eigenvalues
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)   # point into positive OD
    proj = tissue @ plane
    angles = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(angles, (alpha, 100.0 - alpha))
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2], axis=1) if v1[0] > v2[0] else np.stack([v2, v1], axis=1)
    concentrations = np.linalg.pinv(stains) @ od.T                   # (2, N) least squares
    max_c = np.percentile(concentrations[:, ::stride], 99, axis=1)
    scale = REFERENCE_MAX_CONCENTRATION / np.maximum(max_c, 1e-6)
    out = np.exp(-REFERENCE_STAINS @ (concentrations * scale[:, None]))
    return np.clip(out.T, 0.0, 1.0).astype(np.float32).reshape(image.shape)


def normalize_slices(volume: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float in [0, 1]: every slice stain-normalised on its own."""
    if volume.ndim != 4 or volume.shape[-1] != 3:
        raise ValueError(f"stain normalisation needs RGB slices (T, H, W, 3), got shape {volume.shape}")
    return np.stack([macenko_normalize(s) for s in volume])
