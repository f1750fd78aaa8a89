"""Computes frozen teachers' features for every row of a manifest and stores them as TFRecords.

    python -m teachers.extract --manifest FILE --teachers NAMES --out DIR
        [--shard i --num-shards n] [--batch-size B] [--device cpu|cuda]
        [--weights NAME=PATH ...] [--rows-per-shard R] [--skip-unreadable] [--split S]
        [--read-threads N] [--value-window MODALITY=LO,HI ...]

NAMES is a comma list of registry names (``teachers.registry``; ``phantoms`` and
``medical`` name the two bags). The manifest's rows, in file order, are cut into
shards of R rows; process i of n computes shards i, i + n, i + 2n... so several
processes or machines split a run and their union is exactly the single-process
output. A shard is written under a temporary name and renamed when complete, and a
rerun skips every finished shard: a killed run is resumed by running the same
command again. Each record holds the features of every named teacher that applies
to the row's modality (rows no teacher applies to get no record). An unreadable
image is an error naming it; with ``--skip-unreadable`` it gets no record and is
listed in the shard's sidecar and in ``skipped.txt``. ``--split S`` keeps only the
rows of split S (e.g. the test split for the zero-shot table): the manifest's, or, where
its split column is empty, the split training and ``mami_jax.evaluate.features`` derive
from the patient ids with the default data config (``split_rows``).
Each image is read once for every teacher, by ``--read-threads`` threads ahead of the
teachers (``shard_features``). Inference runs in batches without gradients. The folder
layout is described in ``teachers.writer``.

Images are read as the student reads them by default: min-max over the series, a DICOM by
its own window. ``--value-window ct=-1000,1000`` reads a modality through a fixed range of
its stored values instead (Hounsfield units for a CT), as a run that sets
``data.modalities.<m>.value_window`` reads it (training's own extraction passes the run's
windows); ``run.json`` and ``index.json`` record the windows, so a rerun with others is
refused and training can tell features read another way. A teacher with its own window
(``TeacherSpec.value_window``: CT-FM's Hounsfield units [-1024, 2048], its model card's
scaling) reads through it whatever the run reads; a row is decoded once per distinct
window among its teachers.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from typing import Sequence

import numpy as np

from mami_jax.data.config import default_data_config, windows_as_json
from mami_jax.data.decode import DecodeError, open_volume
from mami_jax.data.image_signature import file_stamp
from mami_jax.data.manifest import MODALITIES, ManifestError, read_manifest
from mami_jax.data.missing_files import refuse_missing_files
from mami_jax.data.splits import assign_splits, split_counts
from mami_jax.data.teacher_features import RUN_FILE, TeacherFeatureError
from mami_jax.runtime.atomic_files import make_dirs
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.cli_parser import OneLineErrorParser
from mami_jax.runtime.interrupts import run_command, say_interrupted
from mami_jax.runtime.ordered_map import ordered_map
from mami_jax.runtime.output_guard import check_output_folder
from teachers import registry, writer
from teachers.loaders import LoadedTeacher, TeacherLoadError, load_teacher, run_batch
from teachers.preprocess import teacher_inputs


class ExtractError(RuntimeError):
    """Extraction cannot go on; the message names the image and the teacher."""


#: Teachers built without weights files (``load_teacher``): weights given them were ignored.
WITHOUT_WEIGHTS = ("random", "anatomy")


def parse_weights(items) -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> {name: path}; ValueError naming the item: not NAME=PATH, an
    unknown teacher, one given twice (the last won), one that reads no weights (the path
    was ignored, and recorded as if read)."""
    out = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights {item!r}: expected NAME=PATH")
        try:
            spec = registry.get_spec(name)
        except KeyError as e:
            raise ValueError(f"--weights {item!r}: {e.args[0]}") from None
        if spec.loader in WITHOUT_WEIGHTS:
            raise ValueError(f"--weights {item!r}: teacher {name} is built without weights "
                             "files")
        if name in out:
            raise ValueError(f"--weights: {name} is given twice ({out[name]}, {path})")
        out[name] = path
    return out


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def parse_value_windows(items) -> dict[str, tuple[float, float]]:
    """``["ct=-1000,1000", ...]`` -> {modality: (lo, hi)}; ValueError naming the item."""
    out: dict[str, tuple[float, float]] = {}
    for item in items or ():
        modality, sep, text = item.partition("=")
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            lo = hi = math.nan
        if not sep or modality not in MODALITIES or not (
                math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"--value-window {item!r}: expected MODALITY=LO,HI, MODALITY one "
                             f"of {list(MODALITIES)} and finite LO < HI in the images' stored "
                             "units (a CT's Hounsfield units), e.g. ct=-1000,1000")
        if modality in out:
            raise ValueError(f"--value-window: {modality} is given twice")
        out[modality] = (lo, hi)
    return out


