"""``python -m mami_jax.phantoms --out DIR`` writes the synthetic benchmark;
``--preview FILE.png`` draws a grid of it instead (see ``generator`` for what it holds).
Writing, the benchmark or the preview's, shows a progress bar over the rendered series
on stderr; stdout gets one ``wrote PATH`` line.

Bad input (a non-empty ``--out`` folder, a parameter out of range, a path that cannot
be written) ends the command with exit status 1 and one ``error: ...`` line on stderr;
bad arguments (``--patients abc``, neither or both of ``--out`` and ``--preview``) with
one ``error:`` line and status 2 (``runtime.cli_parser``)."""

import os

from mami_jax.phantoms import generator, preview
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.interrupts import run_command, say_interrupted
from mami_jax.runtime.output_guard import check_picture_file


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python -m mami_jax.phantoms",
                                     description=generator.__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder (absent or empty)")
    parser.add_argument("--preview", metavar="FILE.png", help="write a picture grid instead")
    parser.add_argument("--patients", type=whole_at_least(1), default=None,
                        help="patients in all, each in 1-3 modalities (default "
                             f"{generator.DEFAULTS['patients']}; --out only)")
    parser.add_argument("--visits", type=whole_at_least(1), default=generator.DEFAULTS["visits"],
                        help="visits (studies) per patient (default %(default)s)")
    parser.add_argument("--seed", type=int, default=generator.DEFAULTS["seed"],
                        help="the same seed writes the same images (default %(default)s)")
    parser.add_argument("--image-size", type=whole_at_least(1),
                        default=generator.DEFAULTS["image_size"],
                        help="image side in pixels (default %(default)s)")
    parser.add_argument("--slices", type=whole_at_least(1), default=generator.DEFAULTS["slices"],
                        help="slices of each CT and MRI series (default %(default)s)")
    parser.add_argument("--pathology-field", type=float, default=generator.DEFAULTS["pathology_field"],
                        help="pathology tiles show this many standard fields per side, at the "
                             "magnification of an --image-size tile (tile side image_size x field)")
    parser.add_argument("--stage1-visible", type=float, default=None, metavar="P",
                        help="a stage-1 visit shows the disease (at stage-2 strength) with "
                             "probability P and not at all otherwise; default: always faintly")
    parser.add_argument("--signs-visible", type=float, default=None, metavar="P",
                        help="every diseased visit shows its disease (stage 1 at stage-2 "
                             "strength) with probability P and not at all otherwise: the "
                             "patient's history decides more diagnoses; default: always")
    parser.add_argument("--workers", type=whole_at_least(1), default=None,
                        help="processes rendering in parallel (default: the CPUs, at most 4)")
    parser.add_argument("--preview-rows", type=whole_at_least(1), default=None,
                        help="patients per modality in the preview (default 3; --preview only)")
    args = parser.parse_args(argv)
    if bool(args.out) == bool(args.preview):
        parser.error("give exactly one of --out DIR or --preview FILE.png")
    # a flag the chosen output does not use was ignored without a word
    if args.preview and args.patients is not None:
        parser.error("--patients is for --out; the preview draws --preview-rows patients per "
                     "modality")
    if args.out and args.preview_rows is not None:
        parser.error("--preview-rows is for --preview")
    if args.patients is None:
        args.patients = generator.DEFAULTS["patients"]
    if args.preview_rows is None:
        args.preview_rows = 3
    try:
        written = _run(args)
    except (ValueError, OSError) as e:
        print_error(e, where=args.out or os.path.dirname(os.path.abspath(args.preview)))
        return 1
    except KeyboardInterrupt:       # nothing is left: the series are written to a staging folder
        return say_interrupted()
    print(f"wrote {written}")
    return 0


def _run(args) -> str:
    """Writes what ``args`` ask for; returns its path."""
    if args.preview:
        check_picture_file(args.preview, "--preview")
        preview.write_preview(args.preview, rows=args.preview_rows, visits=args.visits, seed=args.seed,
                              image_size=args.image_size, slices=args.slices, workers=args.workers,
                              progress=True, pathology_field=args.pathology_field,
                              stage1_visible=args.stage1_visible,
                              signs_visible=args.signs_visible)
        return args.preview
    return generator.generate(args.out, patients=args.patients, visits=args.visits, seed=args.seed,
                              image_size=args.image_size, slices=args.slices, workers=args.workers,
                              pathology_field=args.pathology_field,
                              stage1_visible=args.stage1_visible, progress=True,
                              signs_visible=args.signs_visible)


if __name__ == "__main__":
    run_command(main)
