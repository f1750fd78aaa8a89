"""Command line of the privacy application.

    python -m mami_jax.apps.privacy cues --workdir RUN --manifest FILE --out DIR
        [--split test] [--config configs/privacy.py] [--set KEY=VALUE ...]
    python -m mami_jax.apps.privacy protect --workdir RUN --manifest FILE --out DIR
        [--split test] [--config ...] [--set perturb.epsilon=0.02 ...]
    python -m mami_jax.apps.privacy attacker-manifest --manifest FILE --protected OUT/manifest.csv
        --out FILE [--splits train] [--modalities xray,...] [--overwrite]
    python -m mami_jax.apps.privacy evaluate --original FILE --protected OUT/manifest.csv
        --model NAME=MODEL [--model ...] --out DIR [--labels LABELS.csv]
        [--probe-model MODEL] [--history-classifier DIR ... --history-model MODEL]
        [--history-config FILE[:ARG]] [--experiment FILE[:ARG]] [--split test]

``cues`` writes OUT/<image_id>.png (the image and its gradient and occlusion cue maps as
heat maps; an id's slashes become "_" in its file names), OUT/<image_id>.npz (the raw
maps, (T, H, W) each) and OUT/cues.json (the model, config and rows they are of, and
each row's file name) for the first
``cues.max_images`` rows of the split. ``protect`` writes the protected images under
OUT/images/ in their input's format, OUT/manifest.csv (image ids + ``_protected``) and
OUT/protect_report.json (the model and its checkpoint step, the config; per image: match
score before and after, PSNR of the optimised change and of the file on disk, largest
change) and OUT/preview.png (the first image of each modality beside its protected copy
and the change x10); OUT/protect_log.jsonl lets a stopped run go on where it stopped when
it is run again with the same arguments (``protect_log``).
``attacker-manifest`` writes the adaptive attacker's training manifest: FILE's rows with
those of ``--splits`` replaced by their protected copies (``attacker.attacker_rows``).
``evaluate`` measures a protection: Rank-1 and verification AUC of the protected queries
against the unprotected gallery for every ``--model``, diagnosis AUC on original and
protected images, PSNR and SSIM (``evaluation``), into OUT/privacy_eval.json and .md.
``--workdir`` (or ``--model``, its other name, as ``mami_jax.main`` calls it) names the
re-ID model as a training workdir, ``WORKDIR@STEP``, a released or exported
``.pth``/``.safetensors`` file (the authors' MaMI weights as they are) or a converter folder.
``--split all`` takes every row. Inputs are never modified: OUT is a new or empty folder
or the command's own earlier output (links resolved), and nothing written replaces an input. Bad input ends with one ``error: ...`` line and exit status 2 (usage) or 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from mami_jax.apps.model_flag import add_model_flag
from mami_jax.apps.privacy.protect_report import REPORT_NAME, report_beside
from mami_jax.config_files import load_config
from mami_jax.config_overrides import apply_set_flags
from mami_jax.experiment_config import experiment_spec, load_experiment
from mami_jax.runtime import folder_lock, strict_json
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.cli_parser import OneLineErrorParser, require_file
from mami_jax.runtime.interrupts import run_command, say_interrupted
from mami_jax.runtime.orbax_noise import quiet_orbax_failure_noise

#: The privacy config a command reads unless --config names another.
DEFAULT_PRIVACY_CONFIG = "configs/privacy.py"

#: How a user names the experiment config of a run that did not store its own.
EXPERIMENT_HOW = "--experiment FILE[:ARG] (e.g. configs/all.py:runlocal)"


def _parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m mami_jax.apps.privacy",
                           description="identity-cue maps, identity removal and its evaluation")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("cues", "identity-cue maps (PNG overlays and raw .npz maps)"),
                       ("protect", "write protected images and their manifest (run "
                                   "again, a stopped run goes on where it stopped)")):
        s = sub.add_parser(name, help=text)
        add_model_flag(s, "the re-ID model: a training workdir (WORKDIR@STEP for one of its "
                          "checkpoints), a released or exported .pth/.safetensors file, or a "
                          "converter folder (python -m mami_jax.convert import-official)")
        s.add_argument("--manifest", required=True, help="manifest CSV of the images")
        s.add_argument("--out", required=True, help="output folder")
        s.add_argument("--split", default="test", help="split to process, or 'all'")
        s.add_argument("--config", default=DEFAULT_PRIVACY_CONFIG,
                       help="privacy config FILE[:ARG] (default %(default)s); ARG: the "
                            "file's comma-separated words, e.g. runlocal,transfer=RUN_A+RUN_B,"
                            "xray_visible (its docstring lists them)")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a privacy config value")
        s.add_argument("--experiment", default="",
                       help="the experiment config the model is read with (the same as --set "
                            "experiment=FILE[:ARG]; default: the run's own, RUN/config.json, "
                            "or the one an exported file carries)")
    _evaluate_parser(sub)
    a = sub.add_parser("attacker-manifest",
                       help="training manifest of the adaptive attacker (protected train rows)")
    a.add_argument("--manifest", required=True, help="the original manifest CSV")
    a.add_argument("--protected", required=True, help="manifest.csv written by protect")
    a.add_argument("--out", required=True, help="manifest CSV to write")
    a.add_argument("--splits", default="train",
                   help="comma-separated splits whose rows become protected (default train)")
    a.add_argument("--modalities", default="",
                   help="comma-separated modalities whose rows become protected (default all)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out manifest (any other file is never replaced)")
    return p


def _evaluate_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="Rank-1, verification AUC, diagnosis AUC, PSNR and "
                                        "SSIM of protected images against their originals")
    e.add_argument("--original", required=True, help="the original manifest CSV")
    e.add_argument("--protected", required=True, help="manifest.csv written by protect")
    e.add_argument("--labels", default="", help="diagnosis labels CSV (image_id, label)")
    e.add_argument("--model", action="append", required=True, metavar="NAME=MODEL",
                   help="a re-ID model to attack with, named as the tables show it "
                        "(repeatable): workdir, WORKDIR@STEP, .pth/.safetensors or converter "
                        "folder")
    e.add_argument("--probe-model", action="append", default=[], metavar="MODEL",
                   help="model whose frozen features a diagnosis probe reads (repeatable)")
    e.add_argument("--history-classifier", action="append", default=[], metavar="DIR",
                   help="a history `train` output trained on the original images "
                        "(repeatable, e.g. classifier seeds)")
    e.add_argument("--history-model", default="", metavar="MODEL",
                   help="the model that history `train` used (its features are checked)")
    e.add_argument("--history-config", default="configs/history.py",
                   help="the history app config the classifiers were trained with")
    e.add_argument("--experiment", default="",
                   help="the experiment config every model is read with (default: each "
                        "run's own, RUN/config.json, or the one an exported file carries; "
                        "configs/all.py, the paper's, for any other model file)")
    e.add_argument("--split", default="test", help="split whose images are evaluated")
    e.add_argument("--out", required=True, help="folder for privacy_eval.json and .md")


def _user_errors() -> tuple:
    from mami_jax.apps.privacy.writers import WriteError
    from mami_jax.main import user_errors
    return user_errors() + (WriteError, OSError, ImportError)


#: What ``cues`` records in its output folder (the model, config and rows the maps are of):
#: an earlier ``cues`` output is recognised by it.
CUES_RECORD = "cues.json"


def _check_out(args, rows, targets) -> None:
    """OUT is new, empty or this command's own earlier output (``output_guard``), and
    nothing the command will write there (``targets``' files and its records) replaces an
    input."""
    from mami_jax.apps.privacy.copy_paths import (check_distinct_copies, check_distinct_names,
                                                  file_name, output_path)
    from mami_jax.apps.privacy.protect_log import LOG_NAME
    from mami_jax.runtime.output_guard import check_output_folder, refuse_overwriting_inputs
    if args.command == "cues":
        check_distinct_names(targets)
        names = [CUES_RECORD] + [file_name(r.image_id) + ext for r in targets
                                 for ext in (".png", ".npz")]
    else:
        manifest_dir = os.path.dirname(os.path.abspath(args.manifest))
        check_distinct_copies(targets, manifest_dir, os.path.abspath(args.out))
        names = [LOG_NAME, "manifest.csv", "preview.png", REPORT_NAME] + [
            output_path(r, manifest_dir, os.path.abspath(args.out))[1] for r in targets]
    check_output_folder(args.out, "--out", LOG_NAME if args.command == "protect" else CUES_RECORD)
    refuse_overwriting_inputs([os.path.join(args.out, n) for n in names],
                              [args.manifest] + [r.path for r in rows], "--out")


def _attacker_manifest(args) -> None:
    from mami_jax.apps.privacy.attacker import attacker_rows
    from mami_jax.apps.privacy.protect import SUFFIX
    from mami_jax.data.manifest import is_manifest, read_manifest, write_manifest
    from mami_jax.runtime.output_guard import check_replaceable_file, refuse_overwriting_inputs
    for flag, path in (("--manifest", args.manifest), ("--protected", args.protected)):
        require_file(flag, path)
    refuse_overwriting_inputs([args.out], [args.manifest, args.protected], "--out")
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out}: is a folder; give the manifest file to write")
    check_replaceable_file(args.out, is_manifest(args.out), "a manifest", args.overwrite,
                           "choose another --out")
    splits = [s for s in args.splits.split(",") if s]
    modalities = [m for m in args.modalities.split(",") if m] or None
    report = report_beside(args.protected)
    if report is not None and report.get("split") == "all":
        raise ValueError(
            f"--protected {args.protected}: protected with --split all, so the copies of "
            f"{', '.join(splits)} were optimised against the evaluation splits' images too "
            "(the centre of the embeddings, the impostors, the impersonation targets); "
            "protect --split train for the attacker's training images")
    rows = attacker_rows(read_manifest(args.manifest), read_manifest(args.protected), splits,
                         source=args.protected, modalities=modalities,
                         original_source=f"--manifest {args.manifest}")
    write_manifest(rows, args.out)
    n = sum(r.image_id.endswith(SUFFIX) for r in rows)
    print(f"wrote {args.out}: {len(rows)} rows, {n} of them protected (splits {splits}, "
          f"modalities {modalities or 'all'})")


def _evaluate(args, parser) -> None:
    from mami_jax.apps.privacy import evaluation
    try:
        app_cfg = evaluation.checked_arguments(args)
    except evaluation.UsageError as e:
        parser.error(str(e))
    evaluation.run(args, app_cfg)


def _run(args, parser) -> None:
    if args.command == "attacker-manifest":
        return _attacker_manifest(args)
    if args.command == "evaluate":
        return _evaluate(args, parser)

    from mami_jax.apps.privacy.protect import select_rows
    from mami_jax.data.manifest import read_manifest
    from mami_jax.inference import names_a_path
    from mami_jax.runtime.local_paths import url_hint

    require_file("--manifest", args.manifest)
    if not names_a_path(args.workdir):
        raise FileNotFoundError(f"{args.model_flag} {args.workdir}: no such file or folder"
                                f"{url_hint(args.workdir)}")
    pcfg = load_config(args.config, kind="privacy")
    # a usage error of the subcommand, named as argparse's are
    apply_set_flags(pcfg, args.set + ([f"experiment={args.experiment}"] if args.experiment
                                      else []),
                    OneLineErrorParser(prog=f"{parser.prog} {args.command}").error)
    rows = read_manifest(args.manifest)
    targets = select_rows(rows, None if args.split == "all" else args.split, args.manifest)
    if args.command == "cues":
        from mami_jax.apps.privacy.cue_run import check_cue_settings
        check_cue_settings(pcfg.cues)
        if len(targets) > int(pcfg.cues.max_images):   # said, not cut without a word
            print(f"mapping the first {int(pcfg.cues.max_images)} of {len(targets)} images "
                  f"(cues.max_images; --set cues.max_images=N for more)", flush=True)
        targets = targets[:int(pcfg.cues.max_images)]
    _check_out(args, rows, targets)
    # One run at a time writes into OUT (a second one would interleave its images and log
    # lines with the first's); a run that ends before its first file leaves no empty OUT.
    with folder_lock.output_held(args.out, f"--out {args.out}", f"privacy {args.command}"):
        _protect_or_cues(args, pcfg, rows, targets)


def _protect_or_cues(args, pcfg, rows, targets) -> None:
    """The models loaded, then ``_protect`` or ``_cues``, with OUT held."""
    from mami_jax.apps.privacy import ensemble, references
    from mami_jax.apps.privacy.member_reading import refuse_other_readings, unchecked_warning
    from mami_jax.apps.privacy.protect import check_settings
    from mami_jax.data.manifest import MODALITIES
    from mami_jax.data.missing_files import refuse_missing_files
    refuse_missing_files(references.reference_rows(rows, targets))   # targets among them
    if args.command == "protect":
        check_settings(pcfg, targets)
    pcfg.experiment = experiment_spec(args.workdir, pcfg.experiment, how=EXPERIMENT_HOW)
    experiment = load_experiment(pcfg.experiment)
    _warn_unseen_modalities(targets, experiment, args.workdir)
    # Only the models the run uses are restored (cues: --workdir's; protect: the default
    # ensemble only where a target's modality has no ensemble of its own), and the
    # per-modality ensembles are checked before any is.
    named = ensemble.modality_ensembles(pcfg.perturb, MODALITIES)
    uses_default = args.command == "protect" and any(r.modality not in named for r in targets)
    names = [args.workdir] + (list(pcfg.perturb.ensemble) if uses_default else [])
    refuse_other_readings({args.workdir: {r.modality for r in targets}}, experiment.data,
                          role=args.model_flag, against=(
                              f"the experiment config it is read with ({pcfg.experiment})",
                              "name the config it was trained with (--experiment "
                              "FILE[:ARG]), or none to read it with its own config.json"))
    unchecked = []
    if args.command == "protect":
        unchecked = refuse_other_readings(
            _members_by_modality(names[1:], named, targets, args.workdir), experiment.data)
        if unchecked:
            print(unchecked_warning(unchecked), file=sys.stderr, flush=True)
    members = ([ensemble.load_member(args.workdir, experiment, role=args.model_flag)]
               + ensemble.load_ensemble(names[1:], experiment))
    if args.command == "protect":
        by_modality = ensemble.load_modality_members(members[0], dict(zip(names, members)),
                                                     pcfg.perturb, experiment)
        _protect(args, pcfg, rows, targets, members, by_modality, experiment, unchecked)
    else:
        _cues(args, pcfg, rows, targets, members[0])


def _members_by_modality(default: list, named: dict, targets, workdir: str) -> dict:
    """Each ensemble member (but ``workdir``, the protecting run) -> the modalities of
    ``targets`` it helps protect: ``default`` those without an ensemble of their own in
    ``named`` (``perturb.modality_ensemble``), a named one its modality."""
    modalities = {r.modality for r in targets}
    out: dict[str, set] = {}
    for name in default:
        out.setdefault(name, set()).update(modalities - set(named))
    for m, names in named.items():
        for name in names if m in modalities else ():
            out.setdefault(name, set()).add(m)
    return {n: ms for n, ms in out.items() if n != workdir and ms}


def _protect(args, pcfg, rows, targets, members, by_modality, experiment,
             unchecked: list) -> None:
    """Protects ``targets`` into OUT: the images, manifest.csv, preview.png and
    protect_report.json (going on from OUT/protect_log.jsonl where a run stopped);
    ``unchecked``: the ensemble members whose reading could not be checked."""
    import numpy as np

    from mami_jax.apps.privacy.figures import protect_preview
    from mami_jax.apps.privacy.header_identity import burned_in_warning
    from mami_jax.apps.privacy.protect import protect_rows
    from mami_jax.apps.privacy.writers import left_out_warning
    from mami_jax.apps.privacy.written_budget import shrunk_change_warning
    from mami_jax.data.manifest import read_manifest, write_manifest
    from mami_jax.runtime.atomic_files import write_text_atomic
    log = _protect_log(args, pcfg, members, by_modality, len(targets))
    new_rows, records = protect_rows(rows, targets, members, pcfg, os.path.dirname(
        os.path.abspath(args.manifest)), os.path.abspath(args.out),
        modality_members=by_modality, log=log)
    write_manifest(new_rows, os.path.join(args.out, "manifest.csv"))
    protect_preview(os.path.join(args.out, "preview.png"), targets,
                    read_manifest(os.path.join(args.out, "manifest.csv")), experiment.data)
    before = np.mean([r["score_before"] for r in records])
    after = np.mean([r["score_after"] for r in records])
    report = {"workdir": args.workdir, "model": members[0].embedder.source,
              "step": members[0].embedder.step, "manifest": os.path.abspath(args.manifest),
              "split": args.split, "config": pcfg.to_dict(), "images": len(records),
              "mean_score_before": float(before), "mean_score_after": float(after),
              "unchecked_members": list(unchecked),
              "kept_classifiers": [os.path.realpath(d) for d in
                                   str(pcfg.perturb.keep_diagnosis or "").split("+") if d],
              "records": records}
    write_text_atomic(os.path.join(args.out, REPORT_NAME),
                      strict_json.dumps(report, where="protect_report", other=str, indent=1))
    print(f"protected {len(records)} images -> {os.path.join(args.out, 'manifest.csv')}; "
          f"mean match score {before:.3f} -> {after:.3f}")
    for warning in (burned_in_warning(records), left_out_warning(records),
                    shrunk_change_warning(records)):
        if warning:
            print(warning, file=sys.stderr, flush=True)


def _cues(args, pcfg, rows, targets, member) -> None:
    """Cue maps of ``targets`` into OUT, with OUT/cues.json saying what they are of; every
    image is read before OUT is written to."""
    from mami_jax.apps.privacy.copy_paths import file_name
    from mami_jax.apps.privacy.cue_run import read_cue_inputs, write_cues
    from mami_jax.runtime.atomic_files import write_text_atomic
    inputs = read_cue_inputs(rows, targets, member)
    alone = inputs.without_other_images()
    write_text_atomic(os.path.join(args.out, CUES_RECORD), strict_json.dumps(
        {"model": member.embedder.source, "step": member.embedder.step,
         "manifest": os.path.abspath(args.manifest), "split": args.split,
         "images": [r.image_id for r in targets],
         "files": {r.image_id: file_name(r.image_id) for r in targets},
         "without_other_images": alone,
         "config": pcfg.to_dict()}, indent=1))
    n = write_cues(inputs, member, pcfg, args.out)
    print(f"wrote cue maps of {n} images to {args.out}")
    if alone:
        print(f"warning: {len(alone)} of them ({', '.join(alone[:3])}"
              f"{', ...' if len(alone) > 3 else ''}) have no other image of their patient "
              "and modality in the manifest: their maps explain the match with themselves, "
              "and their gradient maps are empty (cues.json: without_other_images)",
              file=sys.stderr, flush=True)


def _warn_unseen_modalities(targets, experiment, model: str) -> None:
    """One line when the run was trained without some of the targets' modalities
    (``data.only_modalities``): they are still processed, as asked, by a model that never
    learnt to match them, so their cue maps and protection mean little."""
    trained = tuple(experiment.data.only_modalities)
    unseen = sorted({r.modality for r in targets} - set(trained)) if trained else []
    if unseen:
        n = sum(r.modality in unseen for r in targets)
        print(f"warning: {model} was trained on {', '.join(trained)} only "
              f"(data.only_modalities); {n} {'/'.join(unseen)} images are processed with it "
              "all the same (a manifest of those modalities only, or a model trained on "
              "them, avoids this)", file=sys.stderr, flush=True)


def _protect_log(args, pcfg, members, by_modality: dict, targets: int):
    """``OUT/protect_log.jsonl`` for this run's settings (``protect_log``); says how many
    images an earlier run of the same settings already finished."""
    from mami_jax.apps.privacy.protect_log import ProtectLog
    from mami_jax.runtime.file_digest import file_sha256
    models = {"protecting": [members[0].embedder.source, members[0].embedder.step],
              "members": [[m.embedder.source, m.embedder.step] for m in members[1:]],
              "by_modality": {k: [[m.embedder.source, m.embedder.step] for m in v]
                              for k, v in sorted(by_modality.items())}}
    log = ProtectLog.open(args.out, {"config": pcfg.to_dict(), "models": models,
                                     "manifest_sha256": file_sha256(args.manifest),
                                     "split": args.split})
    if log.records:
        print(f"resuming: {len(log.records)} of {targets} images were finished by an earlier "
              f"run into {args.out} ({log.path})", flush=True)
    return log


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _run(args, parser)
    except _user_errors() as e:
        print_error(e, where=getattr(args, "out", None))
        return 1
    except KeyboardInterrupt:
        return say_interrupted(_what_is_kept(args))
    return 0


def _what_is_kept(args) -> str:
    """What an interrupted command leaves, for its one line: protect goes on from its log
    (and the references' embeddings), evaluate from the chunks of its embedding passes;
    cues leaves the maps it finished (a run again writes every map)."""
    from mami_jax.apps.privacy.protect_log import LOG_NAME
    from mami_jax.runtime.chunk_store import beside, what_is_kept
    if args.command == "evaluate":
        return what_is_kept([beside(args.out)])
    if args.command == "protect":
        log = os.path.join(args.out, LOG_NAME)
        if os.path.isfile(log):
            return f"what is finished is kept: run the same command again to go on ({log})"
        return what_is_kept([beside(args.out)]) or "no image was finished yet"
    if args.command == "cues" and os.path.isfile(os.path.join(args.out, CUES_RECORD)):
        if any(name.endswith(".npz") for name in os.listdir(args.out)):
            return f"the maps finished so far are in {args.out}"
        return "no map was finished yet"
    return ""


if __name__ == "__main__":
    quiet_orbax_failure_noise()     # a damaged checkpoint: one error line, no more
    run_command(main)
