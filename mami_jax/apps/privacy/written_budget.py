"""Keeping the budget's PSNR promise on disk, after the file format's rounding.

The optimised change stays inside its budget (root-mean-square change at most epsilon,
so PSNR >= 20 log10(1 / epsilon)), but a file stores whole units: an int16 NIfTI series
whose read slices span few stored units, an 8-bit PNG or a JPEG adds its own rounding
error on top, and a protected copy can end below the promised PSNR (one CT phantom
series read as two slices: 29.1 dB for a 30.5 dB budget). ``write_within_budget`` writes
the copy, reads it back as the model's reader reads it, and while the change on disk is
larger than epsilon scales the optimised change down and writes again.
"""

from __future__ import annotations

import numpy as np

from mami_jax.apps.privacy.writers import write_protected
from mami_jax.data.decode import open_volume

#: Writes of one copy at most; the rounding of a smaller change is found on each.
MAX_WRITES = 6


def rms_change(original: np.ndarray, written: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(written, np.float64)
                                           - np.asarray(original, np.float64)))))


def write_within_budget(path: str, slices, delta: np.ndarray, out: str, epsilon: float,
                        views=(), value_window=None) -> tuple[np.ndarray, float]:
    """Writes ``path`` + ``delta`` (on its read ``slices``) at ``out`` so that the change
    read back from ``out`` has RMS at most ``epsilon`` (unit pixels), over ``slices`` read
    together and over each of ``views`` (slice index arrays) read on its own, as a reader
    reads them: a reader may scale intensities by the slices it reads (NIfTI: their min and
    max), so a few slices of small range see the file's rounding larger than the whole
    series does; ``value_window``: the fixed range the model reads this modality through
    (read back through it too). Returns (the change written, the largest of those RMS). After
    ``MAX_WRITES`` writes the last one stays, and the RMS says by how much it missed (the
    caller records it)."""
    delta = np.asarray(delta, np.float32)
    groups = [np.asarray(slices)] + [np.asarray(v) for v in views]
    originals = [open_volume(path, value_window=value_window).read(g) for g in groups]
    for attempt in range(MAX_WRITES):
        write_protected(path, slices, delta, out, value_window)
        written = open_volume(out, value_window=value_window)
        on_disk = max(rms_change(o, written.read(g)) for o, g in zip(originals, groups))
        own = rms_change(0.0, delta)
        if on_disk <= epsilon * (1.0 + 1e-4) or own == 0.0 or attempt == MAX_WRITES - 1:
            return delta, on_disk
        # The rounding's share does not shrink with the change: step down by the whole
        # excess each time (three writes take a series from 29.1 to 30.5 dB).
        delta = (delta * (0.98 * epsilon / on_disk)).astype(np.float32)
    raise AssertionError("unreachable")
