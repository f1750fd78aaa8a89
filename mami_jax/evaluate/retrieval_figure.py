"""Retrieval results as a picture: each query beside its top-ranked gallery images.

    from mami_jax.evaluate.retrieval_figure import top_matches, retrieval_figure
    top = top_matches(similarity, protocol, k=5)       # what the metrics rank, per query
    fig = retrieval_figure(rows, protocol, similarity, k=5, path="retrieval.png")

``top_matches`` ranks the gallery for every query the way the metrics do
(``mami_jax.evaluate.metrics``): gallery images of the query's own study are removed
first (the "reid" protocol asks for another visit of the patient, not a second view of
the same visit), then the rest is sorted by decreasing similarity. So the share of
queries (with a true match in the gallery) whose first match is correct is their
Rank-1, and the picture shows exactly what that number counts.

``retrieval_figure`` draws one row per query: the query, then its top ``k`` matches,
each framed green (same patient: a correct match) or red (another patient), captioned
with its rank, how far its similarity stands above the query's gallery (in standard
deviations: a trained model's cosine similarities can all lie within 0.001 of 1, where
the similarity itself says nothing at a glance) and its patient. Images are shown as decoded
(``mami_jax.data.decode``): the middle slice of a series.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mami_jax.data.decode import as_rgb, open_volume
from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.metrics import build_query_targets, check_finite_similarity
from mami_jax.evaluate.protocols import Protocol
from mami_jax.runtime.atomic_files import write_atomic

__all__ = ["TopMatches", "top_matches", "display_image", "retrieval_figure", "draw_query_row"]

CORRECT_COLOUR = "#1a9641"
WRONG_COLOUR = "#d7191c"


@dataclasses.dataclass(frozen=True)
class TopMatches:
    """Per query (rows in ``protocol.query`` order), its ``k`` best gallery images."""

    index: np.ndarray    # (Q, k) int64 positions in protocol.gallery; -1 where fewer remain
    score: np.ndarray    # (Q, k) float32 similarity; NaN where index is -1
    correct: np.ndarray  # (Q, k) bool: same patient as the query
    #: (Q, k) float32: ``score`` in standard deviations above the mean of the query's
    #: ranked gallery (own study left out); NaN where index is -1
    standing: np.ndarray

    @property
    def top1_correct(self) -> np.ndarray:
        """(Q,) bool: the best-ranked gallery image is of the query's patient."""
        return self.correct[:, 0]


def top_matches(similarity, protocol: Protocol, k: int = 5) -> TopMatches:
    """The ``k`` highest-scoring gallery images of every query, own study removed."""
    s = np.asarray(similarity, np.float32)
    shape = (protocol.query.size, protocol.gallery.size)
    if s.shape != shape:
        raise ValueError(f"similarity has shape {s.shape}; protocol {protocol.name!r} has "
                         f"{shape[0]} queries and {shape[1]} gallery images")
    check_finite_similarity(s)
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = int(k)
    targets = build_query_targets(protocol.query_pids, protocol.gallery_pids,
                                  protocol.query_studies, protocol.gallery_studies)
    index = np.full(shape[:1] + (k,), -1, np.int64)
    score = np.full(shape[:1] + (k,), np.nan, np.float32)
    correct = np.zeros(shape[:1] + (k,), bool)
    standing = np.full(shape[:1] + (k,), np.nan, np.float32)
    for q in range(shape[0]):
        row = s[q].astype(np.float64)
        row[targets.excluded(q)] = -np.inf
        order = np.argsort(-row, kind="stable")[:k]
        order = order[np.isfinite(row[order])]
        n = order.size
        index[q, :n] = order
        score[q, :n] = s[q, order]
        correct[q, :n] = protocol.gallery_pids[order] == protocol.query_pids[q]
        ranked = row[np.isfinite(row)]
        spread = ranked.std() if ranked.size else 0.0
        standing[q, :n] = (row[order] - ranked.mean()) / spread if spread > 0 else 0.0
    return TopMatches(index, score, correct, standing)


def display_image(row: ManifestRow,
                  value_windows: Mapping[str, tuple | None] | None = None) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: the decoded image, or a series' middle slice read alone
    (a folder of 500 DICOM files on a bucket is one file read, not 500), through its
    modality's value window where ``value_windows`` (modality -> (lo, hi) or None,
    ``data.modalities.<m>.value_window``) sets one, as the model reads it."""
    volume = open_volume(row.path, value_window=(value_windows or {}).get(row.modality))
    return as_rgb(volume.read([volume.num_slices // 2]))[0]


def _frame(ax, colour: str, width: float = 4.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def retrieval_figure(rows: Sequence[ManifestRow], protocol: Protocol, similarity,
                     queries: Sequence[int] | None = None, k: int = 5,
                     title: str | None = None, path: str | None = None,
                     value_windows: Mapping[str, tuple | None] | None = None):
    """A matplotlib Figure: per chosen query, the query and its top ``k`` matches.

    ``rows`` are the manifest rows the protocol was built from; ``queries`` are
    positions in ``protocol.query`` (default: the first 4 queries that have a true
    match). Correct matches are framed green and marked with a tick, wrong ones red.
    With ``path`` the figure is also written there as a PNG (atomically).
    ``value_windows``: as ``display_image``.
    """
    top = top_matches(similarity, protocol, k)
    if queries is None:
        queries = np.flatnonzero(protocol.query_has_match)[:4].tolist()
    queries = [int(q) for q in queries]
    if not queries:
        raise ValueError(f"protocol {protocol.name!r}: no query to show")
    bad = [q for q in queries if not 0 <= q < protocol.query.size]
    if bad:
        raise ValueError(f"queries {bad} out of range: protocol {protocol.name!r} has "
                         f"{protocol.query.size} queries")
    from matplotlib.figure import Figure  # no pyplot state: works headless and inline

    fig = Figure(figsize=(1.7 * (k + 1), 1.95 * len(queries) + (0.4 if title else 0.0)),
                 dpi=110)
    axes = fig.subplots(len(queries), k + 1, squeeze=False)
    for r, q in enumerate(queries):
        draw_query_row(axes[r], rows, protocol, top, q, value_windows=value_windows)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        FigureCanvasAgg(fig)
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return fig


def draw_query_row(axes, rows: Sequence[ManifestRow], protocol: Protocol, top: TopMatches,
                   q: int, label: str = "query",
                   value_windows: Mapping[str, tuple | None] | None = None) -> None:
    """One row of a retrieval figure: query ``q`` in ``axes[0]``, its matches after it
    (``value_windows``: as ``display_image``)."""
    query_row = rows[int(protocol.query[q])]
    ax = axes[0]
    ax.imshow(display_image(query_row, value_windows), vmin=0.0, vmax=1.0)
    _frame(ax, "black", 2.0)
    ax.set_title(f"{label}\n{query_row.patient_id} v{query_row.order}", fontsize=8)
    for c, ax in enumerate(axes[1:]):
        g = int(top.index[q, c])
        if g < 0:
            ax.axis("off")
            continue
        match = rows[int(protocol.gallery[g])]
        ok = bool(top.correct[q, c])
        ax.imshow(display_image(match, value_windows), vmin=0.0, vmax=1.0)
        _frame(ax, CORRECT_COLOUR if ok else WRONG_COLOUR)
        mark = "\u2713" if ok else "\u2717"
        ax.set_title(f"#{c + 1} {mark} {top.standing[q, c]:+.1f}\u03c3\n"
                     f"{match.patient_id} v{match.order}", fontsize=8,
                     color=CORRECT_COLOUR if ok else WRONG_COLOUR)
