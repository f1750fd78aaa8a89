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


def _unshown(ax, title: str, color: str) -> None:
    """An empty framed panel for an image that cannot be shown (its caption says why)."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("0.92")
    ax.set_aspect("equal")          # square, as the images beside it are
    ax.text(0.5, 0.5, "image not shown", ha="center", va="center", fontsize=8, color="0.3",
            transform=ax.transAxes)
    ax.set_title(title, fontsize=8, color=color)


def query_figure(query_image, query_title: str, candidates, path: str) -> None:
    """``candidates``: (image, title, accepted) of the retrieved earlier images, best
    first; an image of None is a candidate whose file cannot be read (gone since it was
    archived, say; its caption says so, "file missing"): an empty panel, since the ranks
    and scores come from the index alone."""
    n = 1 + len(candidates)
    query_title = "query\n" + query_title
    lines = max(t.count("\n") + 1 for t in [query_title] + [t for _, t, _ in candidates])
    # room for the captions and the headline above them (tight_layout leaves a suptitle
    # out, and five-line captions ran into it)
    height = 2.1 + 0.15 * lines + 0.3
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, height), squeeze=False)
    _show(axes[0, 0], query_image, query_title, "navy")
    for ax, (image, title, accepted) in zip(axes[0, 1:], candidates):
        color = "darkgreen" if accepted else "firebrick"
        if image is None:
            _unshown(ax, title, color)
        else:
            _show(ax, image, title, color)
    fig.suptitle("retrieved earlier images (green: accepted as history, red: rejected)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def auc_spread(runs: list[dict], names: list[str], condition: str):
    """(mean, whiskers) of ``condition``'s AUC per group over ``runs``: whiskers (2, groups)
    from the lowest to the highest run, None with one run. An AUC a run could not compute
    (null: one class only) is left out of that group's mean, not counted as 0; a group
    with none is NaN (no bar; ``auc_bars`` marks it n/a)."""
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


#: The lower end of the AUC axis when every AUC lies above it (chance is 0.5).
AUC_FLOOR = 0.4


def auc_axis_bottom(runs: list[dict], names: list[str]) -> float:
    """The lower end of the AUC axis: ``AUC_FLOOR``, or 0.05 below the lowest AUC of any
    run (not 0 below): an AUC under a fixed floor of 0.4 drew no bar at all, the same
    picture as an AUC that could not be computed."""
    values = [run[g][c]["auc"] for run in runs for g in names for c in CONDITIONS]
    known = [float(v) for v in values if v is not None]
    return max(0.0, min([AUC_FLOOR] + [v - 0.05 for v in known]))


def auc_bars(groups, path: str, split: str) -> None:
    """Macro AUC per group for the three conditions. ``groups``: one run's groups, or a
    list of runs' (e.g. classifier seeds): bars at the mean, whiskers from the lowest to
    the highest run (``auc_spread``). The axis reaches below the lowest AUC
    (``auc_axis_bottom``), and a group whose AUC no run could compute (null) is marked
    "n/a" where its bar would stand, so neither looks like the other."""
    runs = groups if isinstance(groups, list) else [groups]
    names = list(runs[0])
    bottom = auc_axis_bottom(runs, names)
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.2))
    width = 0.8 / len(CONDITIONS)
    for c, condition in enumerate(CONDITIONS):
        mean, err = auc_spread(runs, names, condition)
        x = np.arange(len(names)) + (c - 1) * width
        bars = ax.bar(x, mean, width, yerr=err, capsize=2, label=condition.replace("_", " "))
        for xi in x[np.isnan(mean)]:
            ax.text(xi, bottom + 0.01, "n/a", ha="center", va="bottom", rotation=90,
                    fontsize=7, color=bars.patches[0].get_facecolor())
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_xlim(-0.55, len(names) - 0.45)     # an "n/a" at either end is not cut off
    ax.set_ylabel("macro AUC")
    seeds = f", mean of {len(runs)} runs (whiskers: lowest-highest)" if len(runs) > 1 else ""
    ax.set_title(f"diagnosis AUC ({split} split{seeds})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    ax.set_ylim(bottom, 1.08)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
