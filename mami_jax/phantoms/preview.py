"""A picture grid of the phantoms, for looking at them (``--preview FILE.png``).

Rows: a few patients per modality; columns: their visits. The grid is made
from the files as written and read back (so it also shows what the decoders
see); CT and MRI series show their middle slice, CT in a [-1000, 400] HU
window; pathology tiles of another field (``--pathology-field``) are resized to
the cell. Each cell is captioned with the visit and its disease stage. Enough
patients are generated for every modality to fill its rows (``patients_for``).
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from mami_jax.data.manifest import MODALITIES, read_manifest
from mami_jax.phantoms import generator, io
from mami_jax.runtime.atomic_files import write_atomic

LABEL_W, CAPTION_H = 96, 14
#: ``patients_for`` looks through at most this many patients per preview row: each
#: modality gets about one patient in two, so twenty per row is never short in practice.
MAX_PATIENTS_PER_ROW = 20


def _display(modality: str, raw: np.ndarray) -> np.ndarray:
    """uint8 RGB picture of one stored visit."""
    if modality == "ct":
        plane = raw[raw.shape[0] // 2].astype(np.float32)
        grey = np.clip((plane + 1000) / 1400, 0, 1)
    elif modality == "mri":
        grey = raw[raw.shape[0] // 2].astype(np.float32) / 255
    elif modality == "xray":
        grey = raw.astype(np.float32) / 65535
    else:
        return raw
    return np.repeat((grey * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def patients_for(rows: int, seed: int) -> tuple[int, list[str]]:
    """(the fewest patients whose plan gives every modality ``rows`` of them, the modalities
    still short at the limit of ``MAX_PATIENTS_PER_ROW * rows``).

    Each patient has 1-3 of the five modalities, so a fixed count (it was 3 * rows + 2)
    can leave one out: ``--seed 4 --preview-rows 1`` drew no CT row without a word. The
    plan is prefix-stable (``generator.assign_modalities``), so its first patients are
    the same whatever the count, and the grid shows the same patients as a larger run."""
    limit = MAX_PATIENTS_PER_ROW * rows
    counts = dict.fromkeys(MODALITIES, 0)
    for n, modalities in enumerate(generator.assign_modalities(limit, seed), start=1):
        for m in modalities:
            counts[m] += 1
        if min(counts.values()) >= rows:
            return n, []
    return limit, [m for m in MODALITIES if counts[m] < rows]


def _cell(modality: str, path: str, size: int) -> Image.Image:
    """The picture of one stored visit at ``size`` x ``size``: a pathology tile of another
    field (``--pathology-field``) is resized whole, not cropped (pasted as it was, its
    top-left corner filled the cell and it spilled over the next row's caption)."""
    picture = Image.fromarray(_display(modality, io.read_raw(modality, path)))
    if picture.size != (size, size):
        picture = picture.resize((size, size), Image.BOX)
    return picture


def write_preview(path: str, rows: int = 3, visits: int = 4, seed: int = 0,
                  image_size: int = 128, slices: int = 16, workers: int | None = None,
                  progress: bool = False, **appearance) -> None:
    """A grid of ``rows`` patients per modality, their visits left to right, of phantoms
    generated with these settings; ``appearance``: the generator's other settings
    (``pathology_field``, ``stage1_visible``, ``signs_visible``), so the picture shows the
    benchmark they make. ``workers`` and ``progress`` go to ``generator.generate`` (its
    default worker count; a progress bar on stderr). A modality that has fewer than
    ``rows`` patients even at the limit of ``patients_for`` gets a ``warning:`` line on
    stderr naming it."""
    patients, short = patients_for(rows, seed)
    if short:
        print(f"warning: --preview: among the first {patients} patients (seed {seed}) too few "
              f"have {', '.join(short)} to fill {rows} row(s) each; the grid shows those there "
              "are", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generator.generate(os.path.join(tmp, "p"), patients=patients, visits=visits,
                                     seed=seed, image_size=image_size, slices=slices, workers=workers,
                                     progress=progress, **appearance)
        entries = read_manifest(manifest)
        with open(os.path.join(os.path.dirname(manifest), "labels.csv")) as f:
            stage = {r["image_id"]: r["disease_stage"] for r in csv.DictReader(f)}
        cell_h = image_size + CAPTION_H
        canvas = Image.new("RGB", (LABEL_W + visits * image_size, len(MODALITIES) * rows * cell_h), "white")
        draw = ImageDraw.Draw(canvas)
        r = 0
        for modality in MODALITIES:
            series = {}
            for e in entries:
                if e.modality == modality:
                    series.setdefault(e.patient_id, []).append(e)
            for pid in sorted(series)[:rows]:
                top = r * cell_h
                draw.text((4, top + image_size // 2 - 10), f"{modality}\n{pid}", fill="black")
                for e in sorted(series[pid], key=lambda e: int(e.order)):
                    col = LABEL_W + int(e.order) * image_size
                    canvas.paste(_cell(modality, e.path, image_size), (col, top + CAPTION_H))
                    draw.text((col + 3, top + 1), f"v{e.order} stage {stage[e.image_id]}", fill="black")
                r += 1
        canvas = canvas.crop((0, 0, canvas.width, r * cell_h))
        write_atomic(path, lambda tmp: canvas.save(tmp, format="PNG"))
