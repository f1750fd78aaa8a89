"""Chunked retrieval evaluation and verification pairs, for galleries of any size.

A 100k x 100k similarity matrix is 40 GB in float32, so it is never built.
Queries are processed ``chunk_size`` at a time: a jitted JAX matmul (on the
accelerator when there is one) gives the (chunk, G) block of scores, the host
sorts each row once (numpy's SIMD sort), and the rank of every true match is
read off the sorted row with a binary search (``metrics.match_ranks_sorted``).
Only the ranks are kept (per query: AP, INP, first rank), so memory is
O(chunk_size x G) for the blocks plus O(Q + G) for the bookkeeping, and the
result equals ``metrics.reid_metrics`` on the full matrix exactly (same
exclusion rule, same stable tie-breaking, same per-query arithmetic).

While the host ranks block k, block k+1 is already being computed (JAX
dispatch is asynchronous), so at most two score blocks and one sorted block
are alive at a time: peak extra memory is about 3 x chunk_size x G x 4 bytes.

Similarity ``metric``:
  * ``"cosine"``: score = q . g / (|q| |g|) (no normalised copy is made);
  * ``"euclidean"``: score = -|q - g|^2 (negative *squared* distance: the same
    order as -|q - g|, without the ties that rounding a sqrt would add).
Larger scores mean more similar in both cases.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.evaluate import metrics as metrics_lib

__all__ = [
    "METRICS",
    "row_terms",
    "pairwise_similarity",
    "chunked_reid_metrics",
    "VerificationPairs",
    "sample_verification_pairs",
    "pair_scores",
    "chunked_verification_metrics",
]

METRICS = ("cosine", "euclidean")


def _check_embeddings(emb, name: str) -> np.ndarray:
    arr = np.asarray(emb, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (num, dim), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        row = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise ValueError(f"{name} row {row} has non-finite values")
    return arr


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def row_terms(emb: np.ndarray, metric: str, name: str = "embeddings") -> np.ndarray:
    """Per-row factor of the score: 1/|x| for cosine, |x|^2 for euclidean.

    Cosine scores are computed as ``(q . g) / (|q| |g|)`` from the raw
    embeddings, so no normalised (N, D) copy is ever made; an all-zero row has
    no direction and is an error.
    """
    _check_metric(metric)
    sq = np.einsum("nd,nd->n", emb, emb)
    if metric == "euclidean":
        return sq.astype(np.float32)
    if np.any(sq == 0):
        raise ValueError(f"{name} row {int(np.flatnonzero(sq == 0)[0])} is all zeros: cosine "
                         "similarity is undefined")
    return (1.0 / np.sqrt(sq)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("metric",))
def _score_block(queries, query_terms, gallery, gallery_terms, metric: str):
    """(B, G) scores of (B, D) queries against the (G, D) gallery.

    The contraction is over the last axis of both (q g^T without materialising
    g^T; measured as fast as a pre-transposed gallery on CPU). HIGHEST precision
    keeps TPUs from using bfloat16 passes, which would reorder near-tied scores.
    """
    dots = jax.lax.dot_general(queries, gallery, (((1,), (1,)), ((), ())),
                               precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
        return dots * query_terms[:, None] * gallery_terms[None, :]
    return -jnp.maximum(query_terms[:, None] + gallery_terms[None, :] - 2.0 * dots, 0.0)


def _common_component(gallery: np.ndarray) -> np.ndarray | None:
    """The gallery's mean when it outweighs the spread about it (|mean|^2 > mean |g -
    mean|^2), else None. Euclidean distances do not change when every embedding moves by
    one vector; measured from that mean, ``|q|^2 + |g|^2 - 2 q.g`` no longer cancels a
    common component in float32 (embeddings sharing one large direction, as an
    un-normalised model gives, lost their order to rounding: Rank-1 0.10 -> 0.0 on a test
    gallery whose common part was ten thousand times the spread). Without one, nothing moves, so
    embeddings whose scores are exact (small integers) keep their exact ties."""
    if gallery.shape[0] == 0:
        return None
    mean = gallery.mean(axis=0, dtype=np.float64)
    common = float(mean @ mean)
    spread = float(np.mean(np.einsum("nd,nd->n", gallery, gallery), dtype=np.float64)) - common
    return mean.astype(np.float32) if common > spread else None


class _BlockScorer:
    """Holds the gallery on the device and scores fixed-size query blocks.

    ``jax.device_put`` of an aligned float32 array can share the host memory on
    CPU, so the gallery is usually not copied at all. Every block is padded to
    ``chunk_size`` rows so the jitted function compiles once; fewer queries than that
    make the block their size (one query against 300 000 gallery images was padded to
    a 1024-row block: 1.2 GB of scores for one row).

    Cosine scores of embeddings that share one dominant direction (the gallery's unit
    vectors' mean outweighs their spread about it) are ranked by ``-|u - v|^2``, of the
    unit vectors measured from that mean, on the Euclidean path (``dispatch``), and
    given as cosines, ``1 - |u - v|^2 / 2``, by ``as_scores``: cosines a few float32
    steps below 1 lost their order to the rounding of ``q . g`` (Rank-1 0.104 -> 0.060
    where the common direction was a thousand times the spread), and would again if
    ranked after adding 1. Otherwise they are ``q . g / (|q| |g|)`` of the raw rows,
    with no normalised copy.
    """

    def __init__(self, query: np.ndarray, gallery: np.ndarray, metric: str, chunk_size: int):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if query.shape[1] != gallery.shape[1]:
            raise ValueError(f"query_emb dim {query.shape[1]} != gallery_emb dim "
                             f"{gallery.shape[1]}")
        self.query = query
        self.metric = metric
        self.chunk_size = max(1, min(int(chunk_size), query.shape[0]))
        shared = _shared_direction(gallery) if metric == "cosine" else None
        self.from_distance = shared is not None
        if self.from_distance:       # cosine of unit vectors from their distance
            row_terms(query, "cosine", "query_emb")     # an all-zero query: named
            query, gallery = _unit_from(query, shared), _unit_from(gallery, shared)
            self.query = query
            metric = self.metric = "euclidean"
        self.center = (_common_component(gallery)
                       if metric == "euclidean" and not self.from_distance else None)
        if self.center is not None:
            gallery = gallery - self.center
        else:
            self.query_terms = row_terms(query, metric, "query_emb")
        self.gallery_terms = jax.device_put(row_terms(gallery, metric, "gallery_emb"))
        self.gallery = jax.device_put(gallery)

    def dispatch(self, rows: np.ndarray):
        block = np.zeros((self.chunk_size, self.query.shape[1]), np.float32)
        block[: rows.size] = self.query[rows]
        terms = np.zeros(self.chunk_size, np.float32)
        if self.center is not None:
            block[: rows.size] -= self.center
            terms[: rows.size] = row_terms(block[: rows.size], self.metric)
        else:
            terms[: rows.size] = self.query_terms[rows]
        return _score_block(block, terms, self.gallery, self.gallery_terms, self.metric)

    def as_scores(self, ranked: np.ndarray) -> np.ndarray:
        """``dispatch``'s values (ordered as the scores) as the metric's scores."""
        return 1.0 + 0.5 * ranked if self.from_distance else ranked


def _unit_from(emb: np.ndarray, center: np.ndarray, rows: int = 16384) -> np.ndarray:
    """float32 rows scaled to unit length minus ``center``, worked in float64 a part of
    ``rows`` at a time (the float64 copy of a whole gallery would be twice its size)."""
    out = np.empty(emb.shape, np.float32)
    for start in range(0, emb.shape[0], rows):
        wide = emb[start:start + rows].astype(np.float64)
        out[start:start + rows] = wide / np.linalg.norm(wide, axis=1, keepdims=True) - center
    return out


def _shared_direction(gallery: np.ndarray) -> np.ndarray | None:
    """The mean of the gallery's unit vectors (float64) when it outweighs their spread
    about it, else None: for unit vectors the spread is 1 - |mean|^2, so when |mean|^2 >
    1/2. An all-zero row is an error (``row_terms``)."""
    if gallery.shape[0] == 0:
        return None
    terms = row_terms(gallery, "cosine", "gallery_emb").astype(np.float64)
    mean = terms @ gallery.astype(np.float64) / gallery.shape[0]
    return mean if float(mean @ mean) > 0.5 else None


def pairwise_similarity(query_emb, gallery_emb, metric: str = "cosine",
                        chunk_size: int = 1024) -> np.ndarray:
    """The full (Q, G) score matrix, computed with the same blocks as the chunked path.

    For small problems, tests and plots; large ones should call
    :func:`chunked_reid_metrics`, which never holds this matrix.
    """
    _check_metric(metric)
    query = _check_embeddings(query_emb, "query_emb")
    gallery = _check_embeddings(gallery_emb, "gallery_emb")
    scorer = _BlockScorer(query, gallery, metric, chunk_size)
    out = np.empty((query.shape[0], gallery.shape[0]), np.float32)
    for start in range(0, query.shape[0], scorer.chunk_size):
        rows = np.arange(start, min(start + scorer.chunk_size, query.shape[0]))
        out[rows] = scorer.as_scores(np.asarray(scorer.dispatch(rows))[: rows.size])
    return out


def chunked_reid_metrics(query_emb, gallery_emb, query_pids, gallery_pids, query_studies,
                         gallery_studies, chunk_size: int = 1024, metric: str = "cosine",
                         ks: Sequence[int] = (1, 5, 10), cmc_ranks: int = 50) -> dict:
    """``metrics.reid_metrics`` of the (Q, G) scores without building the matrix.

    Memory grows with ``chunk_size x G``, not ``Q x G``. Queries with no true
    match are skipped before any scoring (and counted). The returned dict has
    the keys of ``reid_metrics`` plus ``metric`` and ``chunk_size``.
    """
    ks = metrics_lib._check_ks(ks)
    _check_metric(metric)
    query = _check_embeddings(query_emb, "query_emb")
    gallery = _check_embeddings(gallery_emb, "gallery_emb")
    # Built before anything is skipped, so bad embeddings fail even without valid queries.
    scorer = _BlockScorer(query, gallery, metric, chunk_size)
    targets = metrics_lib.build_query_targets(query_pids, gallery_pids, query_studies,
                                              gallery_studies)
    if query.shape[0] != targets.num_queries:
        raise ValueError(f"query_emb has {query.shape[0]} rows, query ids {targets.num_queries}")
    if gallery.shape[0] != targets.num_gallery:
        raise ValueError(f"gallery_emb has {gallery.shape[0]} rows, gallery ids "
                         f"{targets.num_gallery}")
    n_match = targets.n_match
    valid_rows = np.flatnonzero(n_match > 0)
    acc = metrics_lib.RankAccumulator(targets.num_queries, targets.num_gallery)
    chunks = [valid_rows[s:s + chunk_size] for s in range(0, valid_rows.size, chunk_size)]
    if chunks:
        pending = scorer.dispatch(chunks[0])
        for k, rows in enumerate(chunks):
            scores = np.asarray(pending)[: rows.size]
            if k + 1 < len(chunks):
                pending = scorer.dispatch(chunks[k + 1])  # overlaps with the ranking below
            _rank_block(scores, rows, targets, acc)
            del scores
    out = acc.finalize(n_match > 0, ks, cmc_ranks)
    out.update(metric=metric, chunk_size=int(chunk_size))
    return out


def _rank_block(scores: np.ndarray, rows: np.ndarray, targets: metrics_lib.QueryTargets,
                acc: metrics_lib.RankAccumulator) -> None:
    ordered = np.sort(scores, axis=1)
    # NaN sorts last and -inf first: the ends of the sorted rows check the whole block.
    if not (np.all(np.isfinite(ordered[:, 0])) and np.all(np.isfinite(ordered[:, -1]))):
        bad = int(np.flatnonzero(~(np.isfinite(ordered[:, 0]) & np.isfinite(ordered[:, -1])))[0])
        raise FloatingPointError(f"non-finite similarity for query {int(rows[bad])} "
                                 "(embeddings too large for float32?)")
    n_match = targets.n_match[rows]
    ranks = np.zeros((rows.size, int(n_match.max())), np.int64)
    for b, i in enumerate(rows):
        ranks[b, : n_match[b]] = metrics_lib.match_ranks_sorted(
            scores[b], ordered[b], targets.matches(i), targets.excluded(i))
    acc.add(rows, ranks, n_match)


# ----------------------------------------------------------------------------- verification

@dataclasses.dataclass(frozen=True)
class VerificationPairs:
    """Pairs (first[k], second[k]) with first < second, and whether they share a patient."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    num_positive_available: int
    num_negative_available: int


def _range_pairs(lo: np.ndarray, hi: np.ndarray, limit: int | None,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(k, j, total): the pairs (k, j) with ``lo[k] <= j < hi[k]``, all of them when they
    are at most ``limit`` (None: no limit), else a seeded uniform sample of ``limit``
    distinct ones, drawn as positions in the list of all pairs: nothing of the size of
    the whole list is built (one patient of 6000 tiles has 18 million pairs)."""
    counts = np.maximum(hi - lo, 0).astype(np.int64)
    total = int(counts.sum())
    if limit is None or total <= limit:
        k = np.repeat(np.arange(counts.size), counts)
        first = np.cumsum(counts) - counts
        return k, lo[k] + (np.arange(total) - first[k]), total
    flat = rng.choice(total, size=int(limit), replace=False)
    ends = np.cumsum(counts)
    k = np.searchsorted(ends, flat, side="right")
    return k, lo[k] + (flat - (ends[k] - counts[k])), total


def sample_verification_pairs(pids, studies, num_negatives: int = 200_000,
                              max_positives: int | None = None, seed: int = 0
                              ) -> VerificationPairs:
    """Same-patient and different-patient pairs over one set of images.

    * Positives: every pair i < j of the same patient from *different* studies
      (pairs from one study are left out, as the re-ID protocol leaves out the
      query's own study). If ``max_positives`` is set and there are more, a
      seeded uniform sample of that many is kept.
    * Negatives: every pair of different patients when there are at most
      ``num_negatives`` of them; otherwise a seeded uniform sample of exactly
      ``num_negatives`` distinct pairs.
    The available totals are returned so reports can state the sampling. Memory grows
    with the pairs kept, not with the pairs there are (``_range_pairs``).
    Deterministic for a given ``seed``; pairs come sorted by (first, second).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be positive, got {num_negatives}")
    if max_positives is not None and max_positives < 1:
        raise ValueError(f"max_positives must be positive or None, got {max_positives}")
    pids = metrics_lib._as_ids(pids, "pids")
    studies = metrics_lib._as_ids(studies, "studies")
    if studies.size != pids.size:
        raise ValueError(f"studies has {studies.size} entries, pids {pids.size}")
    pid_codes, _ = metrics_lib._joint_codes(pids, pids[:0], "pids")
    study_codes, _ = metrics_lib._joint_codes(studies, studies[:0], "studies")
    n = pid_codes.size
    rng = np.random.default_rng(seed)
    # Sorted by patient, then study: an image's partners of its patient in other studies
    # are the positions from its study's end to its patient's end, its partners of other
    # patients those from its patient's end on (each pair counted once, from its first).
    order = np.lexsort((np.arange(n), study_codes, pid_codes))
    pid_sorted = pid_codes[order].astype(np.int64)
    key_sorted = pid_sorted * (int(study_codes.max(initial=-1)) + 1) + study_codes[order]
    pid_end = np.searchsorted(pid_sorted, pid_sorted, side="right")
    study_end = np.searchsorted(key_sorted, key_sorted, side="right")
    pk, pj, num_pos = _range_pairs(study_end, pid_end, max_positives, rng)
    nk, nj, num_neg = _range_pairs(pid_end, np.full(n, n), num_negatives, rng)
    a = order[np.concatenate([pk, nk])]
    b = order[np.concatenate([pj, nj])]
    first, second = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    same = np.concatenate([np.ones(pk.size, bool), np.zeros(nk.size, bool)])
    order = np.lexsort((second, first))
    return VerificationPairs(first[order], second[order], same[order], int(num_pos), num_neg)


def pair_scores(embeddings, first, second, metric: str = "cosine",
                chunk_size: int = 65536) -> np.ndarray:
    """Scores of pairs (first[k], second[k]), with the same metric as retrieval."""
    emb = _check_embeddings(embeddings, "embeddings")
    terms = row_terms(emb, metric)
    first = np.asarray(first, np.int64)
    second = np.asarray(second, np.int64)
    out = np.empty(first.size, np.float32)
    for s in range(0, first.size, chunk_size):
        i, j = first[s:s + chunk_size], second[s:s + chunk_size]
        a, b = emb[i], emb[j]
        if metric == "cosine":
            out[s:s + chunk_size] = np.einsum("nd,nd->n", a, b) * terms[i] * terms[j]
        else:
            d = a - b
            out[s:s + chunk_size] = -np.einsum("nd,nd->n", d, d)
    return out


def chunked_verification_metrics(embeddings, pids, studies, far: float = 1e-3,
                                 metric: str = "cosine", num_negatives: int = 200_000,
                                 max_positives: int | None = None, seed: int = 0) -> dict:
    """``metrics.verification_metrics`` on pairs from :func:`sample_verification_pairs`.

    Adds ``num_positive_available`` / ``num_negative_available`` (pairs that
    exist) next to ``num_positive_pairs`` / ``num_negative_pairs`` (pairs used).
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != np.asarray(pids).size:
        raise ValueError(f"embeddings of shape {emb.shape} do not match {np.asarray(pids).size} "
                         "pids")
    pairs = sample_verification_pairs(pids, studies, num_negatives, max_positives, seed)
    scores = pair_scores(emb, pairs.first, pairs.second, metric)
    out = metrics_lib.verification_metrics(scores, pairs.same, far)
    out.update(num_positive_available=pairs.num_positive_available,
               num_negative_available=pairs.num_negative_available)
    return out
