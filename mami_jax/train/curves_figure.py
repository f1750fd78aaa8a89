"""``WORKDIR/curves.png``: a training run's curves in one picture, redrawn at every
evaluation and when the run ends.

A run on a remote TPU VM is judged by its curves; TensorBoard needs a server and a tunnel,
and a picture can be copied and glanced at. Four panels from the run's logged scalars
(``logged_scalars.read_scalars``, so a resumed run's curves go on): the loss and each of its
terms, the learning rate, the training speed, and Rank-1 of every evaluated group.
"""

from __future__ import annotations

import os

import numpy as np

from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.train.logged_scalars import read_scalars

CURVES_FILE = "curves.png"
RANK1_PANEL = "Rank-1 at evaluations"
Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def panels(scalars: Curves) -> dict[str, Curves]:
    """{panel title: {label: (steps, values)}} of the scalars a run logged: the total loss
    and every loss term (a ``train/X`` logged with its ``train/X_weighted``), the learning
    rate, images per second, and ``eval/<group>/rank1``; empty panels are left out."""
    terms = sorted(tag[len("train/"):-len("_weighted")] for tag in scalars
                   if tag.startswith("train/") and tag.endswith("_weighted"))
    loss = {"loss": scalars["train/loss"]} if "train/loss" in scalars else {}
    loss.update({t: scalars[f"train/{t}"] for t in terms if f"train/{t}" in scalars})
    def one(label: str, tag: str) -> Curves:
        return {label: scalars[tag]} if tag in scalars else {}
    out = {
        "loss and its terms": loss,
        "learning rate": one("learning rate", "train/learning_rate"),
        "images per second": one("all devices", "train/images_per_second"),
        RANK1_PANEL: {tag[len("eval/"):-len("/rank1")]: v for tag, v
                                  in sorted(scalars.items())
                                  if tag.startswith("eval/") and tag.endswith("/rank1")},
    }
    return {title: curves for title, curves in out.items() if curves}


def _draw(ax, name: str, curves: Curves, legend_outside: bool = False) -> None:
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o" if len(steps) < 12 else None, markersize=3,
                linewidth=1.4, label=label)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if legend_outside:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    elif len(curves) > 1:
        ax.legend(fontsize=7, frameon=False)


def write_curves(workdir: str, title: str = "") -> str | None:
    """Draws ``panels`` of ``workdir``'s scalars into ``workdir/curves.png`` (written whole
    or not at all); returns its path, or None when nothing was logged yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    try:
        drawn = panels(read_scalars(workdir))
    except FileNotFoundError:   # no event file yet
        return None
    if not drawn:
        return None
    train = [(name, curves) for name, curves in drawn.items() if name != RANK1_PANEL]
    evals = drawn.get(RANK1_PANEL)
    rows = bool(train) + bool(evals)
    fig = Figure(figsize=(12, 3.6 * rows), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, max(1, len(train)))
    for n, (name, curves) in enumerate(train):
        _draw(fig.add_subplot(grid[0, n]), name, curves)
    if evals:
        ax = fig.add_subplot(grid[rows - 1, :])
        _draw(ax, RANK1_PANEL, evals, legend_outside=True)
        ax.set_ylim(0.0, 1.02)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = os.path.join(workdir, CURVES_FILE)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
