"""Which rows of a protected manifest are copies of which original rows.

``protect`` names a copy by its original's ``image_id`` with ``SUFFIX``. ``evaluate`` and
``attacker-manifest`` take a protected manifest and an original one; a copy that pairs
with no original row of the splits read (a row of another protection, a hand edit, an
original row left in) was ignored without a word, so the measurement stood on fewer
images than the manifest held. They are named instead.
"""

from __future__ import annotations

from typing import Sequence

from mami_jax.apps.privacy.protect import SUFFIX
from mami_jax.data.manifest import ManifestRow, row_place

#: What a copy keeps of its original's row (``protected_row``): a copy whose row says
#: otherwise (a hand edit, a row of another protection) would be read as another
#: modality's image, or scored as another patient.
KEPT_FIELDS = ("patient_id", "study_id", "order", "modality", "dataset", "view", "split")


def refuse_changed_fields(original: ManifestRow, copy: ManifestRow, source: str) -> None:
    """ValueError naming the copy's row (or ``source``) where it differs from its
    original in one of ``KEPT_FIELDS``."""
    for field in KEPT_FIELDS:
        if getattr(copy, field) != getattr(original, field):
            raise ValueError(f"{row_place(copy) or source}: row {copy.image_id!r} has "
                             f"{field}={getattr(copy, field)!r}, its original "
                             f"{original.image_id!r} has {getattr(original, field)!r}")


def refuse_unpaired_copies(protected: Sequence[ManifestRow], originals: Sequence[ManifestRow],
                           splits: Sequence[str], source: str) -> None:
    """ValueError naming ``source`` (where ``protected`` was read) when a row of ``splits``
    in ``protected`` is not the copy of a row of ``originals``."""
    expected = {r.image_id + SUFFIX for r in originals}
    stray = [r.image_id for r in protected if r.split in splits and r.image_id not in expected]
    if stray:
        raise ValueError(f"{source}: {len(stray)} rows of split(s) {list(splits)} are no "
                         f"protected copy of an original row read (protect names a copy by "
                         f"its original's image_id + {SUFFIX!r}), e.g. {stray[:3]}")
