"""A picture of a manifest's images as the model will see them, to look at before training.

    python -m mami_jax.data.preview_manifest --manifest FILE --out preview.png \\
        [--config configs/all.py[:ARG]] [--split test] [--patients 3] [--visits 5] \\
        [--view eval|train]

Counts and paths say nothing about whether the images decode as intended: an X-ray read
inverted, a CT without its window, a series whose slices come out of order, a manifest
whose visits are not one patient's. The picture shows, for a few patients of every
(dataset, modality) group (patients with two images or more first, chosen at random with
``--seed``), a row of their images in visit order: each the evaluation view of the data
config (decoded, stain-normalised where configured, short side resized and centre-cropped;
a series' middle slice of those the model reads), before normalisation. Captions give the
visit's ``order`` and ``view``, the ``split`` and, for a series, the slices read. An
image that cannot be read is a red cell, and the command lists each one naming its row.
``--view train`` shows instead one draw of the training augmentation of each image (crop,
flip, rotation, intensity jitter, erasing; normalisation undone), to set the augmentation
before a run (a run draws its own first batches: ``train/training_batches.py``).

``build_manifest`` draws the same picture beside the manifest it writes.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from mami_jax.data.config import default_data_config
from mami_jax.data.decode import DecodeError
from mami_jax.data.example_reader import ExampleReader
from mami_jax.data.manifest import (MODALITIES, ManifestRow, order_key, read_manifest, row_place,
                                    rows_of_split)
from mami_jax.data.picture_grid import PictureGrid, slice_caption, visit_caption
from mami_jax.data.transforms import display_view, eval_view
from mami_jax.runtime.cli_parser import OneLineErrorParser
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.interrupts import run_command, say_interrupted
from mami_jax.runtime.output_guard import check_picture_file, refuse_overwriting_inputs
from mami_jax.runtime.progress import progress_bar

@dataclasses.dataclass
class Preview:
    """What a preview showed: patients (rows of the picture), images, and the rows whose
    image could not be read, each as ``[FILE: line N: ]image_id=...: why`` (a row still to be
    written has no line)."""

    patients: int
    images: int
    unreadable: list[str]


def choose_patients(rows: Sequence[ManifestRow], patients: int, visits: int,
                    seed: int = 0) -> list[list[ManifestRow]]:
    """Per (dataset, modality) group, in the order of ``MODALITIES`` then dataset:
    ``patients`` patients (those with two images or more first, each kind in a random
    order of ``seed``), each as their first ``visits`` rows in visit order."""
    groups: dict[tuple, dict[str, list[ManifestRow]]] = collections.defaultdict(dict)
    for r in rows:
        groups[(r.modality, r.dataset)].setdefault(r.patient_key, []).append(r)
    rng = np.random.default_rng(seed)
    chosen = []
    for modality, dataset in sorted(groups, key=lambda g: (MODALITIES.index(g[0]), g[1])):
        by_patient = groups[(modality, dataset)]
        names = sorted(by_patient)
        shuffled = [names[i] for i in rng.permutation(len(names))]
        shuffled.sort(key=lambda name: len(by_patient[name]) < 2)     # stable: pairs first
        for name in shuffled[:patients]:
            ordered = sorted(by_patient[name], key=lambda r: (order_key(r.order), r.image_id))
            chosen.append(ordered[:visits])
    return chosen


#: What a cell shows: the evaluation view, or one draw of the training transform.
VIEWS = ("eval", "train")


def _view(reader: ExampleReader, index: int, view: str, seed: int) -> tuple[np.ndarray, str]:
    """Row ``index`` in [0, 1] as ``view`` shows it (a series' middle slice), and the
    caption line that says which slices were read. ``train``: the training transform with
    a generator of (``seed``, ``index``), its normalisation undone."""
    row = reader.rows[index]
    settings = reader.settings[row.modality]
    if view == "train":
        x = reader.read(index, settings.slices, np.random.default_rng([seed, index]))
        x = display_view(x, settings.augment.normalization)
    else:
        x = eval_view(reader.decoded(index, settings.slices, None),
                      settings.augment.resize_size, settings.eval_image_size)
    return x[x.shape[0] // 2], slice_caption(x.shape[0])


def draw_preview(path: str, rows: Sequence[ManifestRow], data_cfg, patients: int = 3,
                 visits: int = 5, seed: int = 0, cell: int = 128, view: str = "eval",
                 progress: bool = True) -> Preview:
    """Writes the picture of the module doc to ``path`` (a PNG, atomically) for ``rows``
    read with ``data_cfg`` (the ``data`` block of an experiment config), each image as
    ``view`` (``VIEWS``) shows it."""
    chosen = choose_patients(rows, patients, visits, seed)
    flat = [r for patient in chosen for r in patient]
    reader = ExampleReader(flat, data_cfg)
    grid = PictureGrid(len(chosen), max((len(p) for p in chosen), default=1), cell)
    unreadable, index = [], 0
    totals = collections.Counter((r.patient_key, r.modality) for r in rows)
    with progress_bar(len(flat), "preview", disable=not progress, delay=2.0) as bar:
        for p, patient in enumerate(chosen):
            first = patient[0]
            total = totals[(first.patient_key, first.modality)]
            grid.label(p, [first.dataset, first.modality, first.patient_id, f"{total} images"
                           + (f" ({total - len(patient)} not shown)" if total > len(patient) else "")])
            for v, row in enumerate(patient):
                try:
                    picture, slices = _view(reader, index, view, seed)
                    grid.image(p, v, picture)
                except DecodeError as e:
                    grid.unreadable(p, v)
                    where = f"{row_place(row)}: " if row_place(row) else ""
                    unreadable.append(f"{where}image_id={row.image_id!r}: {e}")
                    slices = ""
                grid.caption(p, v, [visit_caption(row),
                                    " ".join(t for t in (row.split or "no split", slices) if t)])
                index += 1
                bar.update(1)
    grid.save(path)
    return Preview(patients=len(chosen), images=len(flat), unreadable=unreadable)


def describe(preview: Preview, path: str) -> list[str]:
    """The lines a command prints about a preview it drew."""
    lines = [f"preview: {preview.patients} patients, {preview.images} images -> {path}"]
    if preview.unreadable:
        lines.append(f"  {len(preview.unreadable)} of them could not be read:")
        lines += [f"    {u}" for u in preview.unreadable]
    return lines


def _experiment(spec: str, overrides: Sequence[str], usage_error):
    """The experiment config ``spec`` (without one, the paper's data block alone), with
    the ``--set`` overrides applied (a bad one goes to ``usage_error``)."""
    import ml_collections

    from mami_jax.config_files import load_config
    from mami_jax.config_overrides import apply_set_flags
    from mami_jax.config_renames import renamed_key_message
    cfg = load_config(spec, kind="experiment") if spec else \
        ml_collections.ConfigDict({"data": default_data_config()})
    other = next((o for o in overrides if not o.strip().startswith("data.")), None)
    if other is not None:
        usage_error(f"--set {other}: a preview reads with the data block alone; give a data.* "
                    "setting")
    apply_set_flags(cfg, overrides, usage_error, moved=renamed_key_message)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m mami_jax.data.preview_manifest",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="the manifest CSV to look at")
    parser.add_argument("--out", required=True, help="the picture to write (.png)")
    parser.add_argument("--config", default="",
                        help="experiment config FILE[:ARG] (or a run's config.json) whose "
                             "data block reads the images; default: the paper's preprocessing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a data.* setting of the experiment config (the preview reads "
                             "with its data block alone), e.g. "
                             "data.modalities.ct.value_window=\"(-1000, 1000)\", to see a "
                             "reading before training with it (repeatable)")
    parser.add_argument("--split", default="", help="only rows of this split")
    parser.add_argument("--patients", type=int, default=3,
                        help="patients per (dataset, modality) group")
    parser.add_argument("--visits", type=int, default=5, help="images per patient, in visit order")
    parser.add_argument("--seed", type=int, default=0,
                        help="which patients are chosen (and, --view train, the augmentation)")
    parser.add_argument("--view", choices=VIEWS, default="eval",
                        help="eval: the evaluation view; train: one draw of the training "
                             "augmentation of each image, to see what it does")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.visits < 1:
        parser.error("--patients and --visits must be at least 1")
    try:
        check_picture_file(args.out, "--out")
        data_cfg = default_data_config()
        if args.config or args.set:     # configs sit above the data they describe
            data_cfg = _experiment(args.config, args.set, parser.error).data
        rows = rows_of_split(read_manifest(args.manifest), args.split, f"--manifest {args.manifest}")
        refuse_overwriting_inputs([args.out], [args.manifest] + [r.path for r in rows], "--out")
        preview = draw_preview(args.out, rows, data_cfg, args.patients, args.visits, args.seed,
                               view=args.view)
    except (ValueError, OSError) as e:
        print_error(e)
        return 1
    except KeyboardInterrupt:
        return say_interrupted()
    print("\n".join(describe(preview, args.out)))
    return 0


if __name__ == "__main__":
    run_command(main)
