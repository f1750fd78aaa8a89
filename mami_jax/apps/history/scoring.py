"""Diagnosis metrics: macro AUC, accuracy, false-history rate; the printed table.

``auc`` is the one-vs-rest ROC AUC averaged over the classes present with both
positives and negatives (for two classes, the AUC of the positive class; ties count
half, via ``mami_jax.evaluate.metrics.verification_metrics``); ``None`` when no class
qualifies. ``false_history_rate`` is the share of accepted history images that belong
to another patient (``None`` when nothing was accepted); ``history_recall`` the share
of the true earlier images (of the same modality, within k) that were accepted.

``gain``: each history condition's AUC minus current-only's on the same queries, with a
95 % interval from a paired bootstrap over *patients* (a patient's images are resampled
together, since they are not independent): on a few hundred queries an AUC moves by a few
hundredths between samples, so a gain of 0.01 says nothing until its interval excludes 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.evaluate.metrics import verification_metrics

CONDITIONS = ("current_only", "retrieved_history", "true_history")


def macro_auc(probs: np.ndarray, y: np.ndarray) -> float | None:
    aucs = []
    for c in range(probs.shape[1]):
        positive = y == c
        if positive.any() and (~positive).any():
            aucs.append(verification_metrics(probs[:, c], positive)["auc"])
    return float(np.mean(aucs)) if aucs else None


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(1) == y))


BOOTSTRAP_SAMPLES = 1000


def paired_gain(base: np.ndarray, other: np.ndarray, y: np.ndarray, clusters: Sequence[str],
                samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict | None:
    """``macro_auc(other) - macro_auc(base)`` on the same queries, and its 95 % interval
    (2.5th and 97.5th percentiles) over ``samples`` resamplings of the ``clusters`` (each
    query's patient) with replacement; resamples without both classes are skipped. None
    when the AUC is undefined."""
    a, b = macro_auc(base, y), macro_auc(other, y)
    if a is None or b is None:
        return None
    clusters = np.asarray(clusters)
    names, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(int(samples)):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))])
        da, db = macro_auc(base[idx], y[idx]), macro_auc(other[idx], y[idx])
        if da is not None and db is not None:
            diffs.append(db - da)
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan))
    return {"auc_gain": float(b - a), "ci95": [float(lo), float(hi)], "samples": len(diffs)}


def group_metrics(probs: dict[str, np.ndarray], y: np.ndarray, accepted_same: Sequence[int],
                  accepted_other: Sequence[int], true_found: Sequence[int],
                  true_total: Sequence[int], patients: Sequence[str] | None = None) -> dict:
    """Metrics of one group of queries. ``accepted_same/other[i]``: accepted history images
    of query i of its own / another patient; ``true_found/total[i]``: of its true history;
    ``patients[i]``: its patient, for the paired bootstrap of ``gain`` (none without)."""
    out = {c: {"auc": macro_auc(p, y), "accuracy": accuracy(p, y)} for c, p in probs.items()}
    if patients is not None and "current_only" in probs:
        out["gain"] = {c: paired_gain(probs["current_only"], p, y, patients)
                       for c, p in probs.items() if c != "current_only"}
    same, other = int(np.sum(accepted_same)), int(np.sum(accepted_other))
    out["false_history_rate"] = other / (same + other) if same + other else None
    out["history_recall"] = (float(np.sum(true_found) / np.sum(true_total))
                             if np.sum(true_total) else None)
    out["accepted_per_query"] = float((same + other) / max(len(y), 1))
    out["queries"] = int(len(y))
    return out


def _cell(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _gain_cell(g) -> str:
    if not g:
        return "-"
    lo, hi = g["ci95"]
    return f"{g['auc_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def table(groups: dict[str, dict]) -> str:
    """Markdown: one row per group (modalities, then overall)."""
    head = ("| group | queries | current-only AUC / acc | retrieved-history AUC / acc | "
            "true-history AUC / acc | retrieved - current [95% CI] | true - current [95% CI] "
            "| false-history rate | history recall |")
    lines = [head, "|---|---:|---|---|---|---|---|---:|---:|"]
    for name, g in groups.items():
        cells = [f"{_cell(g[c]['auc'])} / {_cell(g[c]['accuracy'])}" for c in CONDITIONS]
        gains = [_gain_cell(g.get("gain", {}).get(c)) for c in CONDITIONS[1:]]
        lines.append(f"| {name} | {g['queries']} | " + " | ".join(cells + gains)
                     + f" | {_cell(g['false_history_rate'])} | {_cell(g['history_recall'])} |")
    return "\n".join(lines) + "\n"


def _gain_summary(runs, name, condition) -> str:
    """Mean AUC gain over the runs and in how many its 95 % interval lies above 0."""
    gains = [r[name].get("gain", {}).get(condition) for r in runs]
    gains = [g for g in gains if g]
    if not gains:
        return "-"
    above = sum(g["ci95"][0] > 0 for g in gains)
    return f"{np.mean([g['auc_gain'] for g in gains]):+.3f} ({above}/{len(gains)})"


def mean_table(runs: list[dict[str, dict]]) -> str:
    """Markdown: per group, each condition's AUC as mean +- half the range over ``runs``
    (the same groups each, e.g. classifier seeds), the mean gain over current-only with
    the number of runs whose 95 % interval lies above 0, and the mean false-history rate."""
    head = ("| group | queries | current-only AUC | retrieved-history AUC | true-history AUC "
            "| retrieved - current (CI > 0) | true - current (CI > 0) | false-history rate |")
    lines = [f"{len(runs)} run(s): mean +- half the range", "", head,
             "|---|---:|---|---|---|---|---|---:|"]
    for name in runs[0]:
        cells = []
        for c in CONDITIONS:
            v = np.asarray([r[name][c]["auc"] for r in runs if r[name][c]["auc"] is not None])
            cells.append(f"{v.mean():.3f} +- {(v.max() - v.min()) / 2:.3f}" if v.size else "-")
        cells += [_gain_summary(runs, name, c) for c in CONDITIONS[1:]]
        f = [r[name]["false_history_rate"] for r in runs if r[name]["false_history_rate"] is not None]
        lines.append(f"| {name} | {runs[0][name]['queries']} | " + " | ".join(cells)
                     + f" | {_cell(float(np.mean(f)) if f else None)} |")
    return "\n".join(lines) + "\n"
