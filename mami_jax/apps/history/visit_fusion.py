"""Retrieval by whole visits: the evidence of every modality a visit shares with the query's.

One model embeds every modality, so a query visit that brings several images (a chest
X-ray and a fundus photograph of the same day, say) can be compared with an archived
visit modality by modality, and the comparisons added up. Each single comparison is weak
(on 640 phantom patients the top-ranked earlier image of one modality is the patient's own
for about half of the queries); two or three independent ones rarely point at the same
wrong patient.

A visit is a patient's images of one ``order`` (``visit_key``): images taken together
arrive together and are archived together, so the query knows its own visit's other
images and the archive its visits' images, while which earlier visit is the patient's
is what retrieval has to find. Scores of different modalities are made comparable by
z-normalising each against its modality's different-patient pairs (``impostor_stats``:
the calibration split's images against the archived images of other patients): an
impostor modality then adds about 0, a genuine one several units, and a modality the
candidate visit lacks adds nothing, so sharing fewer modalities is no penalty, only less
evidence.

``VisitFusion.retrieve`` applies the history rule (``history_select.is_history``) to the
candidate image of the query's own modality; its visit-mates only add evidence. The
candidates are the union of the archive's ``shortlist`` best of each of the query visit's
images, so no score is computed against the whole archive; the pair scores read the index's
stored vectors, copied once per modality (as much memory again as the index).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.apps.history import hubness
from mami_jax.apps.history.calibration import calibrate_visits
from mami_jax.apps.history.history_select import Match, is_history
from mami_jax.data.manifest import ManifestRow
from mami_jax.runtime.progress import progress_bar


def visit_key(row: ManifestRow) -> tuple[str, str, str]:
    """The images of one patient at one ``order`` (visit number or date) form a visit."""
    return row.dataset, row.patient_id, row.order


def visits_of(rows: Sequence[ManifestRow]) -> dict[tuple, dict[str, list[int]]]:
    """{visit: {modality: indices of ``rows``}}."""
    out: dict[tuple, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        out.setdefault(visit_key(r), {}).setdefault(r.modality, []).append(i)
    return out


def impostor_stats(scores: np.ndarray, row_patients, column_patients) -> tuple[float, float]:
    """(mean, standard deviation) of the entries of ``scores`` (queries x archived images)
    whose row and column patients differ."""
    other = np.asarray(row_patients)[:, None] != np.asarray(column_patients)[None, :]
    if not other.any():
        raise ValueError("visit fusion needs different-patient pairs to normalise scores on")
    values = np.asarray(scores, np.float64)[other]
    return float(values.mean()), float(max(values.std(), 1e-6))


class VisitFusion:
    """Visit-level scores of ``rows`` (raw embeddings ``vectors``) against ``archive``.

    ``stats``: per modality (mean, sd) of impostor scores (``fit_stats`` computes them).
    """

    def __init__(self, archive, rows: Sequence[ManifestRow], vectors: np.ndarray,
                 stats: dict | None = None, shortlist: int = 50):
        self.archive, self.rows = archive, list(rows)
        self.vectors = np.asarray(vectors)
        self.prepared = archive.prepare_rows(self.rows, self.vectors)
        self.density = archive.row_density(self.rows, self.vectors)
        self.shortlist = int(shortlist)
        self.stats = dict(stats or {})
        self.mates = visits_of(self.rows)
        self.archive_visits = visits_of(archive.rows)
        self._stored: dict[str, np.ndarray] = {}

    # -- pair scores ------------------------------------------------------------------
    def _stored_vectors(self, modality: str) -> np.ndarray:
        if modality not in self._stored:
            self._stored[modality] = hubness.stored_vectors(self.archive.indexes[modality],
                                                            self.archive.kind)
        return self._stored[modality]

    def pair_score(self, i: int, position: int) -> float:
        """The archive's score (cosine, or hub-corrected) of row ``i`` against archived
        image ``position`` of the same modality."""
        m = self.rows[i].modality
        slot = self.archive.slot(position)
        cosine = float(self.prepared[i] @ self._stored_vectors(m)[slot])
        density = self.archive.density[m][slot] if self.archive.hubness_k > 0 else 0.0
        return float(self.archive.adjust(cosine, self.density[i], density))

    def z(self, i: int, position: int) -> float:
        modality = self.rows[i].modality
        if modality not in self.stats:
            raise ValueError(f"visit fusion: no {modality} scores to normalise on (no "
                             f"{modality} image of the calibration split, or no other patient's "
                             f"in the archive); add such patients or set visit_fusion=0")
        mean, sd = self.stats[modality]
        return (self.pair_score(i, position) - mean) / sd

    def score(self, i: int, position: int) -> float:
        """Row ``i``'s visit against the archived visit of image ``position``: the z-score
        of ``i`` against ``position``, plus for every other modality both visits hold the
        mean over the query visit's images of that modality of their best z-score among
        the archived visit's."""
        mine = self.rows[i].modality
        total = self.z(i, position)
        theirs = self.archive_visits[visit_key(self.archive.rows[position])]
        for m, members in self.mates[visit_key(self.rows[i])].items():
            if m == mine or m not in theirs or m not in self.stats:
                continue
            total += float(np.mean([max(self.z(j, c) for c in theirs[m]) for j in members]))
        return float(total)

    def fit_stats(self, split: str, max_columns: int = 4000,
                  seed: int = 0) -> dict[str, tuple[float, float]]:
        """Impostor (mean, sd) per modality: ``split``'s images against the archived
        images of other patients (at most ``max_columns`` of them, a fixed random subset);
        sets and returns them."""
        stats = {}
        rng = np.random.default_rng(seed)
        for m in sorted(self.archive.indexes):
            sel = [i for i, r in enumerate(self.rows) if r.modality == m and r.split == split]
            stored = self._stored_vectors(m)
            columns = np.arange(len(stored))
            if len(columns) > max_columns:
                columns = np.sort(rng.choice(len(columns), max_columns, replace=False))
            if not sel or not len(columns):
                continue
            density = (self.archive.density[m][columns] if self.archive.hubness_k > 0
                       else np.zeros(len(columns), np.float32))
            scores = self.archive.adjust(self.prepared[sel] @ stored[columns].T,
                                         self.density[sel][:, None], density[None, :])
            positions = np.asarray(self.archive.positions[m])[columns]
            try:
                stats[m] = impostor_stats(scores, [self.rows[i].patient_key for i in sel],
                                          [self.archive.rows[p].patient_key for p in positions])
            except ValueError:
                continue
        self.stats = stats
        return stats

    # -- retrieval --------------------------------------------------------------------
    def _candidates(self, indices: Sequence[int]) -> dict[int, set[int]]:
        """Per query row: archived images of its modality whose visit is in the shortlist
        of any of the query visit's images."""
        wanted = sorted({j for i in indices
                         for members in self.mates[visit_key(self.rows[i])].values()
                         for j in members})
        by_modality: dict[str, list[int]] = {}
        for j in wanted:
            by_modality.setdefault(self.rows[j].modality, []).append(j)
        near: dict[int, list[int]] = {}
        for m, members in by_modality.items():
            fetch = min(self.archive.partition_size(m), self.shortlist)
            _, positions = self.archive.search(m, self.vectors[members], fetch,
                                               [self.rows[j].image_id for j in members])
            for j, found in zip(members, positions):
                near[j] = [int(p) for p in found if p >= 0]
        out = {}
        for i in indices:
            mine = self.rows[i].modality
            cands = set()
            for members in self.mates[visit_key(self.rows[i])].values():
                for j in members:
                    for p in near.get(j, ()):
                        cands.update(self.archive_visits[visit_key(self.archive.rows[p])]
                                     .get(mine, ()))
            out[i] = cands
        return out

    def retrieve(self, indices: Sequence[int], k: int, threshold: float | dict,
                 progress: bool = True, desc: str = "retrieval by visits") -> list[list[Match]]:
        """For each row of ``indices``: its ``k`` best eligible candidates by visit score,
        accepted above the threshold of its modality (one value or per modality); one
        progress step per row (``desc``; none without ``progress``)."""
        indices = list(indices)
        candidates = self._candidates(indices)
        out = []
        with progress_bar(len(indices), desc, disable=not progress) as bar:
            for i in indices:
                q = self.rows[i]
                t = threshold[q.modality] if isinstance(threshold, dict) else threshold
                scored = [(self.score(i, p), p) for p in candidates[i]
                          if is_history(self.archive.rows[p], q)]
                scored.sort(key=lambda sp: (-sp[0], sp[1]))
                out.append([Match(p, s, bool(s > t)) for s, p in scored[:int(k)]])
                bar.update(1)
        return out


