"""How much can history help the diagnosis, and how much can each feature read?

Two numbers bound what the history application can show on a labelled manifest:

- **legibility**: how well one image's features tell its label, per modality: the test
  AUC of a ridge probe (standardised features, an L2 penalty chosen on the validation
  split) fitted on the training split. A history image is read by the same features, so
  when they barely read the disease in one image they barely read it in the earlier ones.
- **the history ceiling**: the test AUC of the labels of the patient's earlier images
  of the modality alone (1 when any earlier image is positive), the AUC a perfect reader
  of the history would get without looking at the current image at all; and the AUC of a
  probe on the current image's features plus those earlier labels (current + oracle
  history).

Feature files are ``.npz`` files with one row per manifest row, in manifest order: the
history app's OUT/features.npz (``embedding``, ``backbone``) and
OUT/diagnosis_<teacher>.npz (``features``), checked against the file's ``image_id``.

    python benchmarks/history_bounds.py --manifest PH640/manifest.csv \\
        --features reid=D640/features.npz:backbone \\
        --features effnet=D640/diagnosis_efficientnet_lite0.npz:features --out bounds.json

Only binary labels (``--column``, default ``disease_label``: 0/1). Prints a table and
writes ``--out`` (JSON).
"""

from __future__ import annotations

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mami_jax.data.labels import default_labels_path, labels_for, read_labels  # noqa: E402
from mami_jax.data.manifest import read_manifest  # noqa: E402
from mami_jax.evaluate.metrics import verification_metrics  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import print_error  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402

PENALTIES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


def auc(scores, labels) -> float:
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(verification_metrics(np.asarray(scores, np.float64), labels)["auc"])


def ridge_scores(x: np.ndarray, y: np.ndarray, fit: np.ndarray, penalty: float) -> np.ndarray:
    """Scores of every row from a ridge regression of 2y - 1 on the ``fit`` rows."""
    mean, std = x[fit].mean(0), x[fit].std(0) + 1e-6
    z = np.c_[(x - mean) / std, np.ones(len(x))]
    a = z[fit].T @ z[fit] + penalty * np.eye(z.shape[1])
    return z @ np.linalg.solve(a, z[fit].T @ (2.0 * y[fit] - 1.0))


def probe_auc(x, y, train, val, test) -> float:
    """Test AUC of the ridge probe whose penalty scores best on ``val``."""
    best = max(PENALTIES, key=lambda p: auc(ridge_scores(x, y, train, p)[val], y[val]))
    return auc(ridge_scores(x, y, train, best)[test], y[test])


def earlier_label(rows, y) -> tuple[np.ndarray, np.ndarray]:
    """(any earlier image of the patient's modality positive, has an earlier image)."""
    from mami_jax.apps.history.history_select import true_history
    history = true_history(rows, k=len(rows))
    has = np.asarray([len(h) > 0 for h in history])
    prior = np.asarray([max((y[j] for j in h), default=0) for h in history], np.float64)
    return prior, has


def load_features(spec: str, rows) -> tuple[str, np.ndarray]:
    """``NAME=FILE.npz:KEY`` -> (NAME, the array), checked against the manifest's ids."""
    name, _, rest = spec.partition("=")
    path, _, key = rest.rpartition(":")
    if not name or not path or not key:
        raise ValueError(f"--features {spec!r}: expected NAME=FILE.npz:KEY")
    with np.load(path) as f:
        if key not in f.files:
            raise ValueError(f"{path}: no array {key!r} (has {', '.join(f.files)})")
        x, ids = f[key].astype(np.float64), [str(i) for i in f["image_id"]]
    if ids != [r.image_id for r in rows]:
        raise ValueError(f"{path}: its image ids are not the manifest's rows in order")
    return name, x.reshape(len(rows), -1)


def bounds(rows, y, features: dict) -> dict:
    y = np.asarray(y, np.float64)
    split = np.asarray([r.split for r in rows])
    modality = np.asarray([r.modality for r in rows])
    prior, has = earlier_label(rows, y)
    out = {}
    for m in sorted(set(modality)):
        sel = modality == m
        train, val, test = (sel & (split == s) for s in ("train", "val", "test"))
        row = {"test_images": int(test.sum()), "test_positive": float(y[test].mean()),
               "test_with_history": int((test & has).sum()),
               "earlier_label_auc": auc(prior[test], y[test])}
        for name, x in features.items():
            row[f"{name}_auc"] = probe_auc(x, y, train, val, test)
            row[f"{name}_plus_earlier_label_auc"] = probe_auc(np.c_[x, prior, has], y, train,
                                                              val, test)
        out[m] = row
    return out


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True,
                   help="the labelled manifest (CSV) whose train/val/test splits are used")
    p.add_argument("--labels", default="", help="default: labels.csv beside the manifest")
    p.add_argument("--column", default="disease_label",
                   help="binary (0/1) label column of the labels file (default: %(default)s)")
    p.add_argument("--features", action="append", required=True, metavar="NAME=FILE.npz:KEY",
                   help="features to probe: array KEY of FILE.npz, one row per manifest row "
                        "in order, shown as NAME; repeatable")
    p.add_argument("--out", required=True, help="JSON to write")
    args = p.parse_args(argv)
    try:
        check_json_file(args.out, "--out")
        rows = read_manifest(args.manifest)
        labels_path = args.labels or default_labels_path(args.manifest)
        y = labels_for(rows, read_labels(labels_path, args.column, ("0", "1")), labels_path)
        features = dict(load_features(s, rows) for s in args.features)
    except (ValueError, OSError, KeyError) as e:
        print_error(e)
        return 1
    result = bounds(rows, y, features)
    names = list(features)
    head = ["modality", "test", "with hist", "earlier label"] + [
        c for n in names for c in (n, f"{n}+earlier")]
    print(" | ".join(head))
    for m, r in result.items():
        cells = [m, str(r["test_images"]), str(r["test_with_history"]),
                 f"{r['earlier_label_auc']:.3f}"]
        cells += [f"{r[f'{n}{s}']:.3f}" for n in names for s in ("_auc", "_plus_earlier_label_auc")]
        print(" | ".join(cells))
    write_text_atomic(args.out, strict_json.dumps({"manifest": os.path.abspath(args.manifest),
                                            "column": args.column, "per_modality": result},
                                           indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_command(main)
