"""Writes evaluation results: metrics.json, a fixed-width table and a CMC plot.

One call per evaluation (e.g. ``WORKDIR/eval/step_N``) with every group's
metrics, a group being a name such as ``"phantoms/xray/reid"`` and its value
the merged dicts of ``reid_metrics`` / ``chunked_reid_metrics`` and
``verification_metrics``. Files are written atomically with the umask's
permissions (``mami_jax/runtime/atomic_files.py``: temporary file in the same
folder, then rename), so a crash never leaves a half-written report that a later
run would read, and the report is as readable as any file the user creates.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

from mami_jax.runtime import strict_json
from mami_jax.runtime.atomic_files import write_atomic, write_text_atomic

__all__ = ["TABLE_COLUMNS", "format_table", "write_eval_report"]

#: (header, metrics key) of the printed table, in order. ``n_scored``: the queries with a
#: true match, the ones the rates average over (metrics.json ``num_valid_queries``; its
#: ``num_queries`` counts the skipped ones too, so the column is not named after it).
TABLE_COLUMNS = (
    ("rank1", "rank1"),
    ("rank5", "rank5"),
    ("rank10", "rank10"),
    ("mAP", "mAP"),
    ("mINP", "mINP"),
    ("auc", "auc"),
    ("eer", "eer"),
    ("n_scored", "num_valid_queries"),
)

METRICS_FILE = "metrics.json"
CMC_FILE = "cmc.png"


def _check_groups(metrics_by_group) -> None:
    if not isinstance(metrics_by_group, Mapping) or not metrics_by_group:
        raise ValueError("metrics_by_group must be a non-empty mapping of group name -> metrics")
    for group, values in metrics_by_group.items():
        if not isinstance(group, str) or not group:
            raise ValueError(f"group names must be non-empty strings, got {group!r}")
        if not isinstance(values, Mapping):
            raise TypeError(f"group {group!r}: metrics must be a mapping, got "
                            f"{type(values).__name__}")


def _cell(value, integer: bool) -> str:
    if value is None:
        return "-"
    if integer:
        return str(int(value))
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def format_table(metrics_by_group: Mapping[str, Mapping]) -> str:
    """Fixed-width table: one row per group (in the given order), columns TABLE_COLUMNS.

    Rates are printed as fractions with 4 decimals; a metric the group does not
    have is "-".
    """
    _check_groups(metrics_by_group)
    name_width = max(len("group"), *(len(g) for g in metrics_by_group))
    widths = [max(len(header), 9) for header, _ in TABLE_COLUMNS]
    lines = ["  ".join([f"{'group':<{name_width}}"] +
                       [f"{h:>{w}}" for (h, _), w in zip(TABLE_COLUMNS, widths)])]
    lines.append("-" * len(lines[0]))
    for group, values in metrics_by_group.items():
        cells = [_cell(values.get(key), key.startswith("num_"))
                 for header, key in TABLE_COLUMNS]
        lines.append("  ".join([f"{group:<{name_width}}"] +
                               [f"{c:>{w}}" for c, w in zip(cells, widths)]))
    return "\n".join(lines)


def _plot_cmc(metrics_by_group: Mapping[str, Mapping], path: str, title: str | None) -> bool:
    curves = {g: np.asarray(v["cmc"], float) for g, v in metrics_by_group.items()
              if v.get("cmc") is not None and len(v["cmc"]) and
              np.any(np.isfinite(np.asarray(v["cmc"], float)))}
    if not curves:
        return False
    # The Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.5 + 0.12 * max(0, len(curves) - 12)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    for n, (group, cmc) in enumerate(curves.items()):
        ranks = np.arange(1, cmc.size + 1)
        r1 = cmc[0]
        ax.plot(ranks, cmc, styles[(n // 10) % 4], color=palette[n % 10], linewidth=1.6,
                label=f"{group} (R1 {r1:.3f})")
    ax.set_xlabel("rank k")
    ax.set_ylabel("fraction of queries with a true match in the top k")
    ax.set_xlim(1, max(c.size for c in curves.values()))
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "CMC")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True


def write_eval_report(metrics_by_group: Mapping[str, Mapping], out_dir: str,
                      title: str | None = None, print_table: bool = True) -> str:
    """Writes ``out_dir/metrics.json`` and ``out_dir/cmc.png``; returns (and prints) the table.

    ``metrics.json`` maps each group to its metrics (arrays as lists, NaN as
    null). The PNG has one CMC curve per group that has a ``cmc`` entry; it is
    not written when no group has one.
    """
    _check_groups(metrics_by_group)
    os.makedirs(out_dir, exist_ok=True)
    text = strict_json.dumps({group: dict(values) for group, values in metrics_by_group.items()},
                             where=METRICS_FILE, indent=2, sort_keys=True) + "\n"
    write_text_atomic(os.path.join(out_dir, METRICS_FILE), text)
    _plot_cmc(metrics_by_group, os.path.join(out_dir, CMC_FILE), title)
    table = format_table(metrics_by_group)
    if print_table:
        print(table)
    return table
