"""Evaluation protocols: which rows are queries, which form the gallery.

A ``Protocol`` holds row indices (into the manifest rows it was built from) for the
queries and for the gallery, plus the patient and study ids of each, ready for
``reid_metrics(similarity, query_pids, gallery_pids, query_studies, gallery_studies)``.
Patient ids are ``ManifestRow.patient_key`` ("dataset/patient") and study ids
``ManifestRow.study_key`` ("dataset/patient/study"), so they are unique across
datasets.

- ``"reid"``: every image of the split is a query and the gallery is every image of
  the split. The metric drops, for each query, gallery images of the query's own
  study (which includes the query itself): re-identification must work across
  visits, not find a second view of the same visit.
- ``"history"``: per patient of the split, the images of the latest visit (largest
  ``order_key(order)``; every study tied at that order counts as latest) are the
  queries; images of strictly earlier visits, of all patients, form the gallery.
  This is the setting of history-augmented diagnosis: find a patient's past images
  from today's. An image without an ``order`` has no place in time: it is neither query
  nor gallery, and ``left_out`` counts it (it sorted after every visit number and before
  every date, so it was the query beside numbered visits and gallery beside dated ones).

A query whose patient has no gallery image outside the query's study cannot be
answered; ``query_has_match`` marks them and ``num_without_match`` counts them (the
metrics skip and count them the same way).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow, order_key

PROTOCOLS = ("reid", "history")


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    split: str
    query: np.ndarray  # int64 row indices of the queries
    gallery: np.ndarray  # int64 row indices of the gallery
    query_pids: np.ndarray  # str, patient_key per query
    gallery_pids: np.ndarray
    query_studies: np.ndarray  # str, study_key per query
    gallery_studies: np.ndarray
    query_has_match: np.ndarray  # bool per query
    left_out: np.ndarray = dataclasses.field(  # int64 rows of neither (history: no order)
        default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_queries(self) -> int:
        return int(self.query.size)

    @property
    def num_without_match(self) -> int:
        return int((~self.query_has_match).sum())

    def summary(self) -> str:
        return (f"protocol {self.name} on split {self.split!r}: {self.num_queries} queries "
                f"({self.num_without_match} without a true match in the gallery), "
                f"{self.gallery.size} gallery images, "
                f"{len(set(self.query_pids.tolist()))} query patients")


def _has_match(rows, query, gallery) -> np.ndarray:
    per_patient = collections.Counter(rows[j].patient_key for j in gallery)
    per_study = collections.Counter(rows[j].study_key for j in gallery)
    return np.asarray(
        [per_patient[rows[i].patient_key] - per_study[rows[i].study_key] > 0 for i in query],
        dtype=bool)


def build_protocol(rows: Sequence[ManifestRow], name: str, split: str = "test") -> Protocol:
    """Builds protocol ``name`` ("reid" or "history") over the rows of ``split``."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {PROTOCOLS}")
    members = [i for i, r in enumerate(rows) if r.split == split]
    if not members:
        raise ValueError(f"no rows in split {split!r}; assign splits first "
                         f"(mami_jax.data.splits.assign_splits)")
    if name == "reid":
        query = np.asarray(members, np.int64)
        gallery = query.copy()
    else:
        undated = [i for i in members if not rows[i].order]
        members = [i for i in members if rows[i].order]
        latest: dict[str, tuple] = {}
        for i in members:
            k = order_key(rows[i].order)
            p = rows[i].patient_key
            if p not in latest or k > latest[p]:
                latest[p] = k
        q, g = [], []
        for i in members:
            (q if order_key(rows[i].order) == latest[rows[i].patient_key] else g).append(i)
        query = np.asarray(q, np.int64)
        gallery = np.asarray(g, np.int64)
    return Protocol(
        name=name,
        split=split,
        query=query,
        gallery=gallery,
        query_pids=np.asarray([rows[i].patient_key for i in query], dtype=str),
        gallery_pids=np.asarray([rows[i].patient_key for i in gallery], dtype=str),
        query_studies=np.asarray([rows[i].study_key for i in query], dtype=str),
        gallery_studies=np.asarray([rows[i].study_key for i in gallery], dtype=str),
        query_has_match=_has_match(rows, query, gallery),
        left_out=np.asarray(undated if name == "history" else [], np.int64),
    )
