"""The verification threshold of history matching, for a target false-accept rate.

A candidate is accepted as the same patient when its cosine similarity is strictly
above the threshold. From the impostor (different-patient) scores of the validation
patients, ``threshold_for_far`` picks the lowest threshold whose false-accept rate
(share of impostor scores above it) does not exceed the target: with n impostor scores
sorted from the highest, m = floor(target * n) may be accepted, so the threshold is the
(m+1)-th highest impostor score (ties there accept fewer, never more). With fewer than
1 / target impostors m = 0: the threshold is the highest impostor score.

``calibrate`` does this per modality on the pairs of one split (every two images of
different patients of the same modality are an impostor pair; two images of one patient
from different studies a genuine pair), and reports the achieved FAR and the genuine
accept rate (TAR) beside the threshold.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow


def threshold_for_far(impostor_scores, target_far: float) -> float:
    s = np.sort(np.asarray(impostor_scores, np.float64).reshape(-1))[::-1]
    if s.size == 0:
        raise ValueError("calibration needs at least one different-patient pair")
    if not 0.0 <= target_far < 1.0:
        raise ValueError(f"target false-accept rate must be in [0, 1), got {target_far}")
    m = int(math.floor(target_far * s.size + 1e-9))
    return float(s[min(m, s.size - 1)])


def rates(genuine, impostor, threshold: float) -> tuple[float, float]:
    """(FAR, TAR) of accepting scores strictly above ``threshold``."""
    g, i = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    far = float(np.mean(i > threshold)) if i.size else float("nan")
    tar = float(np.mean(g > threshold)) if g.size else float("nan")
    return far, tar


def pair_scores(rows: Sequence[ManifestRow], vectors: np.ndarray):
    """(genuine, impostor) cosine similarities of all pairs of ``rows`` (one modality)."""
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    patients = np.asarray([r.patient_key for r in rows])
    studies = np.asarray([r.study_key for r in rows])
    upper = np.triu(np.ones(sim.shape, bool), 1)
    same = patients[:, None] == patients[None, :]
    same_study = studies[:, None] == studies[None, :]
    return sim[upper & same & ~same_study], sim[upper & ~same]


def calibrate(rows: Sequence[ManifestRow], vectors: np.ndarray, target_far: float,
              split: str) -> dict[str, dict]:
    """Per modality with both kinds of pairs in ``split``: threshold, far, tar, counts."""
    out = {}
    for modality in sorted({r.modality for r in rows if r.split == split}):
        idx = [i for i, r in enumerate(rows) if r.split == split and r.modality == modality]
        genuine, impostor = pair_scores([rows[i] for i in idx], vectors[idx])
        if not len(genuine) or not len(impostor):
            continue
        t = threshold_for_far(impostor, target_far)
        far, tar = rates(genuine, impostor, t)
        out[modality] = {"threshold": t, "far": far, "tar": tar, "target_far": target_far,
                         "genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor)),
                         "patients": len({rows[i].patient_key for i in idx}), "split": split}
    if not out:
        raise ValueError(f"no modality of split {split!r} has both same-patient and "
                         f"different-patient pairs to calibrate the threshold on")
    return out
