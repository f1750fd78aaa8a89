"""Builds the common manifest of one public dataset from its own metadata and layout, or of
your own images laid out one folder per patient and visit (``--dataset folders``).

    python -m mami_jax.data.build_manifest --dataset nih_chestxray14 --root /data/nih \\
        --out /data/nih/manifest.csv [--no-verify-files] [--no-preview] [--seed 0] \\
        [--fractions train=0.7,val=0.1,test=0.2] [--overwrite] [--uncertain ones|zeros|keep]
    python -m mami_jax.data.build_manifest --dataset folders --modality xray \\
        --root /data/mine --out /data/mine/manifest.csv [--name mine]   # your own images

Prints: images, patients, patients with at least two images, studies, rows and
patients per split, files missing, and every kind of row the builder could not use
with its count and a few examples. ``--no-verify-files`` builds from the metadata
alone (paths resolved, existence not checked), so splits can be planned on a machine
without the images.

Path rule: a path inside the manifest's folder is written relative to that folder
(the manifest and its images can move together; ``read_manifest`` resolves relative
paths against the manifest's folder); any other path is written absolute.

Labels: a dataset that carries diagnosis labels (ChestX-ray14, CheXpert, EyePACS,
ODIR, CC-CCII; docs/datasets.md) also gets ``labels.csv`` beside the manifest (keyed by
``image_id``, the same ``--overwrite`` rule); ``--uncertain`` is CheXpert's policy for
uncertain observations.

Preview: ``<out>_preview.png`` beside the manifest (``manifest_preview.png`` for
``manifest.csv``), a few patients of every modality as the model will see them
(``preview_manifest``), and every previewed image that could not be read, listed; not
drawn with ``--no-preview`` or ``--no-verify-files``. ``--overwrite`` replaces an
earlier preview; any other file of that name is refused.

Splits: ``splits.assign_splits`` with the given fractions and seed (default: the
data config's ``split_fractions`` and ``split_seed``).

Outputs: ``--overwrite`` replaces only what this command writes. An existing ``--out``
must be a manifest (its header is the manifest's columns) and an existing ``labels.csv``
a labels table (first column ``image_id``) of this manifest's images (as written now, or
as the ``--out`` it replaces held them: ``labels.refuse_other_labels``); anything else,
above all a file of the dataset itself (``--out Data_Entry_2017.csv`` would have replaced
the metadata the manifest is built from) or another manifest's labels, is refused naming
it, with or without ``--overwrite``. Every
file a builder reads exists and is an image or a metadata table with the dataset's own
columns, which no manifest has, so this rule alone keeps the command from writing over
what it reads.

Bad input (a missing root, a metadata file that is unreadable or names an image
outside the root, an existing ``--out`` without ``--overwrite``, an output that is not
the command's own) ends the command with exit status 1 and one ``error: ...`` line on
stderr, and no manifest is written; bad arguments (an unknown ``--dataset``, a bad
``--fractions``, ``--modality``/``--name`` misused) with one ``error:`` line and status 2,
before anything is read.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
from typing import Sequence

from mami_jax.data.config import default_data_config
from mami_jax.data.datasets.folders import check_name
from mami_jax.data.datasets.registry import BUILDERS, get_builder
from mami_jax.data.labels import (LABELS_CSV, default_labels_path, image_ids_in,
                                  refuse_other_labels, write_labels)
from mami_jax.data.manifest import (MODALITIES, ManifestRow, csv_header, is_manifest,
                                    manifest_paths, write_manifest)
from mami_jax.data.picture_grid import is_png
from mami_jax.data.preview_manifest import describe, draw_preview
from mami_jax.data.splits import assign_splits, check_fractions
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least
from mami_jax.runtime.output_guard import (check_output_file, check_replaceable_file,
                                           refuse_overwriting_inputs)
from mami_jax.runtime.interrupts import run_command, say_interrupted


def summarize(rows: Sequence[ManifestRow]) -> dict:
    """The counts the CLI prints, as a dict (also used by tests)."""
    per_patient = collections.Counter(r.patient_key for r in rows)
    split_rows = collections.Counter(r.split for r in rows)
    split_patients = collections.Counter()
    for key, split in {(r.patient_key, r.split) for r in rows}:
        split_patients[split] += 1
    return {
        "images": len(rows),
        "patients": len(per_patient),
        "patients_with_2_or_more_images": sum(1 for n in per_patient.values() if n >= 2),
        "studies": len({r.study_key for r in rows}),
        "rows_per_split": dict(sorted(split_rows.items())),
        "patients_per_split": dict(sorted(split_patients.items())),
    }


def parse_fractions(text: str) -> dict[str, float]:
    """``--fractions``' type: ``name=number,...``, checked whole as ``assign_splits`` checks
    it (known splits, finite, not negative, summing to 1), so a bad value is a usage error
    (status 2) before the dataset is read, not an error after reading it all."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad fraction {part!r}; expected name=number") \
                from None
        if name.strip() in out:
            raise argparse.ArgumentTypeError(f"split {name.strip()!r} given twice in {text!r}")
        out[name.strip()] = number
    try:
        check_fractions(out)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    cfg = default_data_config()
    parser = OneLineErrorParser(prog="python -m mami_jax.data.build_manifest",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS),
                        help="which public dataset's folder layout --root holds (docs/datasets.md "
                             "says where each comes from)")
    parser.add_argument("--root", required=True, help="the dataset's folder (layout: see the builder)")
    parser.add_argument("--out", required=True, help="manifest CSV to write (atomically)")
    parser.add_argument("--no-verify-files", action="store_true",
                        help="build from metadata only; do not check that files exist")
    parser.add_argument("--seed", type=int, default=int(cfg.split_seed), help="split seed")
    parser.add_argument("--fractions", type=parse_fractions,
                        default=dict(cfg.split_fractions), help="e.g. train=0.7,val=0.1,test=0.2")
    parser.add_argument("--examples", type=whole_at_least(0), default=5,
                        help="examples printed per skip reason")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out manifest (and labels.csv beside it); "
                             "any other file is never replaced")
    parser.add_argument("--no-preview", action="store_true",
                        help="do not draw <stem>_preview.png beside --out (manifest.csv: "
                             "manifest_preview.png; it reads about 75 images, or "
                             "series, of the dataset)")
    parser.add_argument("--uncertain", choices=("ones", "zeros", "keep"), default="ones",
                        help="chexpert: uncertain (-1) observations in labels.csv become 1, 0 or stay -1")
    parser.add_argument("--modality", choices=MODALITIES, default=None,
                        help="folders (your own images): the modality of every image under --root")
    parser.add_argument("--name", default=None,
                        help="folders: the dataset column of the rows (default 'folders'); "
                             "patients are told apart per dataset")
    args = parser.parse_args(argv)
    if args.dataset == "folders" and args.modality is None:
        parser.error("--dataset folders needs --modality, the modality of every image under "
                     "--root")
    if args.dataset != "folders" and (args.modality is not None or args.name is not None):
        parser.error(f"--modality and --name are for --dataset folders; {args.dataset}'s "
                     "builder knows its own")
    if args.name is not None:
        try:
            check_name(args.name)
        except ValueError as e:
            parser.error(str(e))
    try:
        result, rows, preview = build(args)
    except (ValueError, OSError, csv.Error) as e:
        print_error(e, where=os.path.dirname(os.path.abspath(args.out)))
        return 1
    except KeyboardInterrupt:       # the manifest is written all at once, or not at all
        return say_interrupted()
    report(args, result, rows, preview)
    return 0


