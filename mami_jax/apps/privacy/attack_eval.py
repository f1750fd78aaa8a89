"""How well a protection hides patients from a re-ID model.

Protected queries are matched against the unprotected gallery, per dataset/modality, as
an attacker holding the original archive would: the ``reid`` protocol of the evaluator
on the split (every image a query, the gallery every original image of the split, the
query's own study excluded, so its own original never counts), scored with the
evaluator's metrics (``chunked_reid_metrics``: Rank-1; ``verification_metrics``: ROC AUC
over all query-gallery pairs, same patient in another study = positive, other patient =
negative). "before" uses the original queries, "after" the protected ones.

Chance Rank-1 is the mean over queries of (true matches / gallery images outside the
query's study): what a random ranking scores.

``patient_report`` breaks Rank-1 down by patient: a protection that leaves Rank-1 low on
average can still leave a few patients with a distinctive feature (a pacemaker on every
X-ray) fully identifiable, and those are the patients it fails.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.metrics import build_query_targets, match_ranks, verification_metrics
from mami_jax.evaluate.metrics import chance_rank1 as metrics_chance_rank1
from mami_jax.evaluate.retrieval import chunked_reid_metrics, pairwise_similarity


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def chance_rank1(rows: Sequence[ManifestRow]) -> float:
    """``metrics.chance_rank1`` of the rows' patients and studies."""
    return metrics_chance_rank1([r.patient_key for r in rows], [r.study_key for r in rows])


def query_metrics(query_emb: np.ndarray, gallery_emb: np.ndarray, rows: Sequence[ManifestRow]
                  ) -> dict:
    """Rank-1 and verification AUC of queries (one per row) against the gallery (same rows);
    the AUC is None where the rows hold no pair of one of the two kinds (a group of one
    patient has no different-patient pairs), as the evaluator leaves it out."""
    pids = np.asarray([r.patient_key for r in rows])
    studies = np.asarray([r.study_key for r in rows])
    reid = chunked_reid_metrics(query_emb, gallery_emb, pids, pids, studies, studies,
                                metric="cosine", ks=(1, 5))
    sim = _unit(query_emb) @ _unit(gallery_emb).T
    other_study = studies[:, None] != studies[None, :]
    same = pids[:, None] == pids[None, :]
    pairs = other_study | ~same
    positive = (same & other_study)[pairs]
    auc = float(verification_metrics(sim[pairs], positive)["auc"]) \
        if positive.any() and not positive.all() else None
    return {"rank1": float(reid["rank1"]), "rank5": float(reid["rank5"]), "auc": auc,
            "num_queries": len(rows)}


def _before_after(original_emb, protected_emb, rows: Sequence[ManifestRow], measure):
    """Per "dataset/modality" (sorted by name): (name, its rows, ``measure`` of the original
    queries, of the protected ones), each ``measure(query_emb, gallery_emb, rows)`` against
    the group's original images. Checks first that both embeddings have a row per row."""
    if len(original_emb) != len(rows) or len(protected_emb) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(original_emb)} original and "
                         f"{len(protected_emb)} protected embeddings")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(f"{r.dataset}/{r.modality}", []).append(i)
    for name, members in sorted(groups.items()):
        sub = [rows[i] for i in members]
        gallery = original_emb[members]
        yield (name, sub, measure(gallery, gallery, sub),
               measure(protected_emb[members], gallery, sub))


def attack_report(original_emb: np.ndarray, protected_emb: np.ndarray,
                  rows: Sequence[ManifestRow]) -> dict:
    """Per "dataset/modality" and over all: before/after Rank-1, AUC and chance Rank-1.

    ``original_emb[i]`` and ``protected_emb[i]`` embed ``rows[i]`` and its protected copy."""
    out = {}
    for name, sub, before, after in _before_after(original_emb, protected_emb, rows,
                                                  query_metrics):
        out[name] = {"chance_rank1": chance_rank1(sub),
                     **{f"{k}_before": v for k, v in before.items() if k != "num_queries"},
                     **{f"{k}_after": v for k, v in after.items() if k != "num_queries"},
                     "num_queries": len(sub)}
    keys = [k for k in next(iter(out.values())) if k != "num_queries"]
    out["mean"] = {k: _mean_of_defined([v[k] for v in out.values()]) for k in keys}
    return out


def _mean_of_defined(values) -> float | None:
    """The mean of the groups' values that are defined (an AUC of a one-patient group is
    None, the Rank-1 and chance of a group where no patient has two studies NaN: one such
    group made the mean row NaN); None when none is."""
    defined = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(defined)) if defined else None


def first_match_hits(query_emb: np.ndarray, gallery_emb: np.ndarray,
                     rows: Sequence[ManifestRow]) -> np.ndarray:
    """Per query: 1 where the gallery image it scores highest outside its own study is of
    its patient, 0 where it is another patient's, -1 where the query has no true match
    (Rank-1 skips it). Ties are broken as ``chunked_reid_metrics`` breaks them, so the
    mean of the non-negative entries is its Rank-1."""
    pids = np.asarray([r.patient_key for r in rows])
    studies = np.asarray([r.study_key for r in rows])
    scores = pairwise_similarity(query_emb, gallery_emb, metric="cosine")
    targets = build_query_targets(pids, pids, studies, studies)
    hits = np.full(len(rows), -1, np.int64)
    for i in range(len(rows)):
        matches = targets.matches(i)
        if matches.size:
            hits[i] = int(match_ranks(scores[i], matches, targets.excluded(i)).min() == 1)
    return hits


def patient_report(original_emb: np.ndarray, protected_emb: np.ndarray,
                   rows: Sequence[ManifestRow]) -> dict:
    """Per "dataset/modality": one entry per patient with queries that have a true match,
    ``{"patient", "queries", "matched_before", "matched_after"}`` (how many of its queries
    rank one of its own images first, original and protected), most matched after first,
    then most matched before, then by patient id."""
    out = {}
    for name, sub, before, after in _before_after(original_emb, protected_emb, rows,
                                                  first_match_hits):
        per: dict[str, list[int]] = {}
        for r, b, a in zip(sub, before, after):
            if b >= 0:
                counts = per.setdefault(r.patient_id, [0, 0, 0])
                counts[0] += 1
                counts[1] += int(b)
                counts[2] += int(a)
        out[name] = [{"patient": pid, "queries": q, "matched_before": b, "matched_after": a}
                     for pid, (q, b, a) in sorted(per.items(),
                                                  key=lambda kv: (-kv[1][2], -kv[1][1], kv[0]))]
    return out


def rank1_interval(patients: Sequence[dict], key: str = "matched_after", samples: int = 2000,
                   seed: int = 0) -> list[float] | None:
    """95 % interval of a group's Rank-1 (``key``: "matched_after" or "matched_before" of
    ``patient_report``'s entries) from a bootstrap over patients: a patient's queries rise
    and fall together (one patient's images look alike), so resampling queries one by one
    would give too narrow an interval at the ~100 queries of a phantom test split. None
    without patients."""
    if not patients:
        return None
    matched = np.asarray([p[key] for p in patients], np.float64)
    queries = np.asarray([p["queries"] for p in patients], np.float64)
    draws = np.random.default_rng(seed).integers(0, len(patients), (samples, len(patients)))
    rank1 = matched[draws].sum(1) / queries[draws].sum(1)
    return [float(v) for v in np.percentile(rank1, [2.5, 97.5])]
