"""Hardness and sanity measurements of the phantoms: descriptors and a Rank-1.

- ``intensity_features``: what a lazy matcher would use: mean, standard
  deviation and a 32-bin histogram of the image on a fixed (not per-image)
  scale, plus per-channel mean and std for colour images. Nearest neighbour
  on these must NOT find the patient (the benchmark is then not trivial).
- ``structural_descriptor``: a crude stand-in for a learnt model: the image
  (four evenly spaced slices of a series) shrunk to 16x16 and standardised
  per image, so brightness, contrast and exposure are removed and only coarse
  layout remains. For pathology, whose tiles are not aligned between
  visits, the layout is meaningless; there it is a texture signature of the
  nuclear stain (blob and elongation statistics of the deconvolved
  haematoxylin channel at several scales; free of position and rotation). Nearest neighbour on these SHOULD find the
  patient: it shows the identity signal is there.
- ``rank1``: the evaluation protocol of the project on one set: every image
  is a query; the gallery is every other image except those of the query's
  own study; queries without a same-patient image in the gallery are
  skipped and counted; the top gallery item (ties: lowest index) decides.
"""

from __future__ import annotations

import numpy as np

from mami_jax.data.manifest import MODALITIES, read_manifest
from mami_jax.evaluate.metrics import chance_rank1
from mami_jax.phantoms import io

THUMB = 16
N_BINS = 32


def _grey(arr: np.ndarray, modality: str) -> np.ndarray:
    """(slices, H, W) grey stack in [0, 1] from a unit-scaled image or series."""
    if modality in ("ct", "mri"):
        return arr
    if arr.ndim == 3:
        return arr.mean(axis=-1)[None]
    return arr[None]


def intensity_features(arr: np.ndarray, modality: str) -> np.ndarray:
    """Global intensity statistics of one image/series already mapped to [0, 1] by a fixed rule."""
    grey = _grey(arr, modality)
    hist, _ = np.histogram(grey, bins=N_BINS, range=(0.0, 1.0))
    feats = [np.array([grey.mean(), grey.std()]), hist / max(1, grey.size)]
    if modality in ("fundus", "pathology"):
        flat = arr.reshape(-1, arr.shape[-1])
        feats += [flat.mean(axis=0), flat.std(axis=0)]
    return np.concatenate(feats).astype(np.float64)


def _thumb(plane: np.ndarray) -> np.ndarray:
    h, w = plane.shape
    if h % THUMB or w % THUMB:
        raise ValueError(f"structural descriptor needs sides divisible by {THUMB}, got {plane.shape}")
    return plane.reshape(THUMB, h // THUMB, THUMB, w // THUMB).mean(axis=(1, 3))


def _texture_scales(rgb: np.ndarray) -> np.ndarray:
    """Stain-free texture signature of an H&E tile: how big, how packed and how elongated
    the nuclei are.

    Optical density is projected onto the part of the haematoxylin direction
    orthogonal to eosin (a fixed colour deconvolution) and standardised; at
    scales 1-8 px the scale-normalised Laplacian of Gaussian is summarised by
    its mean positive and negative parts and its 99th percentile, and at
    scales 1-5 px the structure tensor by its energy-weighted coherence and
    its energy. Nothing here depends on position or orientation, so
    unaligned tiles compare.
    """
    from scipy import ndimage

    od = -np.log(np.clip(rgb, 1.0 / 255, 1.0))
    h = np.array([0.650, 0.704, 0.286])
    e = np.array([0.072, 0.990, 0.105])
    e = e / np.linalg.norm(e)
    h_perp = h - (h @ e) * e
    chan = od @ (h_perp / np.linalg.norm(h_perp))
    chan = (chan - chan.mean()) / (chan.std() + 1e-8)
    out = []
    for s in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0):
        lap = -s * s * ndimage.gaussian_laplace(chan, s)
        out += [np.log(np.mean(np.clip(lap, 0, None)) + 1e-6), np.log(np.mean(np.clip(-lap, 0, None)) + 1e-6),
                np.percentile(lap, 99)]
    for s in (1.0, 2.0, 3.0, 5.0):   # structure tensor: how elongated the texture is, and its energy
        gy = ndimage.gaussian_filter(chan, s, order=(1, 0))
        gx = ndimage.gaussian_filter(chan, s, order=(0, 1))
        jxx, jyy, jxy = (ndimage.gaussian_filter(g, 2 * s) for g in (gx * gx, gy * gy, gx * gy))
        trace = jxx + jyy
        coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (trace + 1e-8)
        out += [np.sum(coherence * trace) / (np.sum(trace) + 1e-12), np.log(np.mean(trace) + 1e-8)]
    return np.array(out)


def structural_descriptor(arr: np.ndarray, modality: str) -> np.ndarray:
    """Standardised coarse layout (or, for pathology, texture scale) of one image/series."""
    grey = _grey(arr, modality)
    if modality == "pathology":
        d = _texture_scales(arr)
    else:
        picks = np.linspace(0, grey.shape[0] - 1, min(4, grey.shape[0])).round().astype(int)
        d = np.concatenate([_thumb(grey[k]).ravel() for k in picks])
    return (d - d.mean()) / (d.std() + 1e-8)