def preview_path(out: str) -> str:
    """The preview picture beside the manifest ``out``."""
    return os.path.splitext(out)[0] + "_preview.png"


def build(args: argparse.Namespace):
    """Builds, splits and writes the manifest, and draws its preview (None with
    ``--no-preview`` or ``--no-verify-files``); raises on bad input (see the module doc)."""
    check_output_file(args.out, "--out")
    check_replaceable_file(args.out, is_manifest(args.out), "a manifest", args.overwrite,
                           "choose another --out")
    options = {"uncertain": args.uncertain} if args.dataset == "chexpert" else {}
    if args.dataset == "folders":     # --modality and --name elsewhere: refused by main
        options = {"modality": args.modality, "name": args.name or "folders"}
    result = get_builder(args.dataset)(args.root, verify_files=not args.no_verify_files, **options)
    if not result.rows:    # an empty manifest would fail later, far from its cause
        reasons = sorted(result.skipped_by_reason().items(), key=lambda kv: -kv[1])
        said = "; ".join(f"{n} x {reason}" for reason, n in reasons[:3]) or "nothing found"
        raise ValueError(f"--root {args.root}: no images for --dataset {args.dataset} ({said}); "
                         "no manifest written")
    labels_path = default_labels_path(args.out)
    if result.label_columns:
        if os.path.realpath(labels_path) == os.path.realpath(args.out):
            raise ValueError(f"--out {args.out}: the labels of {args.dataset} are written to "
                             f"{LABELS_CSV} beside the manifest; give the manifest another name")
        header = csv_header(labels_path)
        table = bool(header) and header[0] == "image_id"
        if table:      # another manifest's, whether or not --overwrite was given
            before = image_ids_in(args.out) if os.path.isfile(args.out) else set()
            refuse_other_labels(labels_path, args.out,
                                before | {r.image_id for r in result.rows})
        check_replaceable_file(labels_path, table, "a labels table", args.overwrite,
                               "write the manifest into another folder")
    rows = assign_splits(result.rows, args.fractions, args.seed)
    picture = None if args.no_verify_files or args.no_preview else preview_path(args.out)
    if picture:
        check_replaceable_file(picture, is_png(picture), "a PNG picture", args.overwrite,
                               "write the manifest into another folder")
        refuse_overwriting_inputs([picture], [r.path for r in rows], "--out")
    written = manifest_paths(rows, args.out)
    write_manifest(written, args.out)
    if result.label_columns:
        write_labels(labels_path, result.label_columns, result.labels,
                     [r.image_id for r in written])
    preview = draw_preview(picture, rows, default_data_config()) if picture else None
    return result, written, preview


