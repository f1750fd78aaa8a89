"""Hub correction of archive scores (CSLS, Lample et al. 2018), on one FAISS index.

In a large archive a few images lie close to many others ("hubs") and top many queries'
candidate lists, so the highest cosine similarities are more often another patient's than
the patient's own. The local density r of a vector is its mean cosine to its k nearest
archived vectors; a candidate c of query q is scored 2 cos(q, c) - r_q - r_c, which lowers
hubs and crowded regions and leaves isolated pairs as they were. ``archive.Archive`` keeps
the densities of its images and applies ``csls``; these functions do the index work.
"""

from __future__ import annotations

import numpy as np

from mami_jax.runtime.progress import progress_bar

#: Archived images searched at once for their densities (one progress step).
DENSITY_CHUNK = 4096


def stored_vectors(index, kind: str) -> np.ndarray:
    """The vectors a FAISS index holds, in insertion order (an IVF index is given the
    direct map it needs first)."""
    if kind == "ivf":
        import faiss
        faiss.extract_index_ivf(index).make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def archived_density(index, kind: str, k: int, progress: bool = True) -> np.ndarray:
    """Each indexed vector's mean cosine to its ``k`` nearest *other* indexed vectors
    (fewer when the index holds fewer; 0 for a vector alone). One search per vector, at
    the index's own speed (hours for a million images in an exact index), in chunks
    under a progress bar."""
    v = stored_vectors(index, kind)
    k = min(int(k), len(v) - 1)
    if k <= 0:
        return np.zeros(len(v), np.float32)
    out = np.empty(len(v), np.float32)
    with progress_bar(len(v), "hub-correction densities", disable=not progress) as bar:
        for start in range(0, len(v), DENSITY_CHUNK):
            part = v[start:start + DENSITY_CHUNK]
            scores, ids = index.search(part, k + 1)
            own = ids == np.arange(start, start + len(part))[:, None]
            # drop the vector itself, else (an exact duplicate took its place) the last hit
            drop = np.where(own.any(1), own.argmax(1), k)
            keep = np.ones_like(own)
            keep[np.arange(len(part)), drop] = False
            keep &= ids >= 0
            out[start:start + len(part)] = (np.where(keep, scores, 0).sum(1)
                                            / np.maximum(keep.sum(1), 1))
            bar.update(len(part))
    return out


def new_density(index, vectors: np.ndarray, k: int) -> np.ndarray:
    """The mean cosine of each of ``vectors`` (not indexed) to its ``k`` nearest indexed
    vectors."""
    if not len(vectors):
        return np.zeros(0, np.float32)
    scores, ids = index.search(np.ascontiguousarray(vectors), min(int(k), index.ntotal))
    ok = ids >= 0
    return (np.where(ok, scores, 0).sum(1) / np.maximum(ok.sum(1), 1)).astype(np.float32)


def csls(cosine, query_density, candidate_density):
    """2 cos(q, c) - r_q - r_c (broadcasting)."""
    return 2.0 * cosine - query_density - candidate_density
