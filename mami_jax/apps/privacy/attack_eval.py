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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.metrics import verification_metrics
from mami_jax.evaluate.retrieval import chunked_reid_metrics


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def chance_rank1(rows: Sequence[ManifestRow]) -> float:
    pids = np.asarray([r.patient_key for r in rows])
    studies = np.asarray([r.study_key for r in rows])
    values = []
    for i in range(len(rows)):
        eligible = studies != studies[i]
        matches = eligible & (pids == pids[i])
        if matches.any():
            values.append(matches.sum() / eligible.sum())
    return float(np.mean(values)) if values else float("nan")


def query_metrics(query_emb: np.ndarray, gallery_emb: np.ndarray, rows: Sequence[ManifestRow]
                  ) -> dict:
    """Rank-1 and verification AUC of queries (one per row) against the gallery (same rows)."""
    pids = np.asarray([r.patient_key for r in rows])
    studies = np.asarray([r.study_key for r in rows])
    reid = chunked_reid_metrics(query_emb, gallery_emb, pids, pids, studies, studies,
                                metric="cosine", ks=(1, 5))
    sim = _unit(query_emb) @ _unit(gallery_emb).T
    other_study = studies[:, None] != studies[None, :]
    same = pids[:, None] == pids[None, :]
    pairs = other_study | ~same
    auc = verification_metrics(sim[pairs], (same & other_study)[pairs])["auc"]
    return {"rank1": float(reid["rank1"]), "rank5": float(reid["rank5"]), "auc": float(auc),
            "num_queries": len(rows)}


def attack_report(original_emb: np.ndarray, protected_emb: np.ndarray,
                  rows: Sequence[ManifestRow]) -> dict:
    """Per "dataset/modality" and over all: before/after Rank-1, AUC and chance Rank-1.

    ``original_emb[i]`` and ``protected_emb[i]`` embed ``rows[i]`` and its protected copy."""
    if len(original_emb) != len(rows) or len(protected_emb) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(original_emb)} original and "
                         f"{len(protected_emb)} protected embeddings")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(f"{r.dataset}/{r.modality}", []).append(i)
    out = {}
    for name, members in sorted(groups.items()):
        sub = [rows[i] for i in members]
        g = original_emb[members]
        before = query_metrics(g, g, sub)
        after = query_metrics(protected_emb[members], g, sub)
        out[name] = {"chance_rank1": chance_rank1(sub),
                     **{f"{k}_before": v for k, v in before.items() if k != "num_queries"},
                     **{f"{k}_after": v for k, v in after.items() if k != "num_queries"},
                     "num_queries": len(sub)}
    keys = [k for k in next(iter(out.values())) if k != "num_queries"]
    out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in keys}
    return out
