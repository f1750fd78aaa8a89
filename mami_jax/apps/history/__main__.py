"""History-augmented diagnosis from the command line (docs/history.md).

    python -m mami_jax.apps.history index --workdir RUN --manifest FILE --out INDEX \\
        [--kind flat|ivf|hnsw] [--labels FILE] [--config FILE[:ARG]]
    python -m mami_jax.apps.history add   --index INDEX --manifest FILE [--labels FILE]
    python -m mami_jax.apps.history query --index INDEX --image PATH [--k 5] [--png FILE] \\
        [--with [MODALITY=]PATH ...] [--workdir RUN [--config FILE[:ARG]]]
    python -m mami_jax.apps.history train --workdir RUN --manifest FILE --out DIR \\
        [--labels FILE] [--app-config configs/history.py] [--config FILE[:ARG]]
    python -m mami_jax.apps.history eval  (the same arguments; reuses DIR's classifiers)
    python -m mami_jax.apps.history figure --metrics DIR1/metrics.json ... --out FILE.png

``index`` embeds every manifest image with the run's latest checkpoint, calibrates the
per-modality thresholds on the manifest's validation patients (when it has some) and
writes the archive; ``add`` extends it with the same model (another model is refused);
``query`` prints an image's best earlier candidates with their score (the archive's score
kind: summed z-scores of a visit-fused archive, a similarity otherwise), the
accept/reject decision, whose they are (patient and order) and, for an archive given
``--labels``, the diagnosis recorded for each earlier image (what a clinician reads beside
it), and draws them beside the query; ``figure`` draws the AUC of
several runs (e.g. classifier seeds) with their spread. An image already archived is
queried with its own metadata (only earlier images, never its own study); another one
needs ``--modality`` (and ``--order`` to exclude later archived images).
``--workdir`` (or ``--model``, its other name, as ``mami_jax.main`` calls it) takes a
training workdir, ``WORKDIR@STEP``, a released or exported ``.pth``/``.safetensors`` file
or a converter folder; it is read with the run's own experiment config (``RUN/config.json``,
which training writes; a file exported from a run carries it), or the one ``--config``
names (any other model file: the paper's by default). ``add`` and ``query`` use the model
the archive records unless ``--workdir`` names it (moved, say); its parameters must be the
archive's either way.
Inputs are never modified, and outputs go where ``commands`` says (never into an input).
A stopped ``index``, ``add``, ``train`` or ``eval``, run again, reads back the embedding
chunks it finished (``runtime.chunk_store``, beside its output) and goes on from there.
Bad input ends with one ``error: ...`` line before any long work: exit status 2 for a
usage error (``runtime.cli_parser``), 1 for any other, as every command of the package.
"""

from __future__ import annotations

import argparse

from mami_jax.apps.model_flag import add_model_flag
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.interrupts import run_command, say_interrupted


