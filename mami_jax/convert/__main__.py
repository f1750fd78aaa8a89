"""Command line: import the released MaMI checkpoint or CLIP weights, export to PyTorch.

    python -m mami_jax.convert import-official --pth FILE --out CKPT_DIR
                                               [--allow-non-released-shift] [--overwrite]
    python -m mami_jax.convert import-clip --source PATH --out CKPT_DIR [--allow-torchscript]
                                           [--init-from CKPT_DIR] [--overwrite]
    python -m mami_jax.convert export-torch --checkpoint CKPT_DIR --out FILE.pth|FILE.safetensors
                                            [--module-prefix] [--allow-non-released-shift]
                                            [--overwrite]

``--model-config FILE.json`` gives the model config (keys of
``mami_jax.models.config.default_config``; unspecified keys keep their default,
``shift_input`` must be stated). Without it: import-official uses the config
embedded by our exporter, else the released architecture; import-clip uses the
released architecture. A file whose embedded config differs from ``--model-config``
is refused, naming the differing keys. Weights are never run under a feature shift
other than the one they were made for without ``--allow-non-released-shift``
(export-torch: a model whose ``shift_input`` is not "router"; import-official: a
file in the authors' layout under such a config).

export-torch of a trainer workdir (or step) also carries the run's ``config.json`` in the
file (``mami_experiment_config``), so the applications read the file as they read the run.

No command writes over what it reads. An existing ``--out`` is replaced only with
``--overwrite`` (the importers: only a converter checkpoint folder). Refused even with
``--overwrite``, before anything is loaded: an importer's ``--out`` folder that is or holds
one of its inputs (``--pth``, ``--source``, ``--init-from``, ``--model-config``; replacing
the folder would delete them); an export's ``--out`` inside the folder it reads (the
converter folder, or the whole run folder of a trainer workdir or step: its
``config.json`` and ``model_config.json`` are inputs), or an existing folder.

Each command prints what it loaded, ignored or wrote and the parameter count. Any
error (missing or corrupt file, conversion error, bad config, bad arguments) is
printed as one ``error: ...`` line on stderr, without a traceback; the exit status
is 2 for bad arguments and 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from mami_jax.convert.checkpoint_dir import (is_converter_checkpoint, load_config_file,
                                             load_params, resolve, save_params)
from mami_jax.convert.mapping import flatten_params
from mami_jax.runtime.output_guard import same_or_inside
from mami_jax.runtime.cli_parser import OneLineErrorParser
from mami_jax.runtime.error_line import error_line
from mami_jax.runtime.interrupts import run_command, say_interrupted
from mami_jax.runtime.orbax_noise import quiet_orbax_failure_noise


def _count(params) -> int:
    return int(sum(v.size for v in flatten_params(params).values()))


def _config(args):
    from mami_jax.models.config import default_config
    return load_config_file(args.model_config) if args.model_config else default_config()


def _refuse_out_over_inputs(out: str, inputs) -> None:
    """An importer's ``--out`` folder must be neither an input nor hold one: with
    ``--overwrite`` the whole old folder is deleted once the new one is in place, so a
    ``--pth`` kept in a converter folder (or that folder as ``--init-from``) would be lost.
    ``inputs``: (flag, path or None) pairs; links are resolved."""
    for flag, path in inputs:
        if path and same_or_inside(path, out):
            raise ValueError(
                f"--out {out}: is or holds the input {flag} {path}; replacing it would "
                "delete that input (refused even with --overwrite). Choose another --out")


def _check_out_dir(args) -> None:
    """Fails before any (slow) conversion rather than after it (save_params checks again)."""
    if not os.path.lexists(args.out):
        return
    if not args.overwrite:
        raise FileExistsError(f"{args.out} exists; choose a new directory or pass --overwrite")
    if not is_converter_checkpoint(args.out):
        raise FileExistsError(f"{args.out} exists and is not a converter checkpoint; "
                              "refusing to replace it even with --overwrite")


def cmd_import_official(args) -> None:
    from mami_jax.config_files import json_config
    from mami_jax.convert.official import EXPERIMENT_KEY, embedded_experiment, load_official

    _refuse_out_over_inputs(args.out, [("--pth", args.pth),
                                       ("--model-config", args.model_config)])
    _check_out_dir(args)
    cfg = load_config_file(args.model_config) if args.model_config else None
    result = load_official(args.pth, cfg,
                           allow_non_released_shift=args.allow_non_released_shift)
    experiment = embedded_experiment(args.pth)
    if experiment is not None:
        # read as the folder's readers read its config.json (the export, the applications):
        # text that is not a run config was kept as it was, and only they failed on it
        json_config(experiment, f"{args.pth}:{EXPERIMENT_KEY}")
    out = save_params(args.out, result.params, result.cfg, overwrite=args.overwrite,
                      experiment=experiment)
    r = result.report
    print(f"import-official: {args.pth}")
    print(f"  model config: {result.config_source}"
          f"{' (module. prefix removed)' if result.prefix_stripped else ''}"
          f", shift_input={result.cfg.shift_input!r}")
    print(f"  keys loaded: {len(r.loaded)}")
    print(f"  keys ignored (unused by the forward pass): {len(r.ignored)}"
          + (f" [{', '.join(_group(r.ignored))}]" if r.ignored else ""))
    if r.absent_unused:
        print(f"  unused keys absent from the file: {len(r.absent_unused)}")
    print(f"  parameters: {r.num_params:,}")
    if experiment is not None:
        print("  experiment config: the one the file carries, kept as config.json")
    print(f"  wrote {out}")


def _group(keys):
    """Short description of many keys: their distinct names with block indices removed."""
    names = sorted({re.sub(r"resblocks\.\d+\.", "resblocks.*.", k) for k in keys})
    return names if len(names) <= 12 else names[:12] + [f"... {len(names) - 12} more"]


def cmd_import_clip(args) -> None:
    from mami_jax.convert.clip import load_clip_visual, merge_clip

    _refuse_out_over_inputs(args.out, [("--source", args.source),
                                       ("--init-from", args.init_from),
                                       ("--model-config", args.model_config)])
    _check_out_dir(args)
    if args.init_from:
        if args.model_config:
            raise ValueError("--init-from takes the model config from that checkpoint; "
                             "do not also pass --model-config")
        params, cfg = load_params(args.init_from)
        origin = f"from {args.init_from}"
    else:
        cfg, params = _config(args), None
        origin = f"seed {args.seed}, init={cfg.init!r}"
    # the source is read and checked before the model's initialisation (a minute on a CPU)
    loaded = load_clip_visual(args.source, cfg, allow_torchscript=args.allow_torchscript)
    if params is None:
        import jax
        import jax.numpy as jnp

        from mami_jax.models import MaMI
        size = cfg.image_size
        params = jax.jit(MaMI(cfg).init)(jax.random.key(args.seed),
                                         jnp.zeros((1, 1, size, size, 3)))["params"]
    result = merge_clip(params, loaded, cfg, args.source)
    out = save_params(args.out, result.params, cfg, overwrite=args.overwrite)
    loaded_values = sum(v.size for k, v in flatten_params(result.params).items()
                        if k in set(result.loaded))
    print(f"import-clip: {args.source} ({result.source_format} layout)")
    print(f"  backbone parameters loaded: {len(result.loaded)} arrays, {loaded_values:,} values")
    print(f"  kept ({origin}): {len(result.kept)} arrays (ComPA, slice adapters, head)")
    print(f"  source keys ignored: {len(result.ignored)}"
          + (f" [{', '.join(_group(result.ignored))}]" if result.ignored else ""))
    print(f"  parameters: {_count(result.params):,}")
    print(f"  wrote {out}")


def cmd_export_torch(args) -> None:
    from mami_jax.config_files import read_json_config
    from mami_jax.convert.mapping import build_table
    from mami_jax.convert.official import export_official

    _check_export_out(args)
    params, cfg, layout = load_params(args.checkpoint, return_layout=True)
    stored = _run_config_beside(args.checkpoint)
    experiment = read_json_config(stored).to_json() if stored else None
    state = export_official(args.out, params, cfg, module_prefix=args.module_prefix,
                            allow_non_released_shift=args.allow_non_released_shift,
                            experiment=experiment)
    unused = [e.theirs for e in build_table(cfg) if not e.used]
    print(f"export-torch: {args.checkpoint} ({layout} layout), "
          f"shift_input={cfg.shift_input!r}")
    print(f"  keys written: {len(state)} ({len(state) - len(unused)} from params, "
          f"{len(unused)} unused keys as zeros)")
    print(f"  parameters: {_count(params):,}")
    if stored:
        print(f"  experiment config: {stored}, carried in the file (the applications read "
              "the file with it)")
    else:
        print("  experiment config: none beside the checkpoint (the applications read the "
              "file with the paper's unless told another)")
    print(f"  wrote {args.out}")


#: The names an export is written under (``torch_io.save_state_dict``'s formats).
EXPORT_EXTENSIONS = (".pth", ".pt", ".safetensors")


def _check_export_out(args) -> None:
    """Refuses, before the checkpoint is read, an ``--out`` that would replace an input or
    an earlier file unasked.

    The folder the checkpoint is read from is the one holding its ``model_config.json``:
    the converter folder, or the run folder of a trainer workdir or step (whose
    ``config.json`` goes into the export). No ``--out`` inside it is accepted, even with
    ``--overwrite``: ``--out RUN/config.json`` would replace the run's config with the
    weights. An existing folder is refused too (a file cannot replace it); an existing
    file only with ``--overwrite``; a name without a model file's extension always (the
    format follows the extension, and ``--out manifest.csv --overwrite``, a slip, replaced
    the manifest with weights).
    """
    read_from = os.path.dirname(resolve(args.checkpoint)[1])
    if same_or_inside(args.out, read_from):
        raise ValueError(
            f"--out {args.out}: is or lies inside {read_from}, the folder --checkpoint "
            f"{args.checkpoint} is read from; an export never writes into its input "
            "(refused even with --overwrite). Choose a path outside it")
    if os.path.isdir(args.out):
        raise IsADirectoryError(f"--out {args.out}: is a folder; give a file name "
                                "(FILE.pth or FILE.safetensors)")
    if not args.out.lower().endswith(EXPORT_EXTENSIONS):
        raise ValueError(f"--out {args.out}: an export is a FILE.pth or FILE.safetensors (.pt "
                         "is read as .pth); give a name with one of those extensions")
    if os.path.lexists(args.out) and not args.overwrite:
        raise FileExistsError(f"--out {args.out} exists; choose a new file name or pass "
                              "--overwrite")


def _run_config_beside(checkpoint: str) -> str | None:
    """The training run's config that trained the checkpoint read (a trainer workdir, its
    latest step, or a step folder): ``config.json``, or the ``config.until_step_<N>.json``
    covering an earlier step of a run resumed with other settings
    (``config_files.trained_config_path``); a converter folder's own ``config.json``
    where it keeps one (imported from a file exported from a run); else None."""
    from mami_jax.config_files import run_config_path, trained_config_path
    params_dir, model_config, layout = resolve(checkpoint)
    folder = os.path.dirname(model_config)
    stored = run_config_path(folder)
    if not os.path.isfile(stored):
        return None
    if layout == "converter":
        return stored
    return trained_config_path(folder, int(os.path.basename(os.path.dirname(params_dir))))


_SHIFT_HELP = ("run or write weights under a feature shift other than the released one "
               "(shift_input != 'router'); the setting is recorded in the output")


_OVERWRITE_DIR_HELP = ("replace an existing --out converter checkpoint (never another "
                       "folder, nor one holding an input)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m mami_jax.convert", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    p = sub.add_parser("import-official", help="released MaMI .pth -> orbax checkpoint dir")
    p.add_argument("--pth", required=True, help="released checkpoint (.pth or .safetensors)")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--model-config", help="model config JSON (default: embedded or released)")
    p.add_argument("--allow-non-released-shift", action="store_true", help=_SHIFT_HELP)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_DIR_HELP)
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("import-clip", help="CLIP ViT weights -> backbone of a new checkpoint")
    p.add_argument("--source", required=True,
                   help="OpenAI CLIP file (.pt/.pth/.safetensors) or HF model directory")
    p.add_argument("--out", required=True, help="checkpoint directory to create")
    p.add_argument("--model-config", help="model config JSON (default: released architecture)")
    p.add_argument("--seed", type=int, default=0, help="init seed of the non-CLIP parameters")
    p.add_argument("--init-from", metavar="CKPT_DIR",
                   help="take the non-CLIP parameters (and the model config) from this "
                        "checkpoint instead of a fresh initialisation")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="allow TorchScript archives (the OpenAI downloads); they contain code")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_DIR_HELP)
    p.set_defaults(func=cmd_import_clip)

    p = sub.add_parser("export-torch", help="orbax checkpoint -> PyTorch state dict file")
    p.add_argument("--checkpoint", required=True,
                   help="our checkpoint dir, a trainer WORKDIR or WORKDIR/checkpoints/<step>")
    p.add_argument("--out", required=True, help="FILE.pth ({'model': sd}) or FILE.safetensors")
    p.add_argument("--module-prefix", action="store_true",
                   help="prefix keys with 'module.' like the released file")
    p.add_argument("--allow-non-released-shift", action="store_true", help=_SHIFT_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (never one inside the checkpoint's "
                        "folder)")
    p.set_defaults(func=cmd_export_torch)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Library warnings (orbax logs through absl) would add lines to the one-line errors
    # and to the report; failures are reported here.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return say_interrupted()
    except Exception as e:  # noqa: BLE001 - any failure is reported as one line, no traceback
        text = error_line(e, where=os.path.dirname(os.path.abspath(getattr(args, "out", "."))))
        if not isinstance(e, (ValueError, OSError)):  # not a known input-error family
            text = f"{type(e).__name__}: {text}"
        print(f"error: {text}", file=sys.stderr)
        return 1
    finally:
        absl_logger.setLevel(level)
    return 0


if __name__ == "__main__":
    quiet_orbax_failure_noise()
    run_command(main)
