"""Image quality of a protected image against its original: PSNR and SSIM.

Both on unit intensities ([0, 1], peak 1), over all slices and channels. SSIM is the
usual one of Wang et al. (2004): Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03,
computed per 2-D slice and channel and averaged.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def psnr_of_rms(rms: float) -> float:
    """PSNR in dB of a root-mean-square change of unit pixels (inf for none)."""
    return math.inf if rms == 0 else -20.0 * math.log10(rms)


def psnr(original, protected) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    a = np.asarray(original, np.float64)
    b = np.asarray(protected, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR of images of shapes {a.shape} and {b.shape}")
    mse = float(np.mean(np.square(a - b)))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def psnr_summary(values) -> dict:
    """Mean and least PSNR over the images that were changed, and how many were left
    unchanged (infinite PSNR: the rank objective leaves an image that every member already
    matches to an impostor as it was; a mean over them would be infinite). Both PSNRs are
    infinite when no image was changed. ``None`` is an unchanged image's PSNR as the
    reports on disk hold it (JSON has no infinity: ``runtime/strict_json.py``)."""
    values = np.array([math.inf if v is None else v for v in values], np.float64)
    changed = values[np.isfinite(values)]
    return {"psnr_db": float(changed.mean()) if changed.size else math.inf,
            "psnr_db_min": float(values.min()), "unchanged": int((~np.isfinite(values)).sum())}


def ssim(original, protected, sigma: float = 1.5) -> float:
    """Mean structural similarity of (..., H, W, C) or (H, W) unit images."""
    a = np.asarray(original, np.float64)
    b = np.asarray(protected, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"SSIM of images of shapes {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    a = a.reshape((-1,) + a.shape[-3:])
    b = b.reshape((-1,) + b.shape[-3:])
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for s in range(a.shape[0]):
        for ch in range(a.shape[-1]):
            x, y = a[s, :, :, ch], b[s, :, :, ch]
            f = lambda z: ndimage.gaussian_filter(z, sigma, mode="reflect")  # noqa: E731
            mx, my = f(x), f(y)
            vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
            m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
            values.append(float(m.mean()))
    return float(np.mean(values))
