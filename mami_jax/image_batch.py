"""What a model embeds: a batch of preprocessed images, (B, T, H, W, 3), float and finite,
H and W multiples of the patch.

The model itself (``models.mami.check_images``, on any array with a shape, traced ones
included) and both embedders' ``embed`` (JAX's ``inference.Embedder`` and PyTorch's
``TorchEmbedder``, on the arrays a user hands them) check it, so a wrong batch is named
before the model sees it: raw 0-255 pixels ran through and gave a wrong embedding, a NaN
gave a NaN embedding, PyTorch cropped a side that was not a multiple of the patch without
a word, and an empty batch failed deep inside a reshape. Nothing here imports JAX or torch.
"""

from __future__ import annotations

import numpy as np


def shape_problem(shape, patch_size: int) -> str | None:
    """Why ``shape`` is no batch of images for a model of ``patch_size``, or None."""
    expected = f"(B, T, H, W, 3) with H and W multiples of patch_size={patch_size}"
    if shape is None or len(shape) != 5:
        return (f"MaMI expects images of shape {expected}; got shape {shape}. "
                "Add a slice axis T=1 for 2-D images.")
    if shape[-1] != 3:
        return (f"MaMI expects images of shape {expected}; got {shape[-1]} channels in shape "
                f"{shape}. Replicate grey images to 3 channels.")
    if shape[2] % patch_size or shape[3] % patch_size:
        return f"MaMI expects images of shape {expected}; got H={shape[2]}, W={shape[3]} in shape {shape}."
    if min(shape[:4]) < 1:
        return f"MaMI expects images of shape {expected}; got empty shape {shape}"
    return None


def checked_batch(images, patch_size: int) -> np.ndarray:
    """``images`` as float32 (B, T, H, W, 3), or ValueError naming what is wrong: the shape
    (``shape_problem``), integer values (raw pixels, not the preprocessed view), or values
    that are NaN or infinite."""
    arr = np.asarray(images)
    problem = shape_problem(arr.shape, patch_size)
    if problem:
        raise ValueError(problem)
    if arr.dtype.kind in "iub" or arr.dtype == object:     # (bfloat16 is kind "V")
        raise ValueError(f"images: {arr.dtype} values, as raw pixels are; embed takes "
                         "preprocessed float images (preprocess(row)), or use embed_files / "
                         "embed_rows, which read image files as evaluation does")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = sorted({int(i) for i in np.nonzero(bad)[0]})
        raise ValueError(f"images: {int(bad.sum())} values are NaN or infinite (in image(s) "
                         f"{where[:5]}{' ...' if len(where) > 5 else ''} of the batch)")
    return arr
