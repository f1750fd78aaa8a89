"""A row's protection put together from the views it was optimised as.

A series is protected one group of slices (a view) at a time; once every view of a row
is done, ``PendingRows`` joins their changes into one change of the row's slices,
in the scale of those slices read together (``in_union_scale``), which is what the
writers put back into the file.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from mami_jax.apps.privacy.model_input import settings_for
from mami_jax.data.decode import open_volume
from mami_jax.data.transforms import slice_indices


@dataclasses.dataclass
class WholeRow:
    """A row's protection put together from its views: the slices (sorted), their
    change and original pixels, and the match score of the evaluation view."""

    slices: np.ndarray
    delta: np.ndarray
    unit: np.ndarray
    score_before: float
    score_after: float
    views: tuple = ()      # each view's slices (a reader may scale each set by its own range)


def in_union_scale(path: str, slices: np.ndarray, units: list, deltas: list,
                   value_window=None) -> tuple[list, list]:
    """Each view's change (``deltas``, over the view's own ``units``, the kept slices of
    the row's ``slices`` in order) in the intensity scale of all those slices read
    together, and their pixels in that scale: (changes, originals), view by view.

    A reader may scale intensities by the slices it reads (NIfTI: min-max over them), so
    one view's unit pixels and the union's differ by an affine map per view; a change is
    written in the union's scale (``writers``), and it must come out, in the raw values,
    as the change optimised in the view's own scale. The map's slope is fitted by least
    squares on the view's slices (exact for an affine reader; 1 where the scale is fixed:
    a DICOM window, the modality's ``value_window``, which reads the union through)."""
    union = open_volume(path, value_window=value_window).read(slices)
    out_d, out_u, start = [], [], 0
    for unit, d in zip(units, deltas):
        mine, theirs = unit.ravel().astype(np.float64), union[start:start + len(d)]
        a = mine - mine.mean()
        slope = float(a @ (theirs.ravel() - theirs.mean()) / (a @ a)) if a @ a > 0 else 1.0
        out_d.append((d * slope).astype(np.float32))
        out_u.append(theirs)
        start += len(d)
    return out_d, out_u


class PendingRows:
    """Collects the protected views of each row until all of them are done."""

    def __init__(self, parts, data_cfg):
        self.data_cfg = data_cfg          # each modality's reading rule (its value window)
        self.expected = collections.Counter(p.row.image_id for p in parts)
        self.done: dict[str, list] = collections.defaultdict(list)

    def add(self, part, delta, before: float, after: float) -> WholeRow | None:
        """Records one view; the whole row once its last view is in, else None."""
        views = self.done[part.row.image_id]
        views.append((part, delta, before, after))
        if len(views) < self.expected[part.row.image_id]:
            return None
        del self.done[part.row.image_id]
        slices, deltas, units = [], [], []
        for p, d, _, _ in views:
            keep = np.ones(len(p.slices), bool) if p.owned is None else p.owned
            slices.append(p.slices[keep])
            deltas.append(d[keep])
            units.append(p.unit[keep])
        slices = np.concatenate(slices)
        if len(views) > 1:
            deltas, units = in_union_scale(
                part.row.path, slices, units, deltas,
                settings_for(self.data_cfg, part.row.modality).value_window)
        order = np.argsort(slices, kind="stable")
        read = slice_indices(part.num_slices, len(part.slices))
        scored = [v for v in views if np.array_equal(v[0].slices, read)] or views
        return WholeRow(slices[order], np.concatenate(deltas)[order],
                        np.concatenate(units)[order],
                        float(np.mean([v[2] for v in scored])),
                        float(np.mean([v[3] for v in scored])),
                        tuple(np.asarray(v[0].slices) for v in views) if len(views) > 1 else ())