def _parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m mami_jax.apps.history",
                                description="History-augmented diagnosis: archive index, "
                                "history retrieval and diagnosis with history.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    def model_args(s, required=True):
        add_model_flag(s, "the re-ID model: a training workdir (latest checkpoint; "
                          "WORKDIR@STEP for another), a released or exported "
                          ".pth/.safetensors file, or a converter folder", required)
        s.add_argument("--config", "--experiment", dest="config", default=None,
                       help="the experiment config the model is read with (default: the "
                            "run's own, RUN/config.json, or the one an exported file carries; "
                            "configs/all.py, the paper's, for any other model file; "
                            "--experiment is the same flag, as in the privacy app)")

    def records_arg(s):
        s.add_argument("--labels", default=None,
                       help="labels table whose diagnoses (the app config's label column) the "
                            "archive records for these images; query shows them")

    def app_config(s):
        s.add_argument("--app-config", default=None,
                       help="settings file[:arg] (default: configs/history.py)")

    s = sub.add_parser("index", help="build an archive index from a manifest")
    model_args(s)
    s.add_argument("--manifest", required=True,
                   help="manifest CSV of the images to archive (every row, whatever its split)")
    s.add_argument("--out", required=True, help="archive folder to write")
    s.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default=None,
                   help="FAISS index kind (default: the app config's, flat = exact)")
    records_arg(s)
    app_config(s)

    s = sub.add_parser("add", help="add a manifest's images to an archive")
    s.add_argument("--index", required=True, help="archive folder written by index (updated "
                   "in place, all or nothing)")
    s.add_argument("--manifest", required=True,
                   help="manifest CSV of the new images (ids not yet in the archive)")
    model_args(s, required=False)
    records_arg(s)
    app_config(s)

    s = sub.add_parser("query", help="retrieve an image's earlier images")
    s.add_argument("--index", required=True, help="archive folder written by index")
    s.add_argument("--image", required=True, help="image file (or series folder)")
    s.add_argument("--k", type=whole_at_least(1), default=None,
                   help="candidates shown (default: config k)")
    s.add_argument("--modality", default=None, help="for an image outside the archive")
    s.add_argument("--order", default=None, help="its visit order or date (default: newest)")
    s.add_argument("--with", dest="with_images", action="append", default=None,
                   metavar="[MODALITY=]PATH",
                   help="another image of the query's visit (archived: its path; new: "
                        "MODALITY=PATH); repeatable. An archive indexed by visits adds their "
                        "evidence (an archived query brings its archived visit by itself)")
    s.add_argument("--threshold", type=float, default=None,
                   help="accept above this score, on the scale of the archive's score kind "
                        "(a visit-fused archive's: summed z-scores; a single-image one's: "
                        "the hub-corrected or plain cosine similarity) (default: the "
                        "archive's calibrated threshold)")
    s.add_argument("--png", default=None,
                   help="picture to write, replaced if it exists (default: "
                        "./query_<image id>.png, a new image's named by its file name and a "
                        "hash of its path; an existing file is never replaced by it: the "
                        "next free ./query_<image id>-2.png, -3, ... is written and named)")
    app_config(s)
    model_args(s, required=False)   # default: the model the archive records

    for name in ("train", "eval"):
        s = sub.add_parser(name, help=f"{name} the diagnosis classifiers; writes metrics.json")
        model_args(s)
        s.add_argument("--manifest", required=True,
                       help="manifest CSV whose splits train and evaluate the classifiers")
        s.add_argument("--labels", default=None, help="labels table (default: labels.csv "
                       "beside the manifest)")
        s.add_argument("--out", required=True, help="output folder")
        s.add_argument("--split", default=None, help="evaluation split (default: config)")
        app_config(s)

    s = sub.add_parser("figure", help="AUC picture and mean table of several runs' "
                       "metrics.json (e.g. classifier seeds)")
    s.add_argument("--metrics", nargs="+", required=True, help="metrics.json files")
    s.add_argument("--out", required=True, help="PNG to write")
    return p


def user_errors() -> tuple:
    from mami_jax.data.decode import DecodeError
    from mami_jax.data.example_reader import DataError
    # ImportError: an extra the chosen setting needs is not installed (named in the message).
    return (ValueError, OSError, KeyError, ImportError, DataError, DecodeError)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        from mami_jax.apps.history import commands
        return getattr(commands, args.command)(args)
    except user_errors() as e:
        print_error(e, where=getattr(args, "out", None))
        return 1
    except KeyboardInterrupt:
        return say_interrupted(_what_is_kept(args))


def _what_is_kept(args) -> str:
    """What an interrupted command leaves: index, add, train and eval the chunks of their
    embedding pass they finished (``runtime.chunk_store``, beside their output)."""
    from mami_jax.runtime.chunk_store import beside, what_is_kept
    out = {"index": "out", "add": "index", "train": "out", "eval": "out"}.get(args.command)
    return what_is_kept([beside(getattr(args, out))] if out else [])


if __name__ == "__main__":
    run_command(main)
