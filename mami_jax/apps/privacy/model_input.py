"""The evaluation transform as a differentiable function of the decoded pixels.

``Embedder.preprocess`` (and the evaluator) read a row as: decode the T slices of
``slice_indices`` to [0, 1] (``data.decode``), stain-normalise where configured, crop and
resize with PIL's bilinear filter (``transforms.resize_box``), normalise. To optimise or
explain pixels, the same map must be written in JAX. Resizing is linear and separable,
so it is two matrices (``resize_matrices``, measured from PIL itself on basis images),
and the result equals ``preprocess`` to float rounding (tests/test_privacy_model_input.py).

Stain normalisation (pathology) is a per-tile fit that is not differentiable; it enters
as a fixed offset ``S(x0) - x0`` from the original pixels ``x0`` (a straight-through
estimate: exact at the original, identity Jacobian around it). The written image is
always re-read through the real pipeline when it is evaluated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from mami_jax.data import stain
from mami_jax.data.config import ModalitySettings, modality_settings
from mami_jax.data.decode import open_volume
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.transforms import (center_crop_box, check_normalization, resize_box,
                                      slice_indices)

PER_IMAGE_EPS = 1e-3   # transforms.standardize_per_image's eps


@dataclasses.dataclass
class Source:
    """The pixels of one row that the model reads: (T, H, W, C) in [0, 1], C = 1 or 3."""

    row: ManifestRow
    unit: np.ndarray
    slices: np.ndarray      # indices of those T slices in the image or series
    num_slices: int         # slices in the whole image or series
    # which of the T slices this view protects (``read_parts``: a slice in two views is
    # protected by the first); None: all of them
    owned: np.ndarray | None = None


def read_source(row: ManifestRow, settings: ModalitySettings) -> Source:
    """Decodes the slices of ``row`` that evaluation reads (full resolution)."""
    return read_parts(row, settings, every_slice=False)[0]


def slice_groups(num_slices: int, t: int) -> list[np.ndarray]:
    """Groups of ``t`` slice indices that together hold every slice of a series, each
    with one slice per segment of ``transforms.slice_indices`` (so each is a view the
    model could read in training), and one of them exactly what evaluation reads.

    Group k takes the position (k + 1/2) / K of every segment, K = ceil(num_slices / t):
    16 slices read as 2 give (0, 8), (1, 9), ..., (7, 15). When num_slices is not a
    multiple of t a few slices fall in two groups, and the evaluation view may be none of
    them (7 slices read as 2: groups (0, 3), (1, 4), (2, 5), (3, 6), evaluation (1, 5)):
    it is then put first, so that it is optimised, scored and budget-checked as it is
    read (its slices, scaled by their own range, were checked only within other groups
    and the whole series: CT copies with a bright voxel in two slices read at 25 dB under
    a 31 dB budget)."""
    evaluated = slice_indices(num_slices, t)
    if num_slices <= t:
        return [evaluated]
    k = -(-num_slices // t)
    groups = [np.clip(np.floor((np.arange(t) + (j + 0.5) / k) * (num_slices / t)
                               ).astype(np.int64), 0, num_slices - 1) for j in range(k)]
    if any(np.array_equal(g, evaluated) for g in groups):
        return groups
    return [evaluated] + groups


def read_parts(row: ManifestRow, settings: ModalitySettings, every_slice: bool) -> list[Source]:
    """The views of ``row`` that protection optimises: the slices evaluation reads
    (``every_slice`` False, or a series no longer than that), else one view per
    ``slice_groups`` group, which together cover the whole series."""
    volume = open_volume(row.path, value_window=settings.value_window)
    n = volume.num_slices
    groups = (slice_groups(n, settings.slices) if every_slice
              else [slice_indices(n, settings.slices)])
    if len(groups) == 1:
        return [Source(row, volume.read(groups[0]), np.asarray(groups[0]), n)]
    parts, seen = [], set()
    for idx in groups:
        owned = np.asarray([i not in seen for i in idx.tolist()])
        seen.update(idx.tolist())
        parts.append(Source(row, volume.read(idx), np.asarray(idx), n, owned))
    return parts


@functools.lru_cache(maxsize=64)
def resize_matrices(height: int, width: int, box: tuple, size: int):
    """(R_h (size, H), R_w (size, W)) with ``resize_box(x, box, size) == R_h x R_w^T``."""
    def column_response(n_in, axis):
        out = np.zeros((size, n_in), np.float32)
        for j in range(n_in):
            basis = np.zeros((1, height, width, 1), np.float32)
            if axis == 1:
                basis[0, :, j, 0] = 1.0
                out[:, j] = resize_box(basis, box, size)[0, 0, :, 0]
            else:
                basis[0, j, :, 0] = 1.0
                out[:, j] = resize_box(basis, box, size)[0, :, 0, 0]
        return out
    return column_response(height, 0), column_response(width, 1)


class InputMap:
    """Unit pixels (B, T, H, W, C) of one modality and shape -> model input (B, T, S, S, 3)."""

    def __init__(self, settings: ModalitySettings, height: int, width: int):
        aug = settings.augment
        self.size = settings.eval_image_size
        box = center_crop_box(height, width, aug.resize_size, self.size)
        self.rh, self.rw = (jnp.asarray(m) for m in resize_matrices(
            height, width, tuple(float(b) for b in box), self.size))
        self.normalization = aug.normalization
        check_normalization(self.normalization)
        self.stain = settings.stain_normalize
        self.symmetric = settings.eval_symmetry

    def stain_offset(self, unit: np.ndarray) -> np.ndarray:
        """S(x0) - x0 for (B, T, H, W, 3) originals (zeros without stain normalisation)."""
        if not self.stain:
            return np.zeros_like(unit)
        return np.stack([stain.normalize_slices(u) - u for u in unit]).astype(np.float32)

    def __call__(self, x, offset=None):
        if offset is not None:
            x = x + offset
        y = jnp.einsum("sh,bthwc,rw->btsrc", self.rh, x, self.rw)
        if self.normalization == "imagenet":
            from mami_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
            return (y - IMAGENET_MEAN) / IMAGENET_STD
        mean = y.mean(axis=(1, 2, 3), keepdims=True)
        centred = y - mean
        std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=(1, 2, 3), keepdims=True))
        out = centred / (std + PER_IMAGE_EPS)
        return jnp.broadcast_to(out, out.shape[:-1] + (3,)) if out.shape[-1] == 1 else out


def settings_for(data_cfg, modality: str) -> ModalitySettings:
    return modality_settings(data_cfg)[modality]
