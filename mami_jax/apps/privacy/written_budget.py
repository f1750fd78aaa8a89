"""Keeping the budget's PSNR promise on disk, after the file format's rounding.

The optimised change stays inside its budget (root-mean-square change at most epsilon,
so PSNR >= 20 log10(1 / epsilon)), but a file stores whole units: an int16 NIfTI series
whose read slices span few stored units, an 8-bit PNG or a JPEG adds its own rounding
error on top, and a protected copy can end below the promised PSNR (one CT phantom
series read as two slices: 29.1 dB for a 30.5 dB budget). ``write_within_budget`` writes
the copy, reads it back as the model's reader reads it, and while the change on disk is
larger than epsilon scales the optimised change down and writes again.

An L-infinity budget (``perturb.norm = "linf"``: no pixel changes by more than epsilon) is
kept the same way, pixel by pixel: rounding to the nearest stored value moves a pixel changed
by epsilon up to half a stored step beyond it (an 8-bit PNG at epsilon 0.03: 0.0314 on half
its pixels), so while the largest change on disk exceeds epsilon the change is clipped
to a bound below epsilon, lowered by twice the overshoot, then four times, and so on: only
the pixels at the bound move, and the bound reaches the stored value below within the
writes allowed unless the overshoot is under 1/64 of a step.
"""

from __future__ import annotations

import numpy as np

from typing import NamedTuple

from mami_jax.apps.privacy.writers import write_protected
from mami_jax.data.decode import open_volume

#: Writes of one copy at most; the rounding of a smaller change is found on each.
MAX_WRITES = 6


def rms_change(original: np.ndarray, written: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(written, np.float64)
                                           - np.asarray(original, np.float64)))))


class Written(NamedTuple):
    """What ``write_within_budget`` wrote: the change it wrote (unit pixels, before the
    file's rounding) and, read back from the file, the largest RMS change and the largest
    change of one pixel."""
    change: np.ndarray
    rms: float
    max_abs: float


def write_within_budget(path: str, slices, delta: np.ndarray, out: str, epsilon: float,
                        views=(), value_window=None, norm: str = "l2") -> Written:
    """Writes ``path`` + ``delta`` (on its read ``slices``) at ``out`` so that the change
    read back from ``out`` is within ``epsilon`` (unit pixels) in ``norm``: RMS at most
    epsilon ("l2"), or no pixel beyond it ("linf", which also keeps the RMS), over
    ``slices`` read together and over each of ``views`` (slice index arrays) read on its
    own, as a reader reads them: a reader may scale intensities by the slices it reads
    (NIfTI: their min and max), so a few slices of small range see the file's rounding
    larger than the whole series does; ``value_window``: the fixed range the model reads
    this modality through (read back through it too). After ``MAX_WRITES`` writes the last
    one stays, and the measures say by how much it missed (the caller records them)."""
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm={norm!r}: expected 'l2' or 'linf'")
    delta = np.asarray(delta, np.float32)
    groups = [np.asarray(slices)] + [np.asarray(v) for v in views]
    originals = [open_volume(path, value_window=value_window).read(g) for g in groups]
    bound = float(epsilon)
    for attempt in range(MAX_WRITES):
        write_protected(path, slices, delta, out, value_window)
        written = open_volume(out, value_window=value_window)
        changes = [written.read(g).astype(np.float64) - o for o, g in zip(originals, groups)]
        rms = max(rms_change(0.0, c) for c in changes)
        max_abs = max(float(np.abs(c).max()) if c.size else 0.0 for c in changes)
        measure = max_abs if norm == "linf" else rms
        own = rms_change(0.0, delta)
        if measure <= epsilon * (1.0 + 1e-4) or own == 0.0 or attempt == MAX_WRITES - 1:
            return Written(delta, rms, max_abs)
        if norm == "l2":
            # The rounding's share does not shrink with the change: step down by the whole
            # excess each time (three writes take a series from 29.1 to 30.5 dB).
            delta = (delta * (0.98 * epsilon / rms)).astype(np.float32)
        else:
            bound = max(min(bound, epsilon - (max_abs - epsilon) * 2.0 ** (attempt + 1)), 0.0)
            delta = np.clip(delta, -bound, bound).astype(np.float32)
    raise AssertionError("unreachable")
