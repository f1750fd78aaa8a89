"""The privacy figures, drawn from what the commands wrote.

They are those of docs/privacy.md and docs/privacy_experiments.md.

    python benchmarks/privacy_figures.py --original MANIFEST --out docs/figures \
        [--cues DIR] [--protected NAME=MANIFEST ...] [--ids ID,ID,...] \
        [--eval privacy_eval.json ...] [--rename MODEL=LABEL ...] [--experiment ...] \
        [--transfer PANEL=privacy_transfer.json[#VARIANT] ...] [--transfer-figure NAME]

- ``--cues`` (a ``cues`` output folder): OUT/privacy_cues.png, the image and its gradient
  and occlusion cue maps, one line per ``--ids`` row with maps there;
- ``--protected`` (``protect`` outputs, e.g. perturbation and inpainting; a NAME given
  several times merges its manifests):
  OUT/privacy_protected.png, each ``--ids`` row beside its protected copies and their
  changes (x10);
- ``--eval`` (``privacy evaluate`` outputs; a model's modalities are merged over the files,
  ``--rename`` labels it): OUT/privacy_rank1.png, Rank-1 before and after per model and
  modality; and where those files judged the diagnosis with history classifiers
  (``--history-classifier``), OUT/privacy_utility.png, each classifier's AUC change per
  modality against the 5 % goal (classifiers labelled by their folder's name, or
  ``--rename FOLDER=LABEL``).
- ``--transfer`` (``privacy_transfer.py`` outputs, usually one per modality; a PANEL given
  several files merges their modalities): OUT/``--transfer-figure`` (default
  privacy_transfer_grid.png), one panel per PANEL of every held-out model's Rank-1 after
  protection per modality, from each file's run of its largest ensemble (of that
  ``#VARIANT`` where the file holds several variants).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mami_jax.apps.privacy import figures  # noqa: E402
from mami_jax.apps.privacy.protect import SUFFIX  # noqa: E402
from mami_jax.config_files import load_config  # noqa: E402
from mami_jax.data.manifest import read_manifest  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402


def merge_attack(into: dict, attack: dict, rename: dict) -> None:
    """Adds an attack report (model -> group -> metrics) to ``into`` under each model's
    ``rename`` label, group by group (one model's modalities often come from several
    files); the summary entries ``mean`` and ``source`` are left out."""
    for model, report in attack.items():
        into.setdefault(rename.get(model, model), {}).update(
            {g: x for g, x in report.items() if g not in ("mean", "source")})


def transfer_panels(specs, rename) -> dict:
    """PANEL -> {model label: attack report} from ``PANEL=privacy_transfer.json[#VARIANT]``
    specs: each file's run of its largest ensemble size, of the named variant where the
    file ran several. A file that cannot be read, or whose choice is missing or ambiguous,
    is a ValueError naming it."""
    panels: dict[str, dict] = {}
    for spec in specs:
        panel, eq, rest = spec.partition("=")
        path, _, variant = rest.partition("#")
        if not eq or not panel or not path:
            raise ValueError(f"--transfer {spec}: expected PANEL=privacy_transfer.json[#VARIANT]")
        try:
            with open(path) as f:
                runs = json.load(f)["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--transfer {path}: not a readable privacy_transfer.json ({e!r})")
        if variant:
            runs = [r for r in runs if r["variant"] == variant]
        if not runs:
            raise ValueError(f"--transfer {path}: no run of variant {variant!r}")
        largest = max(r["size"] for r in runs)
        chosen = [r for r in runs if r["size"] == largest]
        if len(chosen) > 1:
            names = ", ".join(r["variant"] for r in chosen)
            raise ValueError(f"--transfer {path}: {len(chosen)} variants ({names}) at ensemble "
                             f"size {largest}; name one as {panel}={path}#VARIANT")
        merge_attack(panels.setdefault(panel, {}), chosen[0]["attack"], rename)
    return panels


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", required=True,
                   help="manifest of the original images (the --ids rows are read from it)")
    p.add_argument("--out", required=True, help="folder the figures are written to")
    p.add_argument("--cues", default="",
                   help="a cues output folder: draws privacy_cues.png for the --ids rows")
    p.add_argument("--protected", action="append", default=[], metavar="NAME=MANIFEST",
                   help="a protect output's manifest: draws privacy_protected.png; a NAME "
                        "given several times merges its manifests; repeatable")
    p.add_argument("--ids", default="", help="image ids to show (comma-separated)")
    p.add_argument("--eval", action="append", default=[], metavar="JSON",
                   help="a privacy evaluate output (privacy_eval.json): draws "
                        "privacy_rank1.png (and privacy_utility.png); repeatable")
    p.add_argument("--rename", action="append", default=[], metavar="MODEL=LABEL",
                   help="label of a model in the Rank-1 figure")
    p.add_argument("--experiment", default="configs/all.py:runlocal",
                   help="experiment config whose data settings read the images "
                        "(default: %(default)s)")
    p.add_argument("--transfer", action="append", default=[],
                   metavar="PANEL=JSON[#VARIANT]",
                   help="a privacy_transfer.py output drawn as panel PANEL (its largest "
                        "ensemble, of VARIANT if given); repeatable")
    p.add_argument("--transfer-figure", default="privacy_transfer_grid.png",
                   help="file name in --out of the --transfer figure (default: %(default)s)")
    args = p.parse_args(argv)
    return exit_status(lambda: run(args, p))


def run(args, p) -> int:
    """Draws the figures the arguments ask for (``p``: the parser, for usage errors); the
    exit status."""
    data_cfg = load_config(args.experiment, kind="experiment").data
    original = {r.image_id: r for r in read_manifest(args.original)}
    ids = [i for i in args.ids.split(",") if i]
    unknown = [i for i in ids if i not in original]
    if unknown:
        p.error(f"--ids {unknown} not in {args.original}")
    rename = dict(r.split("=", 1) for r in args.rename)
    try:
        panels = transfer_panels(args.transfer, rename)
    except ValueError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    if args.cues:
        shown = [i for i in ids if os.path.isfile(os.path.join(args.cues, i + ".npz"))]
        maps = [dict(np.load(os.path.join(args.cues, i + ".npz"))) for i in shown]
        figures.cue_grid(os.path.join(args.out, "privacy_cues.png"),
                         [original[i] for i in shown], maps, data_cfg)
    if args.protected:
        found: dict[str, dict] = {}
        for spec in args.protected:          # one NAME may be given several manifests
            name, _, path = spec.partition("=")
            found.setdefault(name, {}).update({r.image_id: r for r in read_manifest(path)})
        variants = {}
        for name, by_id in found.items():
            missing = [i for i in ids if i + SUFFIX not in by_id]
            if missing:
                p.error(f"--protected {name}: no protected copy of {missing}")
            variants[name] = [by_id[i + SUFFIX] for i in ids]
        figures.comparison_grid(os.path.join(args.out, "privacy_protected.png"),
                                [original[i] for i in ids], variants, data_cfg)
    if panels:
        figures.rank1_grid(os.path.join(args.out, args.transfer_figure), panels,
                           "Rank-1 of protected test queries against the original gallery")
    if args.eval:
        attack: dict[str, dict] = {}
        reports = []
        for path in args.eval:      # one model's modalities may come from several files
            try:
                with open(path) as f:
                    reports.append(json.load(f))
            except (OSError, ValueError) as e:
                p.error(f"--eval {path}: {e}")
            if "attack" not in reports[-1]:
                p.error(f"--eval {path}: no 'attack' section (not a privacy_eval.json)")
            merge_attack(attack, reports[-1]["attack"], rename)
        figures.rank1_bars(os.path.join(args.out, "privacy_rank1.png"), attack,
                           "protected test queries against the original gallery")
        changes = figures.merged_utility(reports, rename)
        if changes:
            figures.utility_bars(os.path.join(args.out, "privacy_utility.png"), changes,
                                 title="diagnosis AUC, protected against original images")
    return 0


if __name__ == "__main__":
    run_command(main)
