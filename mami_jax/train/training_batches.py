"""``WORKDIR/training_batches.png``: what the model is trained on, drawn when a run starts.

Sampling and augmentation decide what a re-identification model learns from, and neither
shows in a loss curve: a flip that mirrors a chest X-ray's heart, a crop that cuts a fundus'
disc away, erasing that hides most of a tile, a patient whose K images are one visit. For
every source (dataset x modality) that is sampled, the first step within the first
``MAX_STEPS`` that draws it (labelled with the step of a new run that trains on it): its first ``PATIENTS`` patients, each a row of their K images
exactly as that step's batch holds them (the training transform of that step and position,
``TrainLoader.read_planned``; this process's reading of them), the normalisation undone, a
series' middle slice (a per-image standardised input, ``data.normalization=per_image``,
shows with each channel's own mean and spread taken away, as the model gets it). Captions:
each image's visit and view, and for a series the slice.
"""

from __future__ import annotations

from mami_jax.data.picture_grid import PictureGrid, slice_caption, visit_caption
from mami_jax.data.transforms import display_view

FILE = "training_batches.png"
PATIENTS = 4
MAX_STEPS = 1000


def first_steps(loader, max_steps: int = MAX_STEPS) -> list[tuple[int, int]]:
    """(plan index, source index) of the first of the loader's next ``max_steps`` batches
    that draws each source, in source order (a source none of them draws is left out).
    The loader's batches are plans ``start_step``, ``start_step + 1``, ...: a new run's
    training step N trains on plan N - 1."""
    first: dict[int, int] = {}
    wanted = sum(1 for s in loader.sources if s.weight > 0)
    for index in range(loader.start_step, loader.start_step + max_steps):
        first.setdefault(loader.plan(index).source, index)
        if len(first) == wanted:
            break
    return sorted(((index, s) for s, index in first.items()), key=lambda item: item[1])


def draw_training_batches(path: str, loader, patients: int = PATIENTS,
                          max_steps: int = MAX_STEPS, cell: int = 112) -> None:
    """Writes the picture of the module doc for ``loader`` (a ``TrainLoader``) to ``path``."""
    k = int(loader.cfg.images_per_patient)
    shown = min(patients, int(loader.cfg.patients_per_batch))
    steps = first_steps(loader, max_steps)
    grid = PictureGrid(len(steps) * shown, k, cell, captions=2)
    r = 0
    for index, s in steps:
        source, plan = loader.sources[s], loader.plan(index)
        normalization = loader.normalization(source.modality)
        step = index - loader.start_step + 1
        for p in range(shown):
            positions = range(p * k, (p + 1) * k)
            rows = [loader.rows[int(plan.rows[pos])] for pos in positions]
            grid.label(r, [source.dataset, source.modality, f"step {step}",
                           f"patient {rows[0].patient_id}"])
            for c, ((x, ok), row) in enumerate(zip(loader.read_planned(index, positions), rows)):
                if ok:
                    grid.image(r, c, display_view(x[x.shape[0] // 2], normalization))
                else:
                    grid.unreadable(r, c)
                grid.caption(r, c, [visit_caption(row), slice_caption(x.shape[0])])
            r += 1
    grid.save(path)
