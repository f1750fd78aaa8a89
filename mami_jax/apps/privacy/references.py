"""Who an image is compared with while it is protected: its references.

Per re-ID model (member), an image's references are its patient's other images of the
same modality (what the match score averages over), its own original embedding, the
centre the embeddings are taken relative to, an optional impersonation target, and the
impostors a ranking weighs it against: the nearest images of the modality's other
patients. All of them are embedded once, from the original images, before optimisation
(``protect.reference_embeddings``); ``objective`` scores a changed image against them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mami_jax.data.manifest import row_place
from mami_jax.models.embed import centred


@dataclasses.dataclass
class References:
    """Per member: others (B, K, C) unit embeddings, mask (B, K), own (B, C), the centre
    (C,) they were centred on, target (B, C): the centred mean embedding of the patient
    each image is pushed towards (``perturb.target_weight``; zeros: none), and impostors
    (B, J, C) with impostor_mask (B, J): the nearest images of the modality's other
    patients, the candidates a Rank-1 match must fall to (``perturb.objective = "rank"``;
    one zero column when not built)."""

    others: list
    mask: np.ndarray
    own: list
    center: list     # per member: (C,) mean embedding the others and own were centred on
    target: list = None
    impostors: list = None
    impostor_mask: np.ndarray = None

    def __post_init__(self):
        if self.target is None:
            self.target = [np.zeros_like(o) for o in self.own]
        if self.impostors is None:
            self.impostors = [np.zeros_like(o)[:, None] for o in self.own]
            self.impostor_mask = np.zeros((len(self.mask), 1), np.float32)

    def arrays(self) -> tuple:
        """(others, mask, own, center, target, impostors, impostor_mask): what a score
        function takes."""
        return (self.others, self.mask, self.own, self.center, self.target, self.impostors,
                self.impostor_mask)

    def at(self, i: int) -> tuple:
        """``arrays()`` of image i alone (batch of one)."""
        return ([o[i:i + 1] for o in self.others], self.mask[i:i + 1],
                [o[i:i + 1] for o in self.own], self.center, [t[i:i + 1] for t in self.target],
                [o[i:i + 1] for o in self.impostors], self.impostor_mask[i:i + 1])

    def first(self) -> "References":
        """The references of the first member alone."""
        return References(self.others[:1], self.mask, self.own[:1], self.center[:1],
                          self.target[:1], self.impostors[:1], self.impostor_mask)


TARGETS = ("farthest", "nearest")


#: Patients whose images a modality's centre is the mean over, at least (where the manifest
#: has them): the match score is a similarity of embeddings centred on that mean.
MIN_CENTRE_PATIENTS = 16


def reference_rows(rows_all, targets) -> list:
    """The rows ``targets`` are compared with: every image of their patients, in the
    targets' modalities; and, where those are fewer than ``MIN_CENTRE_PATIENTS`` patients
    of a modality, other patients' images of it (the targets' splits first, then the
    others, in manifest order) until there are, which only the centre uses. Centred on the
    mean of a few patients' images, the patients' own images were dissimilar by
    construction (one patient's four images: centred cosines near -1/3): ``cues`` on the
    first rows of a split mapped nothing, a protection of one patient lowered nothing.

    A modality whose images are all one patient's is a ValueError naming it (the same
    emptiness), and so is one with a single image: the centre would be that image's own
    embedding, its centred embedding zero, so it would have no match score to lower, no
    cue map, and its "protected" copy would be the original."""
    patients = {(r.patient_key, r.modality) for r in targets}
    chosen = [r for r in rows_all if (r.patient_key, r.modality) in patients]
    chosen += _centre_rows(rows_all, targets, patients)
    by_modality: dict[str, list] = {}
    for r in chosen:
        by_modality.setdefault(r.modality, []).append(r)
    alone = [found[0] for found in by_modality.values()
             if len(found) > 1 and len({r.patient_key for r in found}) == 1]
    if alone:
        r = alone[0]
        raise ValueError(f"{r.image_id}: its patient {r.patient_key} is the only one with "
                         f"{r.modality} images in the manifest; an image's match is measured "
                         "on embeddings centred on several patients' mean (of one patient's "
                         "own, its images are dissimilar by construction): give the manifest "
                         "with other patients' images (any split: they are only embedded)")
    lone = [found[0] for found in by_modality.values() if len(found) == 1]
    if lone:
        r = lone[0]
        where = row_place(r)
        named = f"{where} (image_id={r.image_id!r})" if where else r.image_id
        raise ValueError(f"{named}: the only {r.modality} image of the patients chosen; "
                         "an image is compared with its patients' other images, centred on "
                         "their mean, so one image alone has nothing to compare with: give "
                         "the manifest with more images (other patients, other visits) or "
                         "choose more rows (--split)")
    return chosen


def _centre_rows(rows_all, targets, patients) -> list:
    """Other patients' rows of the targets' modalities that bring each modality's patients
    to ``MIN_CENTRE_PATIENTS`` (the targets' splits first, then the others, manifest order)."""
    splits = {r.split for r in targets}
    extra = []
    for modality in sorted({r.modality for r in targets}):
        have = {p for p, m in patients if m == modality}
        candidates = [r for r in rows_all if r.modality == modality and
                      (r.patient_key, modality) not in patients]
        candidates.sort(key=lambda r: r.split not in splits)        # stable: manifest order
        added: set = set()
        for r in candidates:
            if r.patient_key not in added and len(have) + len(added) >= MIN_CENTRE_PATIENTS:
                continue
            added.add(r.patient_key)
            extra.append(r)
    return extra


def build_references(sources, embeddings_by_member, rows, row_index,
                     target: str = "farthest", impostors: int = 0) -> References:
    """References of the images ``sources`` from the embeddings of every row of the
    manifest (``embeddings_by_member[m][i]`` of ``rows[i]``; ``row_index`` image_id -> i).

    An image's references are its patient's images of the SAME modality from other
    studies, and the centre is the mean over the rows of the sources' modalities: an
    attacker matches within a modality (``attack_eval`` groups by dataset/modality), and
    a study id names its modality, so without this an X-ray's score would mostly average
    its (meaningless) similarity to the patient's CT, MRI, ... images.

    ``target``: which other patient of the modality an image is pushed towards when
    ``perturb.target_weight`` is on, chosen under the first member: ``farthest`` (as
    Fawkes: reaching it moves the image far) or ``nearest`` (the strongest impostor
    already: the one a Rank-1 match most easily falls to).

    ``impostors``: how many of the modality's other patients' images each image is ranked
    against (``perturb.objective = "rank"``), per member the ones most similar to the
    image's original under that member: the soft maximum at the rank temperature is
    decided by them, and all of them, per image and member, would not fit in memory for a
    manifest of many thousands of rows. 0: none gathered (the match score needs none)."""
    if target not in TARGETS:
        raise ValueError(f"perturb.target={target!r}: expected one of {TARGETS}")
    by_patient: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        by_patient.setdefault((r.patient_key, r.modality), []).append(i)
    own_idx = [row_index[s.row.image_id] for s in sources]
    other_idx = [[j for j in by_patient[(s.row.patient_key, s.row.modality)]
                  if rows[j].study_key != s.row.study_key] for s in sources]
    padded, mask = _padded(other_idx)
    modalities = {s.row.modality for s in sources}
    same_modality = np.asarray([r.modality in modalities for r in rows])
    candidates = _impostor_candidates(sources, rows) if impostors > 0 else None
    others, own, centers, targets, nearest = [], [], [], [], []
    impostor_mask = None
    chosen = None
    for emb in embeddings_by_member:
        unit = emb / (np.linalg.norm(emb, axis=-1, keepdims=True) + 1e-8)
        center = unit[same_modality].mean(0)
        unit = centred(unit, center)
        others.append(unit[padded])
        own.append(unit[own_idx])
        if candidates is not None:
            idx, impostor_mask = _nearest_impostors(unit, own_idx, candidates, impostors)
            nearest.append(unit[idx])
        centers.append(center.astype(np.float32))
        means = {key: _unit_mean(unit[idx]) for key, idx in by_patient.items()}
        if chosen is None:      # picked once, under the first member
            chosen = [_target_patient(s.row, unit[own_idx[b]], means, target == "nearest")
                      for b, s in enumerate(sources)]
        targets.append(np.stack([means[c] if c is not None else np.zeros_like(unit[0])
                                 for c in chosen]).astype(np.float32))
    return References(others, mask, own, centers, targets, nearest or None, impostor_mask)


def _impostor_candidates(sources, rows) -> list[np.ndarray]:
    """Per source, the row indices of every image of its modality from another patient."""
    modality = np.asarray([r.modality for r in rows])
    patient = np.asarray([r.patient_key for r in rows])
    by_modality = {m: np.flatnonzero(modality == m) for m in {s.row.modality for s in sources}}
    out = []
    for s in sources:
        idx = by_modality[s.row.modality]
        out.append(idx[patient[idx] != s.row.patient_key])
    return out


def _nearest_impostors(unit, own_idx, candidates, count: int):
    """(B, J) row indices and (B, J) mask of at most ``count`` candidates per image, the
    most similar to its original first (J: the longest list, at least 1)."""
    chosen = []
    for i, cand in zip(own_idx, candidates):
        sims = unit[cand] @ unit[i]
        order = np.argsort(-sims, kind="stable")[:count]
        chosen.append(cand[order])
    return _padded(chosen)


def _padded(index_lists: list) -> tuple[np.ndarray, np.ndarray]:
    """(B, J) row indices padded with 0 and their (B, J) mask, J the longest list (>= 1)."""
    width = max(1, max(len(o) for o in index_lists))
    mask = np.zeros((len(index_lists), width), np.float32)
    padded = np.zeros((len(index_lists), width), np.int64)
    for b, o in enumerate(index_lists):
        mask[b, :len(o)] = 1.0
        padded[b, :len(o)] = o
    return padded, mask


def _unit_mean(x: np.ndarray) -> np.ndarray:
    m = x.mean(0)
    return m / (np.linalg.norm(m) + 1e-8)


def _target_patient(row, own: np.ndarray, means: dict, nearest: bool):
    """The (patient, modality) key of another patient of ``row``'s modality whose mean
    centred embedding is least (``nearest``: most) similar to ``own``; None when there
    is none."""
    best, best_sim = None, np.inf
    for key in sorted(means):
        if key[1] != row.modality or key[0] == row.patient_key:
            continue
        sim = float(np.dot(means[key], own))
        if nearest:
            sim = -sim
        if sim < best_sim:
            best, best_sim = key, sim
    return best


def member_refs(ref_arrays, m: int) -> tuple:
    """The references of member ``m`` out of ``References.arrays()``: (others (B, K, C),
    mask (B, K), own (B, C), center (C,), target (B, C), impostors (B, J, C),
    impostor_mask (B, J))."""
    others, mask, own, center, target, impostors, impostor_mask = ref_arrays
    return others[m], mask, own[m], center[m], target[m], impostors[m], impostor_mask
