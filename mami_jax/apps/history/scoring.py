"""Diagnosis metrics: macro AUC, accuracy, false-history rate; the printed table.

``auc`` is the one-vs-rest ROC AUC averaged over the classes present with both
positives and negatives (for two classes, the AUC of the positive class; ties count
half, via ``mami_jax.evaluate.metrics.verification_metrics``); ``None`` when no class
qualifies. ``false_history_rate`` is the share of accepted history images that belong
to another patient (``None`` when nothing was accepted); ``history_recall`` the share
of the true earlier images (of the same modality, within k) that were accepted.
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


def group_metrics(probs: dict[str, np.ndarray], y: np.ndarray, accepted_same: Sequence[int],
                  accepted_other: Sequence[int], true_found: Sequence[int],
                  true_total: Sequence[int]) -> dict:
    """Metrics of one group of queries. ``accepted_same/other[i]``: accepted history images
    of query i of its own / another patient; ``true_found/total[i]``: of its true history."""
    out = {c: {"auc": macro_auc(p, y), "accuracy": accuracy(p, y)} for c, p in probs.items()}
    same, other = int(np.sum(accepted_same)), int(np.sum(accepted_other))
    out["false_history_rate"] = other / (same + other) if same + other else None
    out["history_recall"] = (float(np.sum(true_found) / np.sum(true_total))
                             if np.sum(true_total) else None)
    out["accepted_per_query"] = float((same + other) / max(len(y), 1))
    out["queries"] = int(len(y))
    return out


def _cell(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(groups: dict[str, dict]) -> str:
    """Markdown: one row per group (modalities, then overall)."""
    head = ("| group | queries | current-only AUC / acc | retrieved-history AUC / acc | "
            "true-history AUC / acc | false-history rate | history recall |")
    lines = [head, "|---|---:|---|---|---|---:|---:|"]
    for name, g in groups.items():
        cells = [f"{_cell(g[c]['auc'])} / {_cell(g[c]['accuracy'])}" for c in CONDITIONS]
        lines.append(f"| {name} | {g['queries']} | " + " | ".join(cells)
                     + f" | {_cell(g['false_history_rate'])} | {_cell(g['history_recall'])} |")
    return "\n".join(lines) + "\n"


def mean_table(runs: list[dict[str, dict]]) -> str:
    """Markdown: per group, each condition's AUC as mean +- half the range over ``runs``
    (the same groups each, e.g. classifier seeds), and the mean false-history rate."""
    head = ("| group | queries | current-only AUC | retrieved-history AUC | true-history AUC "
            "| false-history rate |")
    lines = [f"{len(runs)} run(s): mean +- half the range", "", head,
             "|---|---:|---|---|---|---:|"]
    for name in runs[0]:
        cells = []
        for c in CONDITIONS:
            v = np.asarray([r[name][c]["auc"] for r in runs if r[name][c]["auc"] is not None])
            cells.append(f"{v.mean():.3f} +- {(v.max() - v.min()) / 2:.3f}" if v.size else "-")
        f = [r[name]["false_history_rate"] for r in runs if r[name]["false_history_rate"] is not None]
        lines.append(f"| {name} | {runs[0][name]['queries']} | " + " | ".join(cells)
                     + f" | {_cell(float(np.mean(f)) if f else None)} |")
    return "\n".join(lines) + "\n"