def report(args: argparse.Namespace, result, rows: Sequence[ManifestRow], preview) -> None:
    """Prints the summary described in the module doc."""
    s = summarize(rows)
    print(f"dataset {args.dataset} from {os.path.abspath(args.root)} -> {args.out}")
    for note in result.notes:
        print(f"  {note}")
    print(f"images: {s['images']}")
    print(f"patients: {s['patients']}")
    print(f"patients with >= 2 images: {s['patients_with_2_or_more_images']}")
    print(f"studies: {s['studies']}")
    for split, n in s["rows_per_split"].items():
        print(f"split {split}: {n} rows, {s['patients_per_split'][split]} patients")
    if result.label_columns:
        print(f"labels: {len(result.labels)} images -> {default_labels_path(args.out)}")
    print(f"files missing: {result.missing_files}"
          + (" (not checked: --no-verify-files)" if args.no_verify_files else ""))
    if preview:
        print("\n".join(describe(preview, preview_path(args.out))))
    else:
        print(f"preview: not drawn ({'--no-preview' if args.no_preview else '--no-verify-files'})")
    print(f"rows not used: {len(result.skipped)}")
    by_reason = collections.defaultdict(list)
    for source, reason in result.skipped:
        by_reason[reason].append(source)
    for reason, sources in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(sources[:args.examples]) + (", ..." if len(sources) > args.examples else "")
        print(f"  {len(sources)} x {reason}: {shown}")


if __name__ == "__main__":
    run_command(main)
