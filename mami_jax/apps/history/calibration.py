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

``calibrate_topk`` calibrates on what retrieval actually accepts from: each validation
image queries the whole archive (``history_select.retrieve``: its ``k`` best earlier
candidates of the same modality, from every patient archived), and the candidates of
other patients are the impostor scores. The archive's best impostors among hundreds of
candidates lie above most validation pairs, so a pair-calibrated threshold lets through
far more false history than its target; this one holds the target FAR among the top-k
candidates. ``calibrate_archive`` picks the method of the settings (``calibration``:
``"pairs"`` or ``"topk"``), on the archive's own (centred) vectors.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mami_jax.apps.history import hubness
from mami_jax.apps.history.history_select import retrieve
from mami_jax.data.manifest import ManifestRow

METHODS = ("pairs", "topk")


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


def pair_scores(rows: Sequence[ManifestRow], vectors: np.ndarray, density=None):
    """(genuine, impostor) cosine similarities of all pairs of ``rows`` (one modality);
    with ``density`` (each row's local density, a hub-corrected archive's), the archive's
    score 2 cos - r_i - r_j instead."""
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    if density is not None:
        d = np.asarray(density, np.float64)
        sim = hubness.csls(sim, d[:, None], d[None, :])
    patients = np.asarray([r.patient_key for r in rows])
    studies = np.asarray([r.study_key for r in rows])
    upper = np.triu(np.ones(sim.shape, bool), 1)
    same = patients[:, None] == patients[None, :]
    same_study = studies[:, None] == studies[None, :]
    return sim[upper & same & ~same_study], sim[upper & ~same]


def calibrate(rows: Sequence[ManifestRow], vectors: np.ndarray, target_far: float,
              split: str, density=None) -> dict[str, dict]:
    """Per modality with both kinds of pairs in ``split``: threshold, far, tar, counts
    (``density``: see ``pair_scores``)."""
    out = {}
    for modality in sorted({r.modality for r in rows if r.split == split}):
        idx = [i for i, r in enumerate(rows) if r.split == split and r.modality == modality]
        genuine, impostor = pair_scores([rows[i] for i in idx], vectors[idx],
                                        None if density is None else np.asarray(density)[idx])
        if not len(genuine) or not len(impostor):
            continue
        out[modality] = _summary(genuine, impostor, target_far, split,
                                 len({rows[i].patient_key for i in idx}))
    if not out:
        raise ValueError(f"no modality of split {split!r} has both same-patient and "
                         f"different-patient pairs to calibrate the threshold on")
    return out


def _summary(genuine, impostor, target_far: float, split: str, patients: int) -> dict:
    t = threshold_for_far(impostor, target_far)
    far, tar = rates(genuine, impostor, t)
    return {"threshold": t, "far": far, "tar": tar, "target_far": target_far,
            "genuine_pairs": int(len(genuine)), "impostor_pairs": int(len(impostor)),
            "patients": patients, "split": split}


def calibrate_topk(archive, rows: Sequence[ManifestRow], vectors: np.ndarray,
                   target_far: float, split: str, k: int) -> dict[str, dict]:
    """Per modality: the threshold holding ``target_far`` among the top-``k`` archive
    candidates of ``split``'s images (``rows`` with their raw embeddings ``vectors``;
    the archive need not hold them). Genuine = candidates of the query's own patient."""
    idx = [i for i, r in enumerate(rows) if r.split == split]
    matches = retrieve(archive, [rows[i] for i in idx], np.asarray(vectors)[idx], int(k),
                       np.inf, desc=f"calibration ({split} images)")
    return topk_thresholds(archive, rows, idx, matches, target_far, split, k)


def calibrate_visits(fusion, target_far: float, split: str, k: int) -> dict[str, dict]:
    """``calibrate_topk`` for visit-level scores (``visit_fusion.VisitFusion``): the
    top-``k`` candidates of ``split``'s rows by visit score."""
    idx = [i for i, r in enumerate(fusion.rows) if r.split == split]
    matches = fusion.retrieve(idx, int(k), np.inf, desc=f"calibration ({split} visits)")
    out = topk_thresholds(fusion.archive, fusion.rows, idx, matches, target_far, split, k)
    return {m: dict(c, method="topk-visits") for m, c in out.items()}


def topk_thresholds(archive, rows, idx, matches, target_far: float, split: str,
                    k: int) -> dict[str, dict]:
    """Per modality: the threshold holding ``target_far`` among ``matches`` (the top-k
    candidates of rows ``idx``); genuine = candidates of the query's own patient."""
    scores: dict[str, tuple[list, list, set]] = {}
    for i, found in zip(idx, matches):
        genuine, impostor, patients = scores.setdefault(rows[i].modality, ([], [], set()))
        patients.add(rows[i].patient_key)
        for m in found:
            same = archive.rows[m.position].patient_key == rows[i].patient_key
            (genuine if same else impostor).append(m.score)
    out = {m: dict(_summary(g, imp, target_far, split, len(p)), method="topk", k=int(k))
           for m, (g, imp, p) in sorted(scores.items()) if imp}
    if not out:
        raise ValueError(f"no image of split {split!r} has an earlier candidate of another "
                         f"patient in the archive to calibrate the threshold on")
    return out


def calibrate_archive(archive, rows: Sequence[ManifestRow], vectors: np.ndarray, cfg) -> dict:
    """The thresholds of settings ``cfg`` (``calibration``, ``target_far``,
    ``calibration_split``, ``k``) for ``archive``, from ``rows``' raw embeddings."""
    method, target = str(cfg.calibration), float(cfg.target_far)
    if method == "pairs":
        density = archive.row_density(rows, vectors) if archive.hubness_k > 0 else None
        out = calibrate(rows, archive.prepare_rows(rows, vectors), target, cfg.calibration_split,
                        density)
        return {m: dict(c, method="pairs") for m, c in out.items()}
    if method == "topk":
        return calibrate_topk(archive, rows, vectors, target, cfg.calibration_split, int(cfg.k))
    raise ValueError(f"calibration={method!r} unknown; expected one of {', '.join(METHODS)}")
