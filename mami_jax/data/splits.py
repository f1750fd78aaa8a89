"""Patient-disjoint train/val/test splits derived from a hash of the patient.

A patient's split depends only on (dataset, patient_id, seed): not on row order,
not on which other patients are present, not on the machine. So a manifest rebuilt
after new images arrive keeps every old patient in its split, and two people who
build the same dataset get the same split without exchanging files.

Rule: u = first 8 bytes of sha256("<dataset>\\x00<patient_id>\\x00<seed>") read as a
big-endian integer, divided by 2**64, so u is uniform in [0, 1). Splits are laid
out on [0, 1) in the order of their names (test, train, val), whatever order the
fractions are given in; the patient takes the split whose interval holds u. Every
existing ``split`` value is overwritten.

Why by name: the data config's ``split_fractions`` is a ConfigDict, which lists its keys
sorted, while ``--fractions train=0.7,val=0.1,test=0.2`` listed them as typed, so the
documented defaults written out gave another split than the defaults themselves (half
the patients moved, a fifth of the test patients into train). Name order is the one the
defaults always had, so every manifest built with them keeps its split.
"""

from __future__ import annotations

import collections
import hashlib
import math
from typing import Mapping, Sequence

from mami_jax.data.manifest import SPLITS, ManifestRow


def patient_unit(dataset: str, patient_id: str, seed: int) -> float:
    """The patient's position u in [0, 1) (see module docstring)."""
    digest = hashlib.sha256(f"{dataset}\x00{patient_id}\x00{int(seed)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / float(2 ** 64)


def check_fractions(fractions: Mapping[str, float]) -> list[tuple[str, float]]:
    """The fractions as (split, fraction) in name order; ValueError unless they name known
    splits, are finite and not negative, and sum to 1.

    Finite: ``nan`` passed every comparison below (each is False with it) and put every
    patient in the last split; ``inf`` failed only the sum, in words that did not say why.
    """
    items = [(str(k), float(v)) for k, v in dict(fractions).items()]
    if not items:
        raise ValueError("split fractions are empty")
    for name, frac in items:
        if name not in SPLITS or not name:
            raise ValueError(f"unknown split {name!r} in fractions; expected some of {SPLITS[:-1]}")
        if not math.isfinite(frac):
            raise ValueError(f"split fraction {name}={frac} is not a finite number")
        if frac < 0:
            raise ValueError(f"split fraction {name}={frac} is negative")
    total = sum(f for _, f in items)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions {dict(items)} sum to {total}, expected 1")
    return sorted(items)


def split_of(dataset: str, patient_id: str, fractions: Mapping[str, float], seed: int) -> str:
    """The split of one patient."""
    items = check_fractions(fractions)
    u = patient_unit(dataset, patient_id, seed)
    edge = 0.0
    for name, frac in items:
        edge += frac
        if u < edge:
            return name
    # u is below 1 and the fractions sum to 1 within 1e-6: the last non-empty split.
    return [n for n, f in items if f > 0][-1]


def assign_splits(rows: Sequence[ManifestRow], fractions: Mapping[str, float],
                  seed: int) -> list[ManifestRow]:
    """Returns copies of ``rows`` with ``split`` set per patient (see module docstring)."""
    items = check_fractions(fractions)
    frac = dict(items)
    cache: dict[tuple[str, str], str] = {}
    out = []
    for row in rows:
        key = (row.dataset, row.patient_id)
        if key not in cache:
            cache[key] = split_of(row.dataset, row.patient_id, frac, seed)
        out.append(row.replace(split=cache[key]))
    return out


def split_counts(rows: Sequence[ManifestRow]) -> str:
    """The rows' splits with their counts, as refusals name them: "test 15, train 75"
    ("none" counts rows without a split; "no rows" when there are none)."""
    found = collections.Counter(r.split or "none" for r in rows)
    return ", ".join(f"{k} {v}" for k, v in sorted(found.items())) or "no rows"
