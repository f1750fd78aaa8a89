"""Patient-balanced P x K sampling over sources, as a pure function of (seed, step).

Re-identification losses (batch-hard triplet) need several images of each patient
in a batch, and one model trains on X-rays (T=1) and CT/MRI (T=8) at once. So:

- a *source* is one (dataset, modality) group; every batch comes from one source,
  which keeps the batch's array shape (T slices) homogeneous;
- the source of a step is drawn with the configured weights;
- P patients are drawn from the source's training patients that have at least two
  training images (fewer than two cannot form a positive pair; they are counted in
  the summary, never sampled); without replacement, unless the source has fewer than
  P such patients (then with replacement, reported in the summary);
- K images per patient, without replacement when the patient has at least K, else
  each of its images once and the rest drawn again among them: every block holds all
  its patient's images, so at least one pair of different images (drawn wholly with
  replacement, 12 % of a 2-image patient's blocks of 4 were one image four times).

``plan_step(sources, P, K, seed, step)`` depends only on its arguments (the
generator is ``np.random.default_rng([seed, step, 0])``), so step s of a resumed
run is step s of the original run whatever the worker count or host.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mami_jax.data.manifest import ManifestRow


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # "<dataset>:<modality>"
    dataset: str
    modality: str
    num_slices: int  # T of this source's batches
    patients: tuple  # per sampleable patient: int64 array of its training row indices
    labels: np.ndarray  # int32 identity label per sampleable patient
    num_images: int  # training images in the source
    num_patients: int  # training patients in the source
    num_single_image: int  # training patients with < 2 images (never sampled)
    weight: float  # normalised sampling probability

    @property
    def num_sampleable_images(self) -> int:
        return int(sum(len(p) for p in self.patients))


@dataclasses.dataclass(frozen=True)
class StepPlan:
    step: int
    source: int  # index into the source list
    rows: np.ndarray  # int64 (P*K,) row indices, patient-major
    labels: np.ndarray  # int32 (P*K,)


def source_name(dataset: str, modality: str) -> str:
    return f"{dataset}:{modality}"


#: What one identity class of the training loss is (``data.identity_classes``).
IDENTITY_CLASSES = ("patient", "patient_modality")


def identity_key(row: ManifestRow, identity_classes: str = "patient") -> str:
    """The identity class of ``row``: its patient, or its patient within one modality.

    Re-identification is evaluated within a modality, so nothing asks a patient's
    pathology tile and chest X-ray to share a class; with "patient" the classifier
    must still map both to one weight vector. "patient_modality" gives each
    (patient, modality) its own class.
    """
    if identity_classes == "patient":
        return row.patient_key
    if identity_classes == "patient_modality":
        return f"{row.patient_key}/{row.modality}"
    raise ValueError(f"data.identity_classes={identity_classes!r}: expected one of {IDENTITY_CLASSES}")


def train_label_map(rows: Sequence[ManifestRow], identity_classes: str = "patient") -> dict[str, int]:
    """identity key -> identity label, over training rows, in sorted key order."""
    keys = sorted({identity_key(r, identity_classes) for r in rows if r.split == "train"})
    return {k: i for i, k in enumerate(keys)}


def _resolve_weights(names, datasets, modalities, sampleable, source_weights: Mapping[str, float]):
    """Weight per source from ``source_weights``: its "dataset:modality" name, else its bare
    dataset name, else its bare modality name; sources matched by none get 0."""
    weights = np.zeros(len(names))
    if not source_weights:
        weights[:] = sampleable
    else:
        known = set(names) | set(datasets) | set(modalities)
        unknown = sorted(set(source_weights) - known)
        if unknown:
            raise ValueError(f"source_weights has unknown keys {unknown}; training sources are "
                             f"{sorted(names)} (a bare dataset or modality name also works)")
        for i, (n, d, m) in enumerate(zip(names, datasets, modalities)):
            key = next((k for k in (n, d, m) if k in source_weights), None)
            if key is not None:
                weights[i] = float(source_weights[key])
            if weights[i] < 0:
                raise ValueError(f"negative source weight {weights[i]} for {n}")
            if weights[i] > 0 and sampleable[i] == 0:
                raise ValueError(f"source {n} has weight {weights[i]} but no training patient "
                                 f"with at least 2 images")
    if weights.sum() <= 0:
        raise ValueError("no training source can be sampled: no (dataset, modality) group has a "
                         "training patient with at least 2 images and a positive weight")
    return weights / weights.sum()


def build_sources(rows: Sequence[ManifestRow], *, slices: Mapping[str, int],
                  source_weights: Mapping[str, float] | None = None,
                  label_map: Mapping[str, int] | None = None,
                  identity_classes: str = "patient") -> list[Source]:
    """Groups training rows into sources, sorted by name (stable across runs).

    ``slices`` maps each modality to its T (``data.modalities.<m>.slices``);
    ``label_map`` maps ``identity_key(row, identity_classes)`` to the label.
    """
    label_map = (dict(label_map) if label_map is not None
                 else train_label_map(rows, identity_classes))
    groups: dict[tuple[str, str], dict[str, list[int]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for i, r in enumerate(rows):
        if r.split == "train":
            groups[(r.dataset, r.modality)][r.patient_key].append(i)
    keys = sorted(groups)
    missing = sorted({m for _, m in keys} - set(slices))
    if missing:
        raise ValueError(f"no slice count for modality {missing[0]!r} (data.modalities.{missing[0]}.slices)")
    names = [source_name(d, m) for d, m in keys]
    datasets = [d for d, _ in keys]
    pats_per_source, sampleable = [], []
    for key in keys:
        pats = [np.asarray(sorted(v), np.int64) for _, v in sorted(groups[key].items())]
        pats_per_source.append(pats)
        sampleable.append(sum(len(p) for p in pats if len(p) >= 2))
    weights = _resolve_weights(names, datasets, [m for _, m in keys], np.asarray(sampleable, float),
                               source_weights or {})
    out = []
    for (d, m), name, w, pats in zip(keys, names, weights, pats_per_source):
        keep = [p for p in pats if len(p) >= 2]
        out.append(Source(
            name=name, dataset=d, modality=m,
            num_slices=int(slices[m]),
            patients=tuple(keep),
            labels=np.asarray([label_map[identity_key(rows[int(p[0])], identity_classes)] for p in keep],
                              np.int32),
            num_images=int(sum(len(p) for p in pats)),
            num_patients=len(pats),
            num_single_image=len(pats) - len(keep),
            weight=float(w)))
    return out


def plan_step(sources: Sequence[Source], patients_per_batch: int, images_per_patient: int,
              seed: int, step: int) -> StepPlan:
    """The global batch of ``step``: one source, P patients x K row indices."""
    rng = np.random.default_rng([int(seed), int(step), 0])
    probs = np.asarray([s.weight for s in sources], float)
    s_idx = int(rng.choice(len(sources), p=probs / probs.sum()))
    src = sources[s_idx]
    n = len(src.patients)
    chosen = rng.choice(n, size=patients_per_batch, replace=n < patients_per_batch)
    rows, labels = [], []
    for p in chosen:
        imgs = src.patients[int(p)]
        rows.append(patient_block(rng, imgs, images_per_patient))
        labels.append(np.full(images_per_patient, src.labels[int(p)], np.int32))
    return StepPlan(step=int(step), source=s_idx, rows=np.concatenate(rows).astype(np.int64),
                    labels=np.concatenate(labels))


def patient_block(rng: np.random.Generator, images, k: int) -> np.ndarray:
    """K of a patient's row indices: K distinct ones when it has K, else all of them (in a
    random order) followed by K - n drawn again among them."""
    images = np.asarray(images)
    if len(images) >= k:
        return rng.choice(images, size=k, replace=False)
    return np.concatenate([rng.permutation(images), rng.choice(images, size=k - len(images))])


def summary_lines(sources: Sequence[Source], patients_per_batch: int) -> list[str]:
    """Human-readable per-source counts, including patients that are never sampled."""
    lines = []
    for s in sources:
        line = (f"{s.name}: weight {s.weight:.3f}, T={s.num_slices}, {s.num_images} training images, "
                f"{s.num_patients} patients, {len(s.patients)} sampled "
                f"({s.num_single_image} with fewer than 2 images not sampled)")
        if 0 < len(s.patients) < patients_per_batch:
            line += (f"; only {len(s.patients)} sampleable patients < P={patients_per_batch}: "
                     f"patients repeat within a batch")
        lines.append(line)
    return lines
