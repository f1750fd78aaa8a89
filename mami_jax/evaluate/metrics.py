"""Re-identification and verification metrics (numpy), with the formulas stated.

Re-ID protocol (Market-1501 style, docs/design.md#evaluation), for a similarity matrix
``S`` of shape (Q, G) where larger means more similar:

* **Exclusion.** For query ``i``, gallery item ``g`` is removed from the
  ranking when ``gallery_pids[g] == query_pids[i]`` *and*
  ``gallery_studies[g] == query_studies[i]``: images of the query's own
  study/visit (the medical analogue of "same camera"), the query image itself
  included when it is also in the gallery. Study ids are compared only within
  one patient, so they need to be unique per patient, not globally. Gallery
  items of *other* patients are never removed, whatever their study id.
* **True matches** of query ``i`` are the remaining gallery items with the same
  pid. A query with no true match left is *skipped* and counted in
  ``num_skipped_queries``; it contributes to no average.
* **Ranking.** The remaining gallery is sorted by decreasing score; equal
  scores keep gallery order (lower gallery index ranks first). The rank of a
  remaining item ``j`` (1-based) is therefore

      rank(j) = 1 + #{g remaining : S[i,g] > S[i,j] or (S[i,g] == S[i,j] and g < j)}

  which is how it is computed (no full sort is needed for a handful of matches).
* With ``r_1 < ... < r_m`` the ranks of the ``m`` true matches of a valid query:

  - CMC: ``cmc[k-1] = fraction of valid queries with r_1 <= k``; ``rank{k} = cmc[k-1]``;
  - AP = ``(1/m) sum_{t=1..m} t / r_t`` (precision at each true match's rank),
    mAP = mean AP over valid queries;
  - INP = ``m / r_m`` (the hardest true match, Zheng et al. TPAMI 2021),
    mINP = mean INP over valid queries.

The same ranks, accumulated by :class:`RankAccumulator`, are produced chunk by
chunk by ``mami_jax.evaluate.retrieval`` so that the two agree exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

__all__ = [
    "QueryTargets",
    "build_query_targets",
    "RankAccumulator",
    "match_ranks",
    "match_ranks_sorted",
    "reid_metrics",
    "chance_rank1",
    "verification_metrics",
    "far_key",
]

# Up to this many true matches per query, ranks are counted by comparisons
# (cost m * G); above it, one sort of the row (cost G log G) is cheaper.
COUNT_THRESHOLD = 32


# ----------------------------------------------------------------------------- targets

def _as_ids(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _joint_codes(a: np.ndarray, b: np.ndarray, names: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes such that a[i] == b[j] iff codes agree; one shared vocabulary."""
    a_text = a.dtype.kind in "USO"
    b_text = b.dtype.kind in "USO"
    if a_text != b_text and a.size and b.size:
        raise TypeError(f"{names}: one side holds strings ({a.dtype if a_text else b.dtype}) "
                        f"and the other numbers ({b.dtype if a_text else a.dtype}); "
                        "use the same id type on both sides")
    both = np.concatenate([a, b])
    if both.dtype.kind == "O":
        both = both.astype(str)
    _, inverse = np.unique(both, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[: a.size], inverse[a.size:]


@dataclasses.dataclass(frozen=True)
class QueryTargets:
    """Per query, the gallery indices of its true matches and of its excluded items.

    Held as ranges of one ordering of the gallery (by patient, then study, then index):
    a query's patient is ``order[pid_start:pid_end]`` and, inside it, its own study
    ``order[study_start:study_end]`` (excluded); the rest of the patient's range are its
    true matches. Memory is O(Q + G) whatever the images per patient: the pairs
    themselves (thousands of tiles of one patient make millions) are listed only for the
    queries asked, block by block.
    """

    num_gallery: int
    order: np.ndarray
    pid_start: np.ndarray
    pid_end: np.ndarray
    study_start: np.ndarray
    study_end: np.ndarray

    @property
    def num_queries(self) -> int:
        return self.pid_start.size

    @property
    def n_excluded(self) -> np.ndarray:
        return self.study_end - self.study_start

    @property
    def n_match(self) -> np.ndarray:
        return self.pid_end - self.pid_start - self.n_excluded

    def matches(self, i: int) -> np.ndarray:
        """Gallery indices of query ``i``'s true matches, ascending."""
        return np.sort(np.concatenate([self.order[self.pid_start[i]:self.study_start[i]],
                                       self.order[self.study_end[i]:self.pid_end[i]]]))

    def excluded(self, i: int) -> np.ndarray:
        """Gallery indices of query ``i``'s own study, ascending."""
        return self.order[self.study_start[i]:self.study_end[i]]

    def padded(self, rows: np.ndarray, kind: str, width: int) -> np.ndarray:
        """(len(rows), width) int32 gallery indices, -1 where a row has fewer."""
        out = np.full((len(rows), width), -1, np.int32)
        for b, i in enumerate(rows):
            idx = self.matches(i) if kind == "match" else self.excluded(i)
            if idx.size > width:
                raise ValueError(f"padded width {width} < {idx.size} {kind} indices")
            out[b, :idx.size] = idx
        return out


def build_query_targets(query_pids, gallery_pids, query_studies, gallery_studies) -> QueryTargets:
    """Splits every query's same-pid gallery items into true matches and excluded ones.

    Excluded = same pid and same study as the query; true match = same pid,
    different study. Runs in O((Q + G) log(Q + G)) time and O(Q + G) memory.
    """
    qp = _as_ids(query_pids, "query_pids")
    gp = _as_ids(gallery_pids, "gallery_pids")
    qs = _as_ids(query_studies, "query_studies")
    gs = _as_ids(gallery_studies, "gallery_studies")
    if qs.size != qp.size:
        raise ValueError(f"query_studies has {qs.size} entries, query_pids {qp.size}")
    if gs.size != gp.size:
        raise ValueError(f"gallery_studies has {gs.size} entries, gallery_pids {gp.size}")
    q_pid, g_pid = _joint_codes(qp, gp, "query_pids/gallery_pids")
    q_study, g_study = _joint_codes(qs, gs, "query_studies/gallery_studies")
    num_g = gp.size
    order = np.lexsort((np.arange(num_g), g_study, g_pid))   # by patient, study, index
    studies = int(max(q_study.max(initial=-1), g_study.max(initial=-1))) + 1
    pid_sorted = g_pid[order].astype(np.int64)
    key_sorted = pid_sorted * studies + g_study[order]
    q_key = q_pid.astype(np.int64) * studies + q_study
    return QueryTargets(
        num_g, order.astype(np.int64),
        np.searchsorted(pid_sorted, q_pid, side="left"),
        np.searchsorted(pid_sorted, q_pid, side="right"),
        np.searchsorted(key_sorted, q_key, side="left"),
        np.searchsorted(key_sorted, q_key, side="right"))


# ----------------------------------------------------------------------------- ranks

def _subtract_excluded(above, scores, t, matches, excluded):
    if excluded.size:
        te = scores[excluded]
        excl_beats = (te[None, :] > t[:, None]) | (
            (te[None, :] == t[:, None]) & (excluded[None, :] < matches[:, None]))
        above = above - np.count_nonzero(excl_beats, axis=1)
    return above


def match_ranks_sorted(scores: np.ndarray, sorted_scores: np.ndarray, matches: np.ndarray,
                       excluded: np.ndarray) -> np.ndarray:
    """Like :func:`match_ranks`, given ``sorted_scores = np.sort(scores)`` (ascending).

    ``#{g: s[g] > t}`` is ``G - searchsorted(sorted, t, "right")``, so a sorted
    row answers any number of matches in O(m log G). Only when another item has
    exactly the match's score (``right - left > 1``) are the equal items with a
    lower gallery index counted on the unsorted row. Signed zeros compare equal
    under ``<``, so their order inside the sorted row does not matter.
    """
    m = matches.size
    if m == 0:
        return np.zeros(0, np.int64)
    t = scores[matches]
    right = np.searchsorted(sorted_scores, t, side="right")
    left = np.searchsorted(sorted_scores, t, side="left")
    above = (scores.size - right).astype(np.int64)
    for k in np.flatnonzero(right - left > 1):
        above[k] += np.count_nonzero(scores[:matches[k]] == t[k])
    return _subtract_excluded(above, scores, t, matches, excluded) + 1


def match_ranks(scores: np.ndarray, matches: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Ranks (1-based, unsorted, in ``matches`` order) of the true matches of one query.

    ``rank(j) = 1 + #{g: beats(g, j)} - #{g in excluded: beats(g, j)}`` with
    ``beats(g, j) = s[g] > s[j] or (s[g] == s[j] and g < j)``. Few matches are
    counted by direct comparison (m * G); many go through one sort of the row.
    """
    m = matches.size
    if m == 0:
        return np.zeros(0, np.int64)
    if m > COUNT_THRESHOLD:
        return match_ranks_sorted(scores, np.sort(scores), matches, excluded)
    t = scores[matches]
    gallery = np.arange(scores.size)
    beats = (scores[None, :] > t[:, None]) | (
        (scores[None, :] == t[:, None]) & (gallery[None, :] < matches[:, None]))
    above = np.count_nonzero(beats, axis=1).astype(np.int64)
    return _subtract_excluded(above, scores, t, matches, excluded) + 1


class RankAccumulator:
    """Collects per-query match ranks, block by block, and computes the metrics.

    Per-query AP and INP are stored by query index and averaged once at the
    end, so the result does not depend on the block size or the order in
    which blocks arrive (the chunked and the full-matrix paths agree bitwise).
    """

    def __init__(self, num_queries: int, num_gallery: int):
        self.num_queries = num_queries
        self.num_gallery = num_gallery
        self.first_rank = np.zeros(num_queries, np.int64)
        self.ap = np.full(num_queries, np.nan)
        self.inp = np.full(num_queries, np.nan)
        self.seen = np.zeros(num_queries, bool)

    def add(self, query_index: np.ndarray, ranks: np.ndarray, n_match: np.ndarray) -> None:
        """``ranks``: (B, M) ranks of each query's matches in columns [0, n_match)."""
        query_index = np.asarray(query_index, np.int64)
        ranks = np.asarray(ranks, np.int64)
        n_match = np.asarray(n_match, np.int64)
        if ranks.ndim != 2 or ranks.shape[0] != query_index.size:
            raise ValueError(f"ranks shape {ranks.shape} does not match {query_index.size} queries")
        if np.any(self.seen[query_index]):
            raise ValueError("a query was accumulated twice")
        if np.any(n_match < 1) or np.any(n_match > ranks.shape[1]):
            raise ValueError("every accumulated query needs 1 <= n_match <= ranks.shape[1]")
        cols = np.arange(ranks.shape[1])
        real = cols[None, :] < n_match[:, None]
        big = np.iinfo(np.int64).max
        r = np.sort(np.where(real, ranks, big), axis=1)
        if np.any(r[real] < 1) or np.any(r[real] > self.num_gallery):
            raise ValueError("match rank outside [1, num_gallery]")
        rows = np.arange(r.shape[0])
        precision = np.where(real, (cols[None, :] + 1) / np.where(real, r, 1), 0.0)
        # cumsum is strictly left to right, so trailing padding cannot change the sum.
        ap = np.cumsum(precision, axis=1)[rows, n_match - 1] / n_match
        self.first_rank[query_index] = r[:, 0]
        self.ap[query_index] = ap
        self.inp[query_index] = n_match / r[rows, n_match - 1]
        self.seen[query_index] = True

    def finalize(self, valid: np.ndarray, ks: Sequence[int], cmc_ranks: int) -> dict:
        valid = np.asarray(valid, bool)
        if not np.array_equal(valid, self.seen):
            missing = np.flatnonzero(valid & ~self.seen)
            raise ValueError(f"{missing.size} valid queries were never accumulated "
                             f"(first: {missing[:5].tolist()})")
        n_valid = int(valid.sum())
        length = max(cmc_ranks, max(ks))
        if n_valid:
            hist = np.bincount(np.minimum(self.first_rank[valid], length + 1) - 1,
                               minlength=length + 1)[:length]
            cmc = np.cumsum(hist) / n_valid
            m_ap = float(np.mean(self.ap[valid]))
            m_inp = float(np.mean(self.inp[valid]))
        else:
            cmc = np.full(length, np.nan)
            m_ap = m_inp = float("nan")
        out = {f"rank{k}": float(cmc[k - 1]) for k in ks}
        out.update({
            "mAP": m_ap,
            "mINP": m_inp,
            "num_valid_queries": n_valid,
            "num_skipped_queries": int(self.num_queries - n_valid),
            "num_queries": int(self.num_queries),
            "num_gallery": int(self.num_gallery),
            "cmc": cmc,
        })
        return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks}")
    return ks


def check_finite_similarity(s: np.ndarray) -> None:
    """A (queries, gallery) similarity with NaN or inf is an error naming the first cell."""
    if not np.all(np.isfinite(s)):
        bad = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"similarity has non-finite values, first at (query {bad[0]}, "
                         f"gallery {bad[1]})")