def standardise_columns(features: np.ndarray) -> np.ndarray:
    """z-score every feature column over the set (constant columns become 0)."""
    f = np.asarray(features, np.float64)
    return (f - f.mean(axis=0)) / np.where(f.std(axis=0) > 0, f.std(axis=0), 1.0)


def rank1(features, patients, studies) -> tuple[float, int, int]:
    """Rank-1 of Euclidean nearest neighbour; returns (rank1, queries used, queries skipped).

    ``studies`` identifies the query's own study (give patient+study keys);
    images of the same study are never in the query's gallery.
    """
    f = np.asarray(features, np.float64)
    patients = np.asarray(patients)
    studies = np.asarray(studies)
    if not (len(f) == len(patients) == len(studies)):
        raise ValueError(f"rank1: {len(f)} features, {len(patients)} patients, {len(studies)} studies")
    sq = (f * f).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * f @ f.T
    hits, used, skipped = 0, 0, 0
    for i in range(len(f)):
        allowed = studies != studies[i]
        if not np.any(allowed & (patients == patients[i])):
            skipped += 1
            continue
        d = np.where(allowed, dist[i], np.inf)
        hits += int(patients[int(np.argmin(d))] == patients[i])   # argmin: first of ties
        used += 1
    return (hits / used if used else float("nan")), used, skipped


def fit_lda(features: np.ndarray, labels, n_pca: int = 64, ridge: float = 1e-3):
    """A learnt linear metric: PCA to ``n_pca`` dims, then Fisher LDA; returns ``project(X)``.

    Within-patient scatter is regularised by ``ridge`` times its mean
    eigenvalue. Used to show that the identity signal generalises: fit on the
    train patients, rank on unseen test patients.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"fit_lda: need at least 2 patients, got {len(classes)}")
    mu = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mu, full_matrices=False)
    pca = vt[:min(n_pca, x.shape[1], len(x) - 1)].T
    z = (x - mu) @ pca
    means = np.stack([z[y == c].mean(axis=0) for c in classes])
    sw = sum((z[y == c] - m).T @ (z[y == c] - m) for c, m in zip(classes, means)) / len(z)
    sw = sw + ridge * np.trace(sw) / len(sw) * np.eye(len(sw))
    sb = np.cov(means.T)
    evals, evecs = np.linalg.eig(np.linalg.solve(sw, sb))
    keep = np.argsort(-evals.real)[:min(len(classes) - 1, len(sw))]
    w = pca @ evecs[:, keep].real
    return lambda feats: (np.asarray(feats, np.float64) - mu) @ w


def evaluate_manifest(manifest_path: str, split: str = "test", lda: bool = True) -> dict:
    """Per modality: intensity (z-scored and raw) and structural Rank-1, chance, counts.

    ``split`` selects rows ("all" for every row). Chance is the mean share of
    same-patient images in a query's gallery. With ``lda`` and a held-out
    split, also ``intensity_lda`` and ``structural_lda``: each descriptor
    through a linear metric fitted on the train split's patients (``fit_lda``).
    """
    rows = read_manifest(manifest_path)
    out = {}
    for modality in MODALITIES:
        sel = [r for r in rows if r.modality == modality and (split == "all" or r.split == split)]
        if not sel:
            continue
        def describe(rs):
            inten, struct = [], []
            for r in rs:
                unit = io.to_unit(modality, io.read_raw(modality, r.path))
                inten.append(intensity_features(unit, modality))
                struct.append(structural_descriptor(unit, modality))
            return inten, struct

        inten, struct = describe(sel)
        pids = [r.patient_key for r in sel]
        studies = [r.study_key for r in sel]
        res = {"patients": len(set(pids)), "images": len(sel)}
        res["intensity_z"], res["queries"], res["skipped"] = rank1(
            standardise_columns(np.stack(inten)), pids, studies)
        res["intensity_raw"] = rank1(np.stack(inten), pids, studies)[0]
        res["structural"] = rank1(np.stack(struct), pids, studies)[0]
        train = [r for r in rows if r.modality == modality and r.split == "train"]
        if lda and split not in ("train", "all") and len({r.patient_id for r in train}) >= 2:
            train_inten, train_struct = describe(train)
            train_ids = [r.patient_key for r in train]
            project = fit_lda(np.stack(train_inten), train_ids, n_pca=32)
            res["intensity_lda"] = rank1(project(np.stack(inten)), pids, studies)[0]
            project = fit_lda(np.stack(train_struct), train_ids)
            res["structural_lda"] = rank1(project(np.stack(struct)), pids, studies)[0]
        chance = chance_rank1(pids, studies)      # nan: no query has a match
        res["chance"] = 0.0 if np.isnan(chance) else chance
        out[modality] = res
    return out
