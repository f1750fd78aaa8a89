"""The picture ``--mode=eval`` writes beside its metrics: what the model retrieves.

Rank-1 and the CMC say how often the first match is the patient's; this shows which
images come back and what the mistakes look like. One row per dataset/modality group: a
query that has a true match in the gallery (one at random, the same on every run), then
its top matches as the metrics rank them (``retrieval_figure.top_matches``: the query's
own visit left out), framed green for the patient's images and red for another's.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.protocols import build_protocol
from mami_jax.evaluate.retrieval import pairwise_similarity
from mami_jax.evaluate.retrieval_figure import draw_query_row, top_matches
from mami_jax.runtime.atomic_files import write_atomic

MATCHES = 5


def one_query(protocol, q: int):
    """``protocol`` with query ``q`` alone."""
    keep = [q]
    return dataclasses.replace(protocol, query=protocol.query[keep],
                               query_pids=protocol.query_pids[keep],
                               query_studies=protocol.query_studies[keep],
                               query_has_match=protocol.query_has_match[keep])


def write_retrieval_overview(path: str, by_row: Mapping[int, np.ndarray],
                             rows: Sequence[ManifestRow], groups: Mapping[str, list[int]],
                             metric: str, title: str, seed: int = 0,
                             value_windows: Mapping[str, tuple | None] | None = None) -> bool:
    """Writes the picture to ``path`` (PNG, atomically); False (nothing written) when no
    group has a query with a true match. ``groups``: row indices per group, each with an
    embedding in ``by_row``. ``value_windows``: each modality's value window, the images
    shown as the model reads them (``retrieval_figure.display_image``)."""
    rng = np.random.default_rng(seed)
    shown = []
    for name in sorted(groups):
        members = groups[name]
        group_rows = [rows[i] for i in members]
        protocol = build_protocol(group_rows, "reid", split=group_rows[0].split)
        candidates = np.flatnonzero(protocol.query_has_match)
        if candidates.size == 0:
            continue
        chosen = one_query(protocol, int(rng.choice(candidates)))
        emb = np.stack([by_row[i] for i in members])
        similarity = pairwise_similarity(emb[chosen.query], emb[chosen.gallery], metric=metric)
        shown.append((name, group_rows, chosen, top_matches(similarity, chosen, MATCHES)))
    if not shown:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.7 * (MATCHES + 1), 1.95 * len(shown) + 0.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), MATCHES + 1, squeeze=False)
    for axes_row, (name, group_rows, chosen, top) in zip(axes, shown):
        draw_query_row(axes_row, group_rows, chosen, top, 0, label=name,
                       value_windows=value_windows)
    fig.suptitle(f"{title}: a query of each group and its top {MATCHES} (green: the "
                 "same patient)", fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True