def split_rows(rows, split: str, manifest: str) -> tuple[list, dict | None]:
    """(the rows of ``split``, how their splits were assigned: None where the manifest
    gives them, else {"fractions", "seed"}). A manifest whose split column is empty has
    its splits derived from the patient ids as ``mami_jax.data.loading.read_rows``
    derives them, with the default data config's ``split_fractions`` and ``split_seed``
    (what ``mami_jax.evaluate.features`` and a run that keeps the defaults use), so
    ``--split test`` extracts the rows they test on; the rule goes into ``run.json``,
    being part of what the folder computes. A manifest giving some rows a split and not
    others is refused, as training refuses it."""
    unassigned = sum(not r.split for r in rows)
    assignment = None
    if unassigned:
        if unassigned != len(rows):
            raise ValueError(f"{manifest}: {unassigned} of {len(rows)} rows have no split; "
                             "assign all or none (none: splits are derived from the patient "
                             "ids)")
        data = default_data_config()
        assignment = dict(fractions=dict(sorted(dict(data.split_fractions).items())),
                          seed=int(data.split_seed))
        rows = assign_splits(rows, assignment["fractions"], assignment["seed"])
    kept = [r for r in rows if r.split == split]
    if not kept:
        raise ValueError(f"{manifest}: no rows in split {split!r} (the rows' splits: "
                         f"{split_counts(rows)})")
    return kept, assignment


def reading_window(spec, run_window):
    """The value window ``spec`` reads a row through: its own (CT-FM's Hounsfield units)
    where it has one, else the run's for the row's modality (None: the student's min-max
    or a DICOM's own window)."""
    window = spec.value_window or run_window
    return None if window is None else (float(window[0]), float(window[1]))


def _pixels(row, specs, value_window=None) -> dict[str, np.ndarray] | Exception:
    """The inputs of the pixel teachers ``specs`` for ``row``, decoded once per distinct
    window the teachers read it through (``reading_window``; ``value_window`` is the
    run's for the row's modality); the read error when it cannot be read (raised or
    skipped by the caller, in row order)."""
    by_window: dict = {}
    for spec in specs:
        by_window.setdefault(reading_window(spec, value_window), []).append(spec)
    inputs: dict[str, np.ndarray] = {}
    try:
        for window, group in by_window.items():
            decoded = open_volume(row.path, value_window=window).read(None)
            inputs.update(teacher_inputs(decoded, group))
    except (DecodeError, OSError) as e:
        return e
    return inputs


def shard_features(teachers: Sequence[LoadedTeacher], rows, batch_size, device,
                   skip_unreadable, progress, read_threads: int = 4,
                   value_windows: dict | None = None
                   ) -> tuple[dict[str, dict[str, np.ndarray]], set]:
    """({teacher: {image_id: feature (D,) float32}}, ids skipped as unreadable) of ``rows``.

    Each image is read once for all the teachers that see pixels (once per distinct value
    window among them: ``reading_window``), in ``read_threads``
    threads a few batches ahead of the teachers (decoding and resizing release Python's
    lock; on an accelerator the reading, not the forward pass, is the slow part), and
    each teacher runs on full batches of the rows it applies to. An unreadable image is
    an error naming it, or (``skip_unreadable``) skipped by every teacher. ``progress``
    is a tqdm bar advanced per row and teacher that applies to it (a skipped row by all
    of them, the ones that read no pixels included, so the bar ends at its total).
    ``value_windows``: {modality: (lo, hi)}, the modalities read through a fixed range
    (``parse_value_windows``); a teacher with its own ``value_window`` reads through that
    instead."""
    features: dict[str, dict[str, np.ndarray]] = {t.spec.name: {} for t in teachers}
    skipped: set = set()
    seeing = [t for t in teachers if t.features_for_rows is None]
    queued = {t.spec.name: ([], []) for t in seeing}     # rows, inputs of the next forward

    def forward(t: LoadedTeacher, kept, inputs_or_none) -> None:
        feats = (t.features_for_rows(kept) if inputs_or_none is None
                 else run_batch(t, np.stack(inputs_or_none), device))
        if feats.shape != (len(kept), t.feature_dim) or not np.isfinite(feats).all():
            bad = [r.image_id for r, f in zip(kept, feats) if not np.isfinite(f).all()][:5]
            raise ExtractError(f"teacher {t.spec.name}: features of shape {feats.shape} "
                               f"for {len(kept)} images of size {t.feature_dim}, "
                               f"non-finite for {bad}")
        features[t.spec.name].update(zip((r.image_id for r in kept), feats.astype(np.float32)))
        progress.update(len(kept))

    specs = {m: [t.spec for t in seeing if t.spec.applies_to(m)]
             for m in {r.modality for r in rows}}          # the pixel teachers of a modality
    applying = {m: sum(t.spec.applies_to(m) for t in teachers) for m in specs}
    to_read = [r for r in rows if specs[r.modality]]
    windows = value_windows or {}
    for row, inputs in zip(to_read, ordered_map(
            lambda r: _pixels(r, specs[r.modality], windows.get(r.modality)), to_read,
            read_threads, ahead=2 * batch_size, name="teacher-read")):
        if isinstance(inputs, Exception):
            if not skip_unreadable:
                raise ExtractError(f"image_id {row.image_id!r}: unreadable ({inputs}); "
                                   "--skip-unreadable skips such images") from inputs
            skipped.add(row.image_id)
            progress.update(applying[row.modality])
            continue
        for t in seeing:
            if t.spec.name in inputs:
                kept, batch = queued[t.spec.name]
                kept.append(row)
                batch.append(inputs[t.spec.name])
                if len(kept) == batch_size:
                    forward(t, kept, batch)
                    queued[t.spec.name] = ([], [])
    for t in seeing:
        if queued[t.spec.name][0]:
            forward(t, *queued[t.spec.name])
    for t in teachers:
        if t.features_for_rows is not None:
            todo = [r for r in rows if t.spec.applies_to(r.modality) and r.image_id not in skipped]
            for start in range(0, len(todo), batch_size):
                forward(t, todo[start:start + batch_size], None)
    return features, skipped


