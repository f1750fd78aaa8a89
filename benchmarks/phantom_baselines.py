"""How hard is the phantom benchmark? Rank-1 of three nearest-neighbour baselines per modality.

    python benchmarks/phantom_baselines.py [--data DIR | --patients 60 --visits 4 --seed 0
                                            --image-size 128 --pathology-field 1] [--split test]

- intensity (z): global intensity statistics (mean, std, 32-bin histogram,
  colour means/stds), each feature z-scored over the set, Euclidean NN.
  The benchmark is honest only if this is low (target < 0.30).
- intensity (raw): the same features unscaled.
- intensity+LDA: the same features through a linear metric (PCA + Fisher
  LDA) fitted on the train split's patients: even a learnt metric on
  intensity statistics should stay low.
- structural: standardised 16x16 thumbnails (for pathology a stain-free
  nuclear texture signature: blob sizes and elongation). Should be clearly
  higher: the identity signal is there.
- structural+LDA: the structural descriptors through the same kind of learnt
  linear metric, tested on unseen patients: a first sign that the identity
  cue is learnable and generalises.
Chance is the share of same-patient images in a query's gallery.

Protocol (as the project's evaluator): within one modality and split, every
image is a query; the gallery is every other image except the query's own
study; Rank-1 = the nearest gallery image is the same patient.
Without --data, the benchmark is generated into a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import phantom_baseline_features as baselines  # noqa: E402
from mami_jax.phantoms import generator as phantoms  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402


def main(argv=None) -> int:
    ap = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder holding manifest.csv (default: generate)")
    ap.add_argument("--patients", type=int, default=phantoms.DEFAULTS["patients"],
                    help="without --data: patients generated (default: %(default)s)")
    ap.add_argument("--visits", type=int, default=phantoms.DEFAULTS["visits"],
                    help="without --data: visits generated per patient (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=phantoms.DEFAULTS["seed"],
                    help="without --data: seed of the generated phantoms (default: %(default)s)")
    ap.add_argument("--image-size", type=int, default=phantoms.DEFAULTS["image_size"],
                    help="without --data: side in px of the generated images "
                         "(default: %(default)s)")
    ap.add_argument("--pathology-field", type=float, default=phantoms.DEFAULTS["pathology_field"],
                    help="pathology tiles this many standard fields wide (runlocal: 2)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                    help="rows scored (all: every row); the LDA metrics are fitted on the "
                         "train split's patients (default: %(default)s)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    return exit_status(lambda: run(args))


def run(args) -> None:
    """Scores the baselines on ``--data`` (or phantoms generated for the run); prints the
    table and writes ``--json``."""
    if args.json:                     # a slip in it is refused before the work
        check_json_file(args.json, "--json")
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            manifest = os.path.join(args.data, "manifest.csv")
        else:
            t0 = time.perf_counter()
            manifest = phantoms.generate(os.path.join(tmp, "ph"), patients=args.patients, visits=args.visits,
                                         seed=args.seed, image_size=args.image_size,
                                         pathology_field=args.pathology_field)
            print(f"generated {args.patients} patients x {args.visits} visits in {time.perf_counter() - t0:.1f} s")
        res = baselines.evaluate_manifest(manifest, args.split)
    print(f"split={args.split}  (Rank-1 of nearest neighbour; chance = same-patient share of the gallery)")
    print(f"{'modality':10s} {'patients':>8s} {'queries':>7s} {'chance':>7s} {'intens(z)':>9s} "
          f"{'intens(raw)':>11s} {'intens+LDA':>10s} {'structural':>10s} {'struct+LDA':>10s}")
    for m, r in res.items():
        print(f"{m:10s} {r['patients']:8d} {r['queries']:7d} {r['chance']:7.3f} {r['intensity_z']:9.3f} "
              f"{r['intensity_raw']:11.3f} {r.get('intensity_lda', float('nan')):10.3f} "
              f"{r['structural']:10.3f} {r.get('structural_lda', float('nan')):10.3f}")
    if args.json:
        write_text_atomic(args.json, strict_json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    run_command(main)
