"""The picture ``--mode=embed`` writes beside its embeddings: a t-SNE map of them.

An ``.npz`` of embeddings says nothing at a glance; the map shows whether a patient's
images lie together and how far apart the modalities and datasets are. Left, every
point coloured by modality; right, the same map with a few patients' images of one
modality (re-identification matches within a modality) coloured each in its own colour
and joined to their centre, the others grey. A
large manifest is sampled first: whole patients, chosen at random with a fixed seed,
until ``MAX_POINTS`` images (exact t-SNE costs every pair of points).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.evaluate.tsne import tsne
from mami_jax.runtime.atomic_files import write_atomic

MAX_POINTS = 1500
#: Patients shown in colour on the right.
SHOWN_PATIENTS = 10


def whole_patients(patient_ids: Sequence[str], max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of the images of randomly chosen patients, taken whole, at most
    ``max_points`` of them (all when there are no more than that), in row order."""
    patient_ids = np.asarray(patient_ids)
    if len(patient_ids) <= max_points:
        return np.arange(len(patient_ids))
    names, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    taken = np.zeros(len(names), bool)
    total = 0
    for k in order:
        if total + counts[k] <= max_points:
            taken[k] = True
            total += counts[k]
    return np.flatnonzero(taken[inverse])


def patients_to_show(patients: np.ndarray, kinds: np.ndarray,
                     count: int = SHOWN_PATIENTS) -> list[str]:
    """``count`` of ``patients`` (one name per image: a patient's images of one modality)
    with two images or more, taken from each modality in turn (its patients with most
    images first; ties in a fixed random order), so every modality shows how its
    patients' images lie."""
    names, first, counts = np.unique(patients, return_index=True, return_counts=True)
    tie_break = np.random.default_rng(0).permutation(len(names))
    queues = {}
    for k in np.lexsort((tie_break, -counts)):
        if counts[k] >= 2:
            queues.setdefault(kinds[first[k]], []).append(str(names[k]))
    shown: list[str] = []
    while len(shown) < count and any(queues.values()):
        for kind in sorted(queues):
            if queues[kind] and len(shown) < count:
                shown.append(queues[kind].pop(0))
    return shown


def draw_embedding_map(path: str, embeddings: np.ndarray, patient_ids: Sequence[str],
                       modalities: Sequence[str], title: str,
                       max_points: int = MAX_POINTS) -> bool:
    """Writes the map to ``path`` (PNG, atomically); False (nothing written) when fewer
    than 4 embeddings are there to map. ``patient_ids``: one per embedding, unique across
    datasets (``dataset/patient``). Arguments that do not line up (as many ids and
    modalities as embeddings), or embeddings that are NaN (an image ``embed_rows`` skipped
    as unreadable), are a ValueError naming them, before anything is drawn."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings: expected (N, C), got shape {embeddings.shape}")
    for name, values in (("patient_ids", patient_ids), ("modalities", modalities)):
        if len(values) != len(embeddings):
            raise ValueError(f"{name}: {len(values)} for {len(embeddings)} embeddings; give "
                             "one per embedding")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ValueError(f"embeddings: {len(bad)} rows are NaN or infinite (rows "
                         f"{bad[:5].tolist()}{' ...' if len(bad) > 5 else ''}: images skipped "
                         "as unreadable); leave them out first")
    pick = whole_patients(patient_ids, max_points)
    if len(pick) < 4:
        return False
    y = tsne(np.asarray(embeddings)[pick])
    kinds = np.asarray(modalities)[pick]
    people = np.asarray(patient_ids)[pick]
    patients = np.asarray([f"{p} {m}" for p, m in zip(people, kinds)])

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 6.2), dpi=110)
    FigureCanvasAgg(fig)
    by_kind, by_patient = fig.subplots(1, 2)
    for n, kind in enumerate(sorted(set(kinds))):
        here = kinds == kind
        by_kind.scatter(y[here, 0], y[here, 1], s=7, color=f"C{n % 10}", label=kind,
                        alpha=0.8, linewidths=0)
    by_kind.legend(loc="best", fontsize=8, markerscale=2, frameon=False)
    by_kind.set_title("by modality")

    shown = patients_to_show(patients, kinds)
    by_patient.scatter(y[:, 0], y[:, 1], s=5, color="0.85", linewidths=0)
    for n, name in enumerate(shown):
        here = y[patients == name]
        centre = here.mean(axis=0)
        for point in here:
            by_patient.plot([centre[0], point[0]], [centre[1], point[1]], color=f"C{n}",
                            linewidth=0.6, alpha=0.7)
        by_patient.scatter(here[:, 0], here[:, 1], s=16, color=f"C{n}", linewidths=0,
                           label=f"{name} ({len(here)})")
    by_patient.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7,
                      frameon=False)
    by_patient.set_title(f"{len(shown)} patients' images of one modality, modality by "
                         "modality; others grey")
    for ax in (by_kind, by_patient):
        ax.set_xticks([])
        ax.set_yticks([])
    sampled = (f"{len(pick)} of {len(patient_ids)} images (whole patients, sampled)"
               if len(pick) < len(patient_ids) else f"{len(pick)} images")
    fig.suptitle(f"{title}: t-SNE of the embeddings, {sampled}, "
                 f"{len(set(people))} patients")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return True
