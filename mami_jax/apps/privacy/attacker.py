"""The adaptive attacker's training manifest: the original manifest with the rows of some
splits replaced by their protected copies.

PriCheXy-Net's strongest test is a re-ID model retrained on protected images: an attacker
who knows the protection, protects their own training images with it and trains on them.
``attacker_rows`` builds that training set from the original manifest and a ``protect``
output of the training split (``--split train``: protected with ``--split all``, the
training copies would be optimised against the evaluation images too, through the centre of
the embeddings, the impostors and the impersonation targets, and the ``attacker-manifest``
command refuses such an output): every row of ``splits`` becomes its protected copy
(image_id + ``_protected``, its protected path; patient, study, order, modality, dataset,
view and split unchanged); every other row stays as it was, so evaluation splits keep
the original images (``modalities`` limits the swap to some modalities, e.g. when only
those were protected). A row of ``splits`` without a protected copy is an error naming it,
and so are splits and modalities under which no row is replaced (a misspelt split would
give the attacker the original images, and the evaluation a protection that never was).
"""

from __future__ import annotations

from typing import Sequence

from mami_jax.apps.privacy.copy_pairs import refuse_changed_fields, refuse_unpaired_copies
from mami_jax.apps.privacy.protect import SUFFIX
from mami_jax.data.manifest import ManifestRow


def attacker_rows(original: Sequence[ManifestRow], protected: Sequence[ManifestRow],
                  splits: Sequence[str] = ("train",), source: str = "protected manifest",
                  modalities: Sequence[str] | None = None,
                  original_source: str = "original manifest") -> list[ManifestRow]:
    """``original`` with its rows of ``splits`` (and of ``modalities``, all when None)
    replaced by their protected copies in ``protected``; errors name ``source`` (where
    ``protected`` was read) or ``original_source``, whichever holds the fault."""
    if not splits:
        raise ValueError("no split given whose rows become protected (e.g. train)")
    for what, there, asked, present in (
            ("split", "splits", splits, {r.split for r in original}),
            ("modality", "modalities", modalities or (), {r.modality for r in original})):
        unknown = sorted(set(asked) - present)
        if unknown:
            raise ValueError(f"{original_source}: no rows of {what} {unknown} ({there} "
                             f"there: {sorted(present)})")
    by_id = {r.image_id: r for r in protected}
    out, missing = [], []
    for r in original:
        if r.split not in splits or (modalities is not None and r.modality not in modalities):
            out.append(r)
            continue
        p = by_id.get(r.image_id + SUFFIX)
        if p is None:
            missing.append(r.image_id)
            continue
        refuse_changed_fields(r, p, source)
        out.append(p)
    if missing:
        raise ValueError(f"{source}: {len(missing)} rows of split(s) {list(splits)} have no "
                         f"protected copy, e.g. {missing[:3]}")
    refuse_unpaired_copies([p for p in protected if modalities is None
                            or p.modality in modalities],
                           [r for r in original if r.split in splits], splits, source)
    if not any(r.image_id.endswith(SUFFIX) for r in out):
        raise ValueError(f"{original_source}: no rows of split(s) {list(splits)} and "
                         f"modalities {list(modalities or ['all'])} together")
    return out