def reid_metrics(similarity, query_pids, gallery_pids, query_studies, gallery_studies,
                 ks: Sequence[int] = (1, 5, 10), cmc_ranks: int = 50) -> dict:
    """Rank-k (CMC), mAP and mINP of a full (Q, G) similarity matrix.

    See the module docstring for the exact protocol. Returns a dict with
    ``rank{k}`` for every k in ``ks``, ``mAP``, ``mINP``, ``cmc`` (float array of
    length ``max(cmc_ranks, max(ks))``; entry k-1 is the fraction of valid
    queries whose first true match is at rank <= k), ``num_valid_queries``,
    ``num_skipped_queries``, ``num_queries`` and ``num_gallery``. With no valid
    query the rates are NaN.

    Example: one query of patient "a", study 1; gallery: its own study (excluded),
    a wrong patient scoring higher, and two later studies of "a".

    >>> S = np.array([[0.9, 0.8, 0.5, 0.7]])
    >>> m = reid_metrics(S, ["a"], ["a", "b", "a", "a"], [1], [1, 7, 2, 3], ks=(1, 2))
    >>> # ranking after exclusion: b (0.8), a/3 (0.7), a/2 (0.5): matches at ranks 2, 3
    >>> m["rank1"], m["rank2"], round(m["mAP"], 4), round(m["mINP"], 4)
    (0.0, 1.0, 0.5833, 0.6667)
    """
    ks = _check_ks(ks)
    s = np.asarray(similarity)
    if s.ndim != 2:
        raise ValueError(f"similarity must be (queries, gallery), got shape {s.shape}")
    targets = build_query_targets(query_pids, gallery_pids, query_studies, gallery_studies)
    if s.shape != (targets.num_queries, targets.num_gallery):
        raise ValueError(f"similarity shape {s.shape} does not match {targets.num_queries} "
                         f"query and {targets.num_gallery} gallery ids")
    check_finite_similarity(s)
    n_match = targets.n_match
    acc = RankAccumulator(targets.num_queries, targets.num_gallery)
    valid_rows = np.flatnonzero(n_match > 0)
    block = 256
    for start in range(0, valid_rows.size, block):
        rows = valid_rows[start:start + block]
        width = int(n_match[rows].max())
        ranks = np.zeros((rows.size, width), np.int64)
        for b, i in enumerate(rows):
            ranks[b, :n_match[i]] = match_ranks(s[i], targets.matches(i), targets.excluded(i))
        acc.add(rows, ranks, n_match[rows])
    return acc.finalize(n_match > 0, ks, cmc_ranks)