def fit_visit_retrieval(archive, rows: Sequence[ManifestRow], vectors: np.ndarray, cfg):
    """(the ``VisitFusion`` of ``rows`` against ``archive``, its per-modality thresholds):
    impostor statistics and top-k visit calibration on ``cfg.calibration_split`` for
    ``cfg.target_far``. Each threshold entry also holds its modality's impostor mean and
    spread, so an archive saved with it scores visits the same way later
    (``stats_from_calibration``)."""
    fusion = VisitFusion(archive, rows, vectors, shortlist=int(cfg.visit_shortlist))
    stats = fusion.fit_stats(cfg.calibration_split)
    calibration = calibrate_visits(fusion, float(cfg.target_far), cfg.calibration_split,
                                   int(cfg.k))
    for m, c in calibration.items():
        c["impostor_mean"], c["impostor_sd"] = stats[m]
    return fusion, calibration


def scores_visits(calibration: dict) -> bool:
    """Whether thresholds were calibrated on visit scores (``fit_visit_retrieval``)."""
    return any(c.get("method") == "topk-visits" for c in calibration.values())


def stats_from_calibration(calibration: dict) -> dict[str, tuple[float, float]]:
    return {m: (float(c["impostor_mean"]), float(c["impostor_sd"]))
            for m, c in calibration.items() if "impostor_mean" in c}
