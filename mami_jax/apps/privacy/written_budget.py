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
its pixels), and a lossy format changes pixels whatever the change is (a JPEG copy of the
unchanged image differs from it by up to 3/255 even at quality 100) and more the larger and
finer the change. So while the largest change on disk exceeds epsilon the change is clipped
to a bound: the copy of the unchanged image is written once, its largest change is the
format's floor, and the largest change on disk is taken as the floor plus the written bound
grown by the format; the next bound is the one that would land 2 % inside epsilon, the
growth measured again on every write. A floor at or above epsilon leaves no room for any
change and is a ``BudgetError`` naming the image. (The bound was lowered by twice the
overshoot: on a JPEG that reached 0 on the first pass, and the copy was the original
re-encoded, unprotected, without a word.) ``shrunk_change_warning`` names the copies that
carry under half of their optimised change, whatever the reason.
"""

from __future__ import annotations

import numpy as np

from typing import NamedTuple

from mami_jax.apps.privacy.writers import write_protected
from mami_jax.data.decode import open_volume

#: Writes of one copy at most; the rounding of a smaller change is found on each.
MAX_WRITES = 6

#: A copy carrying less than this share of its optimised change is named by
#: ``shrunk_change_warning``.
SHRUNK_SHARE = 0.5


class BudgetError(ValueError):
    """The file format alone changes an image by more than its L-infinity budget."""


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

    def write(change):
        write_protected(path, slices, change, out, value_window)
        written = open_volume(out, value_window=value_window)
        changes = [written.read(g).astype(np.float64) - o for o, g in zip(originals, groups)]
        return (max(rms_change(0.0, c) for c in changes),
                max(float(np.abs(c).max()) if c.size else 0.0 for c in changes))

    optimised, floor = delta, None
    for attempt in range(MAX_WRITES):
        rms, max_abs = write(delta)
        measure = max_abs if norm == "linf" else rms
        own = rms_change(0.0, delta)
        if measure <= epsilon * (1.0 + 1e-4) or own == 0.0:
            return Written(delta, rms, max_abs)
        if attempt == MAX_WRITES - 1:
            if norm == "l2":
                return Written(delta, rms, max_abs)
            # no bound tried fits: the unchanged image does (its floor is within);
            # shrunk_change_warning names the copy
            delta = np.zeros_like(optimised)
            return Written(delta, *write(delta))
        if norm == "l2":
            # The rounding's share does not shrink with the change: step down by the whole
            # excess each time (three writes take a series from 29.1 to 30.5 dB).
            delta = (delta * (0.98 * epsilon / rms)).astype(np.float32)
            continue
        if floor is None:           # once: what the format changes by itself
            floor = write(np.zeros_like(delta))[1]
            if floor >= epsilon:
                raise BudgetError(
                    f"{path}: writing it in its own format changes pixels by up to "
                    f"{floor:.4f} with no change at all (a lossy format re-encodes), at or "
                    f"above the L-infinity budget {epsilon:.4f} (perturb.norm=linf): no "
                    "change fits. Use perturb.norm=l2, a budget above that, or images in a "
                    "lossless format (PNG)")
        # on disk = floor + (1 + growth) x the written bound: solve for the bound that
        # lands just inside epsilon (the growth is re-measured on each write); where
        # the format does not grow it in proportion, halve it
        size = float(np.abs(delta).max())
        bound = 0.98 * (epsilon - floor) * size / max(max_abs - floor, 1e-12)
        if not 0.0 < bound < size:
            bound = size / 2
        delta = np.clip(optimised, -bound, bound).astype(np.float32)
    raise AssertionError("unreachable")


def shrunk_change_warning(records: list[dict]) -> str | None:
    """A warning naming the protected copies that carry under ``SHRUNK_SHARE`` of their
    optimised change (``change_scaled_by``: the file's rounding or re-encoding left room
    for less), whose match scores in the report are of the optimised change; None when
    there are none."""
    shrunk = [r for r in records if r.get("change_scaled_by", 1.0) < SHRUNK_SHARE]
    if not shrunk:
        return None
    named = ", ".join(f"{r['image_id']} ({r['change_scaled_by']:.2f})" for r in shrunk[:3])
    return (f"warning: {len(shrunk)} of the {len(records)} protected copies carry under "
            f"{SHRUNK_SHARE:.0%} of their optimised change, e.g. {named}: their format's "
            "rounding left room for less within the budget. The report's match scores are "
            "of the optimised change; `evaluate` measures the written copies")