# ----------------------------------------------------------------------------- verification

def chance_rank1(pids, studies) -> float:
    """Rank-1 of a random ranking, as ``reid_metrics`` scores it with every image a query
    against all the others: per query with a true match, its matches (the patient's images
    of other studies) over the images it is ranked against (those of other studies),
    averaged over those queries. Study ids need only be unique within a patient, as
    everywhere here: another patient's image of the same study id is ranked against."""
    pids, studies = _as_ids(pids, "pids"), _as_ids(studies, "studies")
    values = []
    for i in range(len(pids)):
        eligible = ~((pids == pids[i]) & (studies == studies[i]))
        matches = eligible & (pids == pids[i])
        if matches.any():
            values.append(matches.sum() / eligible.sum())
    return float(np.mean(values)) if values else float("nan")


def far_key(far: float) -> str:
    """Metric-name suffix for a FAR: 1e-3 -> "1e-3", 0.01 -> "1e-2", 5e-4 -> "5e-4"."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def verification_metrics(scores, same_patient, far: float = 1e-3) -> dict:
    """ROC AUC, EER and TAR at a fixed FAR of same/different-patient pair scores.

    A pair is accepted as "same patient" when ``score >= threshold``. Sweeping the
    threshold down through the distinct scores gives the ROC points
    ``(FAR, TAR) = (#neg >= t / n_neg, #pos >= t / n_pos)``, starting at (0, 0)
    for a threshold above every score and ending at (1, 1).

    * ``auc`` = P(score_pos > score_neg) + 0.5 P(score_pos == score_neg) over all
      positive/negative pairs (ties count half); computed with average ranks
      (Mann-Whitney U / (n_pos n_neg)); equals the trapezoidal area under the ROC.
    * ``eer``: FRR = 1 - TAR falls and FAR rises along the sweep; the EER is
      where the piecewise-linear curve through the points (FAR, FRR) crosses
      FAR = FRR, by linear interpolation between the last point with
      FRR > FAR and the first with FRR <= FAR.
    * ``tar_at_far_<far>`` (e.g. ``tar_at_far_1e-3``): the highest TAR among
      ROC points with FAR <= far, no interpolation (an operating point a real
      threshold reaches); ``threshold_at_far_<far>`` is that threshold
      (+inf when only the all-reject point qualifies). With fewer than 1/far
      negatives this means zero false accepts.

    Example: positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2, 0.1.

    >>> m = verification_metrics([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1], [1, 1, 1, 0, 0, 0, 0])
    >>> round(m["auc"], 4), round(m["eer"], 4), round(m["tar_at_far_1e-3"], 4)
    (0.9167, 0.25, 0.6667)
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(same_patient)
    if y.shape != np.shape(scores) or y.ndim != 1:
        raise ValueError(f"scores {np.shape(scores)} and same_patient {y.shape} must be 1-D "
                         "of the same length")
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("same_patient must be boolean or 0/1")
        y = y.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores has non-finite values, first at index {np.flatnonzero(~np.isfinite(s))[0]}")
    if not 0.0 < far < 1.0:
        raise ValueError(f"far must be in (0, 1), got {far}")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"verification needs both kinds of pairs: {n_pos} same-patient, "
                         f"{n_neg} different-patient")

    values, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)[:-1]])
    average_rank = below + (counts + 1) / 2.0  # 1-based ranks, ties averaged
    rank_sum = float(np.sum(average_rank[inverse.reshape(-1)][y]))
    auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)

    # Counts per distinct score, swept from the highest score down.
    pos_per_value = np.bincount(inverse.reshape(-1), weights=y, minlength=values.size)[::-1]
    neg_per_value = counts[::-1] - pos_per_value
    tar = np.concatenate([[0.0], np.cumsum(pos_per_value) / n_pos])
    fa = np.concatenate([[0.0], np.cumsum(neg_per_value) / n_neg])
    thresholds = np.concatenate([[np.inf], values[::-1]])
    frr = 1.0 - tar

    diff = frr - fa  # 1 at the start, -1 at the end, non-increasing
    k = int(np.argmax(diff <= 0))
    if diff[k] == 0:
        eer = float(fa[k])
    else:
        lam = diff[k - 1] / (diff[k - 1] - diff[k])
        eer = float(fa[k - 1] + lam * (fa[k] - fa[k - 1]))

    ok = fa <= far
    best = int(np.flatnonzero(ok)[np.argmax(tar[ok])])
    key = far_key(far)
    return {
        "auc": float(auc),
        "eer": eer,
        f"tar_at_far_{key}": float(tar[best]),
        f"threshold_at_far_{key}": float(thresholds[best]),
        "num_positive_pairs": n_pos,
        "num_negative_pairs": n_neg,
    }
