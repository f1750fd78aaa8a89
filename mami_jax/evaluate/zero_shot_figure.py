"""``OUT/zero_shot.png``: the zero-shot table as bars, one colour per teacher.

Choosing teachers means comparing up to seven of them over five modalities; a table of
35 "Rank-1 / mAP" cells is read, bars are seen. Two panels (Rank-1, mAP of the ``reid``
protocol), a group of bars per modality. ``python -m mami_jax.evaluate.features`` writes
it beside ``zero_shot.md``; the teachers notebook shows the same figure.
"""

from __future__ import annotations

import numpy as np

from mami_jax.runtime.atomic_files import write_atomic

#: Modalities in the order the table prints them.
ORDER = ("xray", "ct", "mri", "fundus", "pathology")


def column_order(data: dict[str, dict[str, dict]]) -> list[str]:
    """The columns of ``data`` (a modality, or ``dataset/modality`` where several datasets
    hold one: ``features.summary``) in ``ORDER`` of their modality, then by name."""
    columns = {c for per in data.values() for c in per}

    def key(column):
        modality = column.rsplit("/", 1)[-1]
        return (ORDER.index(modality) if modality in ORDER else len(ORDER), column)
    return sorted(columns, key=key)


def zero_shot_figure(data: dict[str, dict[str, dict]], title: str = ""):
    """A matplotlib Figure of ``data`` ({teacher: {column: {"rank1", "mAP"}}}, a column
    being a modality or ``dataset/modality``, as ``features.summary`` returns it); a
    column a teacher does not cover has no bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modalities = column_order(data)
    fig = Figure(figsize=(max(6.0, 1.6 * len(modalities) + 2.5), 5.6), dpi=110)
    FigureCanvasAgg(fig)
    width = 0.8 / max(1, len(data))
    x = np.arange(len(modalities))
    for row, (metric, label) in enumerate((("rank1", "Rank-1"), ("mAP", "mAP"))):
        ax = fig.add_subplot(2, 1, row + 1)
        for i, (name, per) in enumerate(data.items()):
            have = [j for j, m in enumerate(modalities) if m in per]
            ax.bar(x[have] + (i - (len(data) - 1) / 2) * width,
                   [per[modalities[j]][metric] for j in have], width, label=name)
        ax.set_xticks(x, modalities)
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel(f"zero-shot {label}")
        ax.grid(True, axis="y", alpha=0.3)
        if row == 0:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def write_zero_shot_figure(data: dict[str, dict[str, dict]], path: str, title: str = "") -> str:
    """``zero_shot_figure`` saved to ``path`` (written whole or not at all)."""
    fig = zero_shot_figure(data, title)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
