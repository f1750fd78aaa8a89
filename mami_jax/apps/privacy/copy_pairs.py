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
from mami_jax.data.manifest import ManifestRow


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
