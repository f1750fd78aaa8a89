"""Which archived images may serve as a query image's history.

The rule (``is_history``): a candidate counts only when it is of the query's modality
and not of the query's own study (nor the query itself), and

- of the query's own patient, when it is strictly earlier (manifest ``order``, compared
  with ``mami_jax.data.manifest.order_key``: visit numbers numerically, dates as text);
  an image of that patient without an order is never history (earlier or later cannot be
  told, and the same visit's images would let the classifier read the label off a
  sibling image);
- of another patient, always. A manifest's ``order`` is the visit's place *within its
  patient*: compared across patients, visit 0 of a query would have had no impostor at
  all and visit 3 only other patients' visits 0-2, so retrieval knew the query's visit
  number (a false-history rate that fell with it, and the visit index, which the disease
  follows, told to the history model for free). A new image arrives without such
  knowledge, so every other patient's archived image is a candidate (with dated orders
  this also admits other patients' later images: harder than a hospital's archive at
  that date, never easier).

A query from outside the archive (the ``query`` command: no patient) is newer than
everything archived; given an ``--order`` it excludes the archived images that are not
earlier, whoever's they are, and those without an order (which cannot be shown earlier).

``retrieve`` applies the rule to the archive's ranked candidates: it asks the index for
more candidates than ``k`` (doubling until ``k`` pass the rule or the partition is
exhausted), so the rule never shortens the list while eligible images remain, then
marks each of the ``k`` best as accepted when its similarity exceeds the threshold.
``true_history`` is the ground truth the evaluation compares with: the patient's own
earlier images, most recent first.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow, order_key
from mami_jax.runtime.progress import progress_bar


#: The dataset of an image queried without being archived (``query --image`` of a new
#: file): a patient and study of its own until its archived ``--with`` images place it in
#: their visit. The manifests the history app reads may not name a dataset so
#: (``commands._rows``): their images would be taken for new ones.
NEW_IMAGE_DATASET = "query"


def is_history(candidate: ManifestRow, query: ManifestRow) -> bool:
    """Whether ``candidate`` may be ``query``'s history (the module's rule)."""
    if candidate.modality != query.modality or candidate.image_id == query.image_id:
        return False
    if candidate.study_key == query.study_key:
        return False
    if query.dataset == NEW_IMAGE_DATASET:   # nobody's yet: its order (if any) is a time
        # an archived image without an order cannot be shown earlier (order_key put "" after
        # every number and before every text: earlier than 2019-03-01, not than 20190301)
        return not query.order or (bool(candidate.order)
                                   and order_key(candidate.order) < order_key(query.order))
    if candidate.patient_key != query.patient_key:
        return True
    if not candidate.order or not query.order:
        return False
    return order_key(candidate.order) < order_key(query.order)


@dataclasses.dataclass
class Match:
    """One candidate: its archive position (global row), its score (the cosine similarity,
    or the hub-corrected score of a hub-corrected archive), decision."""

    position: int
    score: float
    accepted: bool


#: Queries searched at once by ``retrieve`` (one progress step).
RETRIEVE_CHUNK = 1024


def retrieve(archive, query_rows: Sequence[ManifestRow], query_vectors: np.ndarray, k: int,
             threshold: float | dict, progress: bool = True,
             desc: str = "retrieval") -> list[list[Match]]:
    """The ``k`` best history candidates of each query (ranked, rule applied) with their
    accept/reject decision; ``threshold`` is one value or one per modality. Queries are
    searched ``RETRIEVE_CHUNK`` at a time under a progress bar (``desc``; none without
    ``progress``): every image of a large archive is a long search."""
    result: list[list[Match] | None] = [None] * len(query_rows)
    by_modality: dict[str, list[int]] = {}
    for i, r in enumerate(query_rows):
        by_modality.setdefault(r.modality, []).append(i)
    with progress_bar(len(query_rows), desc, disable=not progress) as bar:
        for modality, members in by_modality.items():
            t = threshold[modality] if isinstance(threshold, dict) else threshold
            size = archive.partition_size(modality)
            for start in range(0, len(members), RETRIEVE_CHUNK):
                chunk = pending = members[start:start + RETRIEVE_CHUNK]
                fetch = min(size, 4 * k + 16)
                while pending:
                    scores, positions = archive.search(modality, query_vectors[pending], fetch,
                                                       [query_rows[q].image_id for q in pending])
                    still = []
                    for row, q in enumerate(pending):
                        matches = [Match(int(p), float(s), bool(s > t))
                                   for s, p in zip(scores[row], positions[row])
                                   if p >= 0 and is_history(archive.rows[p], query_rows[q])][:k]
                        if len(matches) < k and fetch < size:
                            still.append(q)
                        else:
                            result[q] = matches
                    pending, fetch = still, min(size, 2 * fetch)
                bar.update(len(chunk))
    return [r if r is not None else [] for r in result]


def true_history(rows: Sequence[ManifestRow], k: int) -> list[list[int]]:
    """Per row: indices of the same patient's history (``is_history``), the ``k`` most
    recent, most recent first."""
    by_patient: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        by_patient.setdefault((r.patient_key, r.modality), []).append(i)
    out = []
    for r in rows:
        mine = [j for j in by_patient[(r.patient_key, r.modality)] if is_history(rows[j], r)]
        mine.sort(key=lambda j: order_key(rows[j].order), reverse=True)
        out.append(mine[:k])
    return out
