"""Whether a split can be evaluated at all, asked before a run spends its time.

The "reid" protocol leaves a query's own study out of its gallery (``protocols``), so a
query has a true match only when its patient has images of another study in the same
(dataset, modality) group. A split without rows, or one where no patient has images of
two studies (one image per patient, say), scores nothing: a training run used to find
that out at its final evaluation, after all its steps, and stop there with status 1.
``check_split_evaluable`` refuses such a split before the run, naming the split's numbers
and what to change. It asks the protocols the run evaluates: with ``eval.protocols =
("history",)`` a split needs a patient with two visits of different ``order`` (images
without one are left out of that protocol), which two studies of one order or of none
are not.
"""

from __future__ import annotations

import collections
from typing import Sequence

from mami_jax.data.manifest import ManifestRow
from mami_jax.data.splits import split_counts


def patients_with_two_studies(rows: Sequence[ManifestRow], split: str) -> dict[str, int]:
    """Per "dataset/modality" group of ``split``: how many patients have images of two or
    more studies there (the patients whose images can be queries with a true match)."""
    studies: dict[str, dict[str, set]] = collections.defaultdict(
        lambda: collections.defaultdict(set))
    for r in rows:
        if r.split == split:
            studies[f"{r.dataset}/{r.modality}"][r.patient_key].add(r.study_key)
    return {group: sum(len(s) > 1 for s in by_patient.values())
            for group, by_patient in studies.items()}


def _some_protocol_scores(rows: Sequence[ManifestRow], split: str,
                          protocols: Sequence[str]) -> bool:
    """Whether some (dataset, modality) group of ``split`` has, under one of
    ``protocols``, a query with a true match (what ``evaluator.score_groups`` scores)."""
    from mami_jax.evaluate.protocols import build_protocol
    groups: dict[str, list[ManifestRow]] = collections.defaultdict(list)
    for r in rows:
        if r.split == split:
            groups[f"{r.dataset}/{r.modality}"].append(r)
    return any(build_protocol(members, name, split).query_has_match.any()
               for members in groups.values() for name in protocols)


def check_split_evaluable(rows: Sequence[ManifestRow], split: str,
                          split_flag: str = "--config.eval.split", otherwise: str = "",
                          protocols: Sequence[str] = ("reid",)) -> None:
    """Raises ValueError when ``split`` of ``rows`` has no row, or no group where one of
    ``protocols`` (``eval.protocols``) has a query with a true match: no patient with
    images of two studies, or for the history protocol alone, of two ordered visits.
    ``split_flag``: the caller's flag that picks the split; ``otherwise``: the way round it
    the caller offers (how to train without evaluating), appended to the message."""
    where = next((f"{r.location[0]}: " for r in rows if r.location), "")
    tail = f"; or {otherwise}" if otherwise else ""
    members = [r for r in rows if r.split == split]
    if not members:
        raise ValueError(
            f"{where}no rows in split {split!r} to evaluate (the rows' splits: "
            f"{split_counts(rows)}): "
            f"give some patients split {split!r}, or evaluate another split "
            f"({split_flag}){tail}")
    opening = (f"{where}split {split!r} has {len(members)} images of "
               f"{len({r.patient_key for r in members})} patients, but no patient has images "
               "of two")
    if not any(patients_with_two_studies(rows, split).values()):
        raise ValueError(
            f"{opening} studies (visits) in one dataset and modality: a query's own study is "
            f"left out of its gallery, so no query has a true match and there is nothing to "
            f"score. Give the split patients with several visits, or evaluate another split "
            f"({split_flag}){tail}")
    if not _some_protocol_scores(rows, split, protocols):
        raise ValueError(
            f"{opening} visits of different order in one dataset and modality: the protocols "
            f"{list(protocols)} evaluated (eval.protocols) leave nothing to score (history: "
            f"each patient's latest visit is the query, earlier visits the gallery; images "
            f"without an order are left out). Fill in the order column, add 'reid' to "
            f"eval.protocols, or evaluate another split ({split_flag}){tail}")