def run(manifest: str, teacher_names, out_dir: str, shard: int = 0, num_shards: int = 1,
        batch_size: int = 16, device: str = "cpu", weights: dict | None = None,
        rows_per_shard: int = 256, skip_unreadable: bool = False,
        show_progress: bool = True, split: str | None = None,
        read_threads: int = 4, value_windows: dict | None = None) -> dict | None:
    """Extracts this process's shards; returns the index once every shard exists.
    ``value_windows``: as ``shard_features``; ``split``: as ``split_rows``."""
    from tqdm import tqdm

    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} must be in [0, --num-shards {num_shards})")
    if batch_size < 1 or rows_per_shard < 1 or read_threads < 1:
        raise ValueError("--batch-size, --rows-per-shard and --read-threads must be >= 1")
    # a feature folder (its run.json), or a new or empty one: never a training run or an
    # archive, whose files the shards would join
    check_output_folder(out_dir, "--out", RUN_FILE)
    # a run.json that appears while the teachers load is another process's, starting now
    found_run = os.path.isfile(os.path.join(out_dir, RUN_FILE))
    rows = read_manifest(manifest)
    assignment = None
    if split is not None:
        rows, assignment = split_rows(rows, split, manifest)
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device visible to torch")
    names = registry.parse_names(teacher_names) if isinstance(teacher_names, str) \
        else [registry.get_spec(n).name for n in teacher_names]
    weights = dict(weights or {})
    unused = sorted(set(weights) - set(names))
    if unused:
        raise ValueError(f"--weights given for {unused}, which are not among --teachers {names}")
    if not skip_unreadable:     # before any teacher loads or a shard is written
        specs = [registry.get_spec(n) for n in names]
        refuse_missing_files([r for r in rows if any(s.applies_to(r.modality) for s in specs)],
                             remedy="; --skip-unreadable leaves them out, listed in skipped.txt")
    teachers = []
    for name in names:
        spec = registry.get_spec(name)
        teachers.append(load_teacher(spec, weights.get(name, registry.default_weights_path(name)
                                                       if spec.needs_weights else None),
                                     device=device, manifest_path=manifest))
    total_shards = max(1, math.ceil(len(rows) / rows_per_shard))
    # the windows only where some are given: a folder extracted before they existed is
    # still this run's
    windows = windows_as_json(value_windows)
    run_info = writer.header(
        manifest=dict(file=os.path.basename(manifest), sha256=_sha256(manifest), rows=len(rows)),
        split=split, rows_per_shard=rows_per_shard, num_shards=total_shards,
        teachers={t.spec.name: t.index_entry() for t in teachers},
        **({"value_windows": windows} if windows else {}),
        # only where splits were derived: a folder of a manifest's own splits is unchanged
        **({"split_assignment": assignment} if assignment else {}))
    make_dirs(out_dir)
    writer.ensure_run(out_dir, run_info, take_over=found_run)
    mine = [k for k in range(total_shards) if k % num_shards == shard]
    writer.remove_own_temporaries(out_dir, [(k, total_shards) for k in mine])
    pending = [k for k in mine if writer.shard_done(out_dir, k, total_shards, run_info) is None]
    chunks = {k: rows[k * rows_per_shard:(k + 1) * rows_per_shard] for k in pending}
    work = sum(t.spec.applies_to(r.modality) for k in pending for r in chunks[k] for t in teachers)
    with tqdm(total=work, unit="img", desc=f"teachers shard {shard}/{num_shards}",
              disable=not show_progress, file=sys.stderr) as progress:
        for k in pending:
            # taken before the read: a file rewritten meanwhile counts as changed
            stamps = {r.image_id: file_stamp(r.path) for r in chunks[k]}
            per_teacher, skipped = shard_features(teachers, chunks[k], batch_size, device,
                                                  skip_unreadable, progress, read_threads,
                                                  value_windows)
            records = []
            for row in chunks[k]:
                feats = {n: f[row.image_id] for n, f in per_teacher.items() if row.image_id in f}
                if feats and row.image_id not in skipped:
                    records.append((row.image_id, feats))
            writer.write_shard(out_dir, k, total_shards, records, sorted(skipped), stamps,
                               run=run_info)
    return writer.write_index_if_complete(out_dir, run_info)


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python -m teachers.extract",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest CSV of the images")
    parser.add_argument("--teachers", required=True,
                        help=f"comma list of {sorted(registry.REGISTRY)} (or the bags "
                             "'phantoms', 'medical')")
    parser.add_argument("--out", required=True,
                        help="feature folder (a rerun into it resumes: finished shards are kept)")
    parser.add_argument("--shard", type=int, default=0,
                        help="this process's index i: it computes shards i, i + n, i + 2n, ...")
    parser.add_argument("--num-shards", type=int, default=1,
                        help="n, the number of processes the run is split over")
    parser.add_argument("--batch-size", type=int, default=16, help="images per teacher forward")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where the teachers run")
    parser.add_argument("--weights", action="append", metavar="NAME=PATH",
                        help=f"local weights of a teacher (default ${registry.WEIGHTS_ENV}/NAME)")
    parser.add_argument("--rows-per-shard", type=int, default=256,
                        help="manifest rows per output shard (the unit a rerun resumes from)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="an unreadable image gets no record and is listed in skipped.txt "
                             "(default: it ends the run, named)")
    parser.add_argument("--split", default=None,
                        help="only rows of this split (the manifest's; derived from the "
                             "patient ids as training derives them where it gives none)")
    parser.add_argument("--read-threads", type=int, default=4,
                        help="threads reading and preparing images ahead of the teachers")
    parser.add_argument("--value-window", action="append", metavar="MODALITY=LO,HI",
                        help="read MODALITY through the fixed range LO..HI of its stored "
                             "values (a CT's Hounsfield units), as a run with "
                             "data.modalities.<m>.value_window does (default: min-max)")
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error(f"--num-shards {args.num_shards}: must be at least 1")
    if not 0 <= args.shard < args.num_shards:
        parser.error(f"--shard {args.shard}: must be in [0, --num-shards {args.num_shards})")
    small = [f"{flag} {value}" for flag, value in (
        ("--batch-size", args.batch_size), ("--rows-per-shard", args.rows_per_shard),
        ("--read-threads", args.read_threads)) if value < 1]
    if small:
        parser.error(f"{', '.join(small)}: must be at least 1")
    try:
        value_windows = parse_value_windows(args.value_window)
        weights = parse_weights(args.weights)
        names = registry.parse_names(args.teachers)
        unused = sorted(set(weights) - set(names))
        if unused:          # a usage error as the other --weights mistakes, status 2
            raise ValueError(f"--weights given for {unused}, which are not among --teachers "
                             f"{names}")
    except ValueError as e:
        parser.error(str(e))
    except KeyError as e:           # an unknown teacher, or none named
        parser.error(f"--teachers {args.teachers!r}: {e.args[0]}")
    try:
        index = run(args.manifest, args.teachers, args.out, args.shard, args.num_shards,
                    args.batch_size, args.device, weights,
                    args.rows_per_shard, args.skip_unreadable, split=args.split,
                    read_threads=args.read_threads,
                    value_windows=value_windows)
    except (ValueError, KeyError, OSError, ExtractError, TeacherLoadError, ManifestError,
            TeacherFeatureError) as e:
        print_error(e, where=args.out)
        return 1
    except KeyboardInterrupt:
        return say_interrupted("the finished shards are kept: run the same command again to "
                               "go on" if writer.any_shard_done(args.out) else "")
    if index is None:
        print(f"shard {args.shard} of {args.num_shards} done in {args.out}; index.json is "
              "written when every shard is")
    else:
        print(f"wrote {index['records']} records ({index['skipped']} skipped) in "
              f"{len(index['shards'])} shards to {args.out}")
    return 0


if __name__ == "__main__":
    run_command(main)
