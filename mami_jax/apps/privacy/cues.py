"""Identity-cue maps: which pixels drive the match between an image and its patient.

Both maps explain the match score of ``objective`` under one model, on the unit pixels
the model reads (T, H, W), with the own original's weight at ``CUE_OWN_WEIGHT`` = 0: what
they show is what matches the image to its patient's *other* images (protection's score
also holds the similarity to the own original, ``perturb.own_weight``, which changes the
occlusion map by up to 0.09 and is no cue of identity). An image whose patient has no other
image of its modality is scored by its own original alone: its occlusion map shows what
changes its embedding, and its gradient map is empty (``has_other_images``), since that
score is at its maximum at the image itself and its gradient there is float rounding
(scaled to [0, 1] it drew noise).

- ``gradient_maps``: |d score / d pixel| summed over colour channels, smoothed with a
  Gaussian of ``smooth`` pixels (a raw gradient is speckled at single-pixel scale);
- ``occlusion_maps``: the drop of the score when a ``patch`` x ``patch`` square (every
  ``stride`` pixels, all slices at once, a last row and column of squares flush with the
  far edges, so every pixel is covered) is replaced by the image's mean intensity,
  averaged over the squares covering each pixel. Slower, but it measures what removing
  a region does rather than a local slope. A drop under ``NOISE_FLOOR`` is float32
  rounding of the network, not a cue, and counts as none: scaled to [0, 1], such drops
  drew a map of noise whose pattern changed with the CPU it ran on.

Each map is scaled to [0, 1] per image (its maximum; an all-zero map stays zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage


#: The smallest change of a match score (a cosine similarity, of order 1) that an occlusion
#: map counts: float32 embeddings through a ViT round scores at about 1e-7.
NOISE_FLOOR = 1e-6


#: The weight of the own original in the score the maps explain (``objective.match_scores``).
CUE_OWN_WEIGHT = 0.0


def has_other_images(refs) -> np.ndarray:
    """(B,) whether each image of ``refs`` (``references.References``) has another image of
    its patient to be matched against."""
    return np.asarray(refs.mask).sum(-1) > 0


def box_starts(size: int, patch: int, stride: int) -> list[int]:
    """Where the occlusion squares start along a side of ``size`` pixels: every ``stride``,
    and one flush with the far edge where the stride does not reach it."""
    if patch < 1 or stride < 1 or stride > patch:
        raise ValueError(f"occlusion patch {patch} and stride {stride}: both must be >= 1 "
                         "and the stride at most the patch (else pixels between squares "
                         "are never occluded)")
    last = max(size - patch, 0)
    starts = list(range(0, last + 1, stride))
    return starts if starts[-1] == last else starts + [last]


def _normalise(maps: np.ndarray) -> np.ndarray:
    top = maps.reshape(len(maps), -1).max(1)
    return (maps / np.where(top > 0, top, 1.0)[:, None, None, None]).astype(np.float32)


def gradient_maps(score_fn, params, x, offset, refs, smooth: float) -> np.ndarray:
    """(B, T, H, W) gradient cue maps of unit pixels x (B, T, H, W, C)."""
    def total(xx):
        return score_fn(params, xx, offset, refs.arrays(), jax.random.key(0)).sum()
    g = np.abs(np.asarray(jax.jit(jax.grad(total))(jnp.asarray(x)))).sum(-1)
    g[~has_other_images(refs)] = 0.0
    if smooth > 0:
        g = ndimage.gaussian_filter(g, sigma=(0, 0, smooth, smooth))
    return _normalise(g)


def occlusion_maps(score_fn, params, x, offset, refs, patch: int, stride: int,
                   chunk: int = 64) -> np.ndarray:
    """(B, T, H, W) occlusion cue maps of unit pixels x (B, T, H, W, C)."""
    x = np.asarray(x, np.float32)
    b, t, h, w, c = x.shape
    tops, lefts = box_starts(h, patch, stride), box_starts(w, patch, stride)
    boxes = [(y, z) for y in tops for z in lefts]
    scorer = jax.jit(lambda xx, off, arrays: score_fn(params, xx, off, arrays, jax.random.key(0)))
    out = np.zeros((b, t, h, w), np.float64)
    cover = np.zeros((h, w), np.float64)
    for (y, z) in boxes:
        cover[y:y + patch, z:z + patch] += 1
    for i in range(b):
        base = float(scorer(x[i:i + 1], offset[i:i + 1], refs.at(i))[0])
        fill = x[i].mean(axis=(0, 1, 2))
        others, mask, own, center, target, impostors, impostor_mask = refs.at(i)
        drops = []
        for s in range(0, len(boxes), chunk):
            part = boxes[s:s + chunk]
            n = min(chunk, len(boxes))   # a fixed batch: one compilation (tail padded)
            batch = np.repeat(x[i:i + 1], n, 0)
            for k, (y, z) in enumerate(part):
                batch[k, :, y:y + patch, z:z + patch, :] = fill
            arrays = ([np.repeat(o, n, 0) for o in others], np.repeat(mask, n, 0),
                      [np.repeat(o, n, 0) for o in own], center,
                      [np.repeat(o, n, 0) for o in target],
                      [np.repeat(o, n, 0) for o in impostors], np.repeat(impostor_mask, n, 0))
            sc = np.asarray(scorer(batch, np.repeat(offset[i:i + 1], n, 0), arrays))[:len(part)]
            drop = base - sc
            drops.extend(np.where(np.abs(drop) < NOISE_FLOOR, 0.0, drop).tolist())
        for (y, z), d in zip(boxes, drops):
            out[i, :, y:y + patch, z:z + patch] += d
    out /= np.maximum(cover, 1)[None, None]
    return _normalise(np.maximum(out, 0.0))


def overlay_png(path: str, image: np.ndarray, maps: dict, title: str) -> None:
    """A PNG: the image (first slice), then each map as a heat map over it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mami_jax.runtime.atomic_files import write_atomic
    shown = image[0] if image.shape[-1] == 3 else image[0, :, :, 0]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.4))
    axes[0].imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=1)
    axes[0].set_title("image")
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", vmin=0, vmax=1)
        ax.imshow(m[0], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{name} cues")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80))
    plt.close(fig)
