"""Pictures: the query beside its retrieved history, and the AUC per modality."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mami_jax.apps.history.scoring import CONDITIONS  # noqa: E402


def _show(ax, image: np.ndarray, title: str, color: str = "black") -> None:
    """The middle slice of a (T, H, W, 3) model input, contrast-stretched for display."""
    x = np.asarray(image, np.float32)[len(image) // 2]
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    ax.imshow(np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1))
    ax.set_title(title, fontsize=8, color=color)
    ax.axis("off")


def query_figure(query_image, query_title: str, candidates, path: str) -> None:
    """``candidates``: (image, title, accepted) of the retrieved earlier images, best first."""
    n = 1 + len(candidates)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6), squeeze=False)
    _show(axes[0, 0], query_image, "query\n" + query_title, "navy")
    for ax, (image, title, accepted) in zip(axes[0, 1:], candidates):
        _show(ax, image, title, "darkgreen" if accepted else "firebrick")
    fig.suptitle("retrieved earlier images (green: accepted as history, red: rejected)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def auc_spread(runs: list[dict], names: list[str], condition: str):
    """(mean, whiskers) of ``condition``'s AUC per group over ``runs``: whiskers (2, groups)
    from the lowest to the highest run, None with one run. An AUC a run could not compute
    (null: one class only) is left out of that group's mean, not counted as 0; a group
    with none is NaN (no bar)."""
    values = np.asarray([[np.nan if run[g][condition]["auc"] is None
                          else run[g][condition]["auc"] for g in names] for run in runs],
                        dtype=float)
    known = ~np.isnan(values)
    mean = np.where(known.any(0), np.nansum(values, 0) / np.maximum(known.sum(0), 1), np.nan)
    if len(runs) == 1:
        return mean, None
    low = np.where(known, values, np.inf).min(0)
    high = np.where(known, values, -np.inf).max(0)
    # clipped at 0: the mean of equal runs may exceed them by a rounding, and matplotlib
    # refuses a negative whisker
    err = np.maximum(np.stack([mean - low, high - mean]), 0.0)
    return mean, np.nan_to_num(err, nan=0.0, posinf=0.0, neginf=0.0)


def auc_bars(groups, path: str, split: str) -> None:
    """Macro AUC per group for the three conditions. ``groups``: one run's groups, or a
    list of runs' (e.g. classifier seeds): bars at the mean, whiskers from the lowest to
    the highest run (``auc_spread``)."""
    runs = groups if isinstance(groups, list) else [groups]
    names = list(runs[0])
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.2))
    width = 0.8 / len(CONDITIONS)
    for c, condition in enumerate(CONDITIONS):
        mean, err = auc_spread(runs, names, condition)
        ax.bar(np.arange(len(names)) + (c - 1) * width, mean, width, yerr=err, capsize=2,
               label=condition.replace("_", " "))
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("macro AUC")
    seeds = f", mean of {len(runs)} runs (whiskers: lowest-highest)" if len(runs) > 1 else ""
    ax.set_title(f"diagnosis AUC ({split} split{seeds})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.set_ylim(0.4, 1.08)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
