"""Keeping the budget's PSNR promise on disk, after the file format's rounding.

The optimised change stays inside its budget (root-mean-square change at most epsilon,
so PSNR >= 20 log10(1 / epsilon)), but a file stores whole units: an int16 NIfTI series
whose read slices span few stored units, an 8-bit PNG or a JPEG adds its own rounding
error on top, and a protected copy can end below the promised PSNR (one CT phantom
series: 29.1 dB for a 30.5 dB budget). ``write_within_budget`` writes the copy, reads it
back, and when the change on disk is larger than epsilon scales the optimised change
down by the room the rounding leaves (the two errors add in squares) and writes again.
"""

from __future__ import annotations

import math

import numpy as np

from mami_jax.apps.privacy.writers import write_protected
from mami_jax.data.decode import open_volume

#: Writes of one copy at most; the rounding of a smaller change is found on each.
MAX_WRITES = 4


def rms_change(original: np.ndarray, written: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(written, np.float64)
                                           - np.asarray(original, np.float64)))))


def write_within_budget(path: str, slices, delta: np.ndarray, out: str,
                        epsilon: float) -> tuple[np.ndarray, float]:
    """Writes ``path`` + ``delta`` (on its read ``slices``) at ``out`` so that the change
    read back from ``out`` has RMS at most ``epsilon`` (unit pixels, both files read over
    ``slices`` as the model's reader reads them). Returns (the change written, its RMS as
    read back). After ``MAX_WRITES`` writes the last one stays, and its RMS says by how
    much it missed (the caller records it)."""
    delta = np.asarray(delta, np.float32)
    original = open_volume(path).read(slices)
    for attempt in range(MAX_WRITES):
        write_protected(path, slices, delta, out)
        on_disk = rms_change(original, open_volume(out).read(slices))
        own = rms_change(0.0, delta)
        if on_disk <= epsilon * (1.0 + 1e-4) or own == 0.0 or attempt == MAX_WRITES - 1:
            return delta, on_disk
        rounding_sq = max(on_disk ** 2 - own ** 2, 0.0)
        room = epsilon ** 2 - rounding_sq
        scale = 0.98 * math.sqrt(room) / own if room > 0 else 0.5
        delta = (delta * min(scale, 0.98)).astype(np.float32)
    raise AssertionError("unreachable")
