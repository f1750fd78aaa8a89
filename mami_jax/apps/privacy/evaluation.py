"""What a protection is worth (``python -m mami_jax.apps.privacy evaluate``): attack,
utility and image quality of a ``protect`` output against its originals.

A model (``--model NAME=MODEL``, ``--probe-model``) is a workdir, ``WORKDIR@STEP``, a
released or exported ``.pth``/``.safetensors`` file or a converter folder
(``Embedder.load``). For each ``--model``: Rank-1 and verification AUC of the protected
queries of the split against its unprotected gallery, before and after (``attack_eval``),
and per patient how many of its queries still rank one of its own images first (the
patients a protection fails: ``patients`` in the JSON, those still matched in the
markdown). Utility: a diagnosis probe on ``--probe-model``'s frozen features, fitted on the
ORIGINAL training images, scored on original and protected test images (``utility``); and,
with ``--history-classifier`` (repeatable, e.g. classifier seeds), the history
application's current-only diagnosis classifier (a history ``train`` output made with
``--history-model`` on the ORIGINAL images; refused when it was trained on another model's
features) on the same images (``history_utility``); with a ``--history-config`` of
``features=teacher:NAME`` the classifiers read that separate diagnosis model instead (no
``--history-model``), and with ``features=reader`` the CNN readers their ``train`` fitted
on the labels, saved beside them (every slice of a series). Quality: PSNR and SSIM of
every protected image against its original, on the slices the model reads. Writes
OUT/privacy_eval.json and OUT/privacy_eval.md after every model (so a long evaluation
can be read while it runs), prints the tables, and draws them (``evaluation_report``).
Each finished chunk of the embedding passes of ``--model``, ``--probe-model`` and
``--history-model`` is kept beside OUT until the evaluation is written
(``runtime.chunk_store``): the same command after a stop goes on from there.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from tqdm import tqdm

from mami_jax.apps.history.experiment import read_row_labels
from mami_jax.apps.history.diagnosis_backbone import DiagnosisBackbone, teacher_name
from mami_jax.apps.history.diagnosis_reader import KIND as READER
from mami_jax.apps.history.features import TrainedModel
from mami_jax.apps.privacy import attack_eval, evaluation_report, history_utility, quality, utility
from mami_jax.apps.privacy.copy_pairs import refuse_changed_fields, refuse_unpaired_copies
from mami_jax.apps.privacy.model_input import read_source, settings_for
from mami_jax.apps.privacy.named_models import named
from mami_jax.apps.privacy.protect import SUFFIX
from mami_jax.apps.privacy.protect_report import kept_classifiers, report_beside
from mami_jax.config_files import load_config
from mami_jax.data.image_signature import rows_signature
from mami_jax.data.missing_files import refuse_missing_files
from mami_jax.data.manifest import read_manifest, row_place
from mami_jax.runtime.cli_parser import require_file
from mami_jax.experiment_config import experiment_spec, load_experiment
from mami_jax.inference import Embedder, names_a_path
from mami_jax.runtime.chunk_store import discard_beside
from mami_jax.runtime.output_guard import check_output_folder, refuse_overwriting_inputs

#: The split of --original the diagnosis probe (--probe-model) is fitted on.
PROBE_SPLIT = "train"


class UsageError(ValueError):
    """Arguments that do not fit together: a usage error (exit status 2), as argparse's."""


def checked_arguments(args):
    """The history app config ``--history-classifier`` was trained with (None without
    one), every argument checked before any work: ``UsageError`` where they do not fit
    together, FileNotFoundError naming the flag of a file or model that is not there,
    ValueError where the config cannot be read."""
    try:
        models = named(args.model, "--model")
    except ValueError as e:
        raise UsageError(str(e)) from None
    names = [name for name, _ in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--model: the name {twice[0]!r} is given twice (each model's "
                         "results are filed under its name)")
    check_output_folder(args.out, "--out", evaluation_report.REPORT)
    if args.labels and not (args.history_classifier or args.probe_model):
        raise UsageError("--labels is read by the diagnosis judges, --probe-model or "
                         "--history-classifier; name one, or leave --labels out")
    if args.probe_model and not args.labels:        # the probe was skipped, unsaid
        raise UsageError("--probe-model needs --labels (the diagnosis labels it is fitted "
                         "and scored on)")
    if args.probe_model and args.split == PROBE_SPLIT:
        raise UsageError(f"--split {PROBE_SPLIT}: the diagnosis probe (--probe-model) is fitted "
                         f"on the {PROBE_SPLIT!r} images; scored on them it would report its "
                         "training fit as utility; evaluate another split")
    files = [("--original", args.original), ("--protected", args.protected)]
    files += [("--labels", args.labels)] if args.labels else []
    for flag, path in files:
        require_file(flag, path)
    given = [(f"--model {name}=", m) for name, m in models]
    given += [("--probe-model ", m) for m in args.probe_model]
    given += [("--history-model ", args.history_model)] if args.history_model else []
    for flag, model in given:
        if not names_a_path(model):
            raise FileNotFoundError(f"{flag}{model}: no such file or folder")
    if not args.history_classifier:
        return None
    try:
        app_cfg = load_config(args.history_config, kind="history")
    except (ValueError, OSError) as e:
        raise ValueError(f"--history-config {args.history_config}: {e}") from None
    if not args.labels:
        raise UsageError("--history-classifier needs --labels")
    if args.split == app_cfg.train_split:
        raise UsageError(f"--split {args.split}: the history classifiers were trained on their "
                         f"manifest's {app_cfg.train_split!r} images (--history-config's "
                         "train_split); scored there they would report their training fit as "
                         "utility; evaluate another split")
    report = report_beside(args.protected)
    kept = kept_classifiers(report) if report else set()
    judged = [d for d in args.history_classifier if os.path.realpath(d) in kept]
    if judged:
        raise UsageError(f"--history-classifier {judged[0]}: the protection kept this "
                         "classifier's diagnosis (perturb.keep_diagnosis of its "
                         "protect_report.json), so it measures the protection's own objective; "
                         "judge with a classifier trained apart (another seed or model)")
    if (teacher_name(app_cfg.features) is None and app_cfg.features != READER
            and not args.history_model):
        raise UsageError("--history-classifier needs --history-model (the model its `train` "
                         "used) and --labels")
    return app_cfg


def paired_rows(original, protected, split,
                sources: tuple = ("original manifest", "protected manifest")):
    """(the split's original rows, their protected copies in the same order); a split
    with no rows, or a row without a copy in ``protected``, is a ValueError naming the
    manifest (``sources``: where each list was read) and the rows."""
    by_id = {r.image_id: r for r in protected}
    rows = [r for r in original if r.split == split]
    if not rows:
        raise ValueError(f"{sources[0]}: no rows in split {split!r}")
    missing = [r.image_id for r in rows if r.image_id + SUFFIX not in by_id]
    if missing:
        raise ValueError(f"{sources[1]}: {len(missing)} rows of split {split!r} have no protected "
                         f"copy, e.g. {missing[:3]}")
    refuse_unpaired_copies(protected, rows, [split], sources[1])
    copies = [by_id[r.image_id + SUFFIX] for r in rows]
    for r, c in zip(rows, copies):       # a copy read as another modality, or patient
        refuse_changed_fields(r, c, sources[1])
    return rows, copies


def probe_labels(args, rows, train) -> dict | None:
    """``--labels`` (image_id -> 0/1) for the diagnosis probe (``--probe-model``), read
    before any model is: every evaluated and every training row (the probe is fitted on
    them) must have one; a ValueError names the file and the rows otherwise. None without
    a probe: the history classifiers read their own column (``read_row_labels``, in
    ``run``), and a table without ``disease_label`` was refused for them."""
    if not (args.labels and args.probe_model):
        return None
    labels = utility.read_labels(args.labels)
    needed = list(rows) + list(train)
    if not train:
        raise ValueError(f"--original {args.original}: no rows of split 'train' to fit the "
                         "diagnosis probe (--probe-model) on")
    missing = [r.image_id for r in needed if r.image_id not in labels]
    if missing:
        raise ValueError(f"--labels {args.labels}: no label for {len(missing)} images of "
                         f"--original, e.g. {missing[:3]}")
    for modality in sorted({r.modality for r in rows}):
        # one probe a modality, fitted on its training images: one class teaches it nothing,
        # and its AUCs on original and protected images (0.5 each) would read as "kept"
        have = sorted({labels[r.image_id] for r in train if r.modality == modality})
        if len(have) < 2:
            held = f"all have label {have[0]}" if have else "are none"
            raise ValueError(f"--labels {args.labels}: the {modality} diagnosis probe is fitted "
                             f"on --original's {modality} images of split 'train', which "
                             f"{held}; it would learn nothing")
    return labels


def image_quality(rows, prot_rows, data_cfg) -> dict:
    """PSNR (``quality.psnr_summary``: over the changed images, with the count left
    unchanged) and mean SSIM of each modality's protected images; under "mean", the mean
    over the modalities (the least PSNR and the unchanged images over all)."""
    per = {}
    for r, p in tqdm(list(zip(rows, prot_rows)), desc="quality", unit="img"):
        s = settings_for(data_cfg, r.modality)
        a, b = read_source(r, s).unit, read_source(p, s).unit
        if a.shape != b.shape:          # a copy resized or re-saved by another tool
            raise ValueError(f"{row_place(p) or p.path}: protected copy {p.image_id!r} "
                             f"({p.path}) reads as {b.shape[1:]} (height, width, channels) "
                             f"x {b.shape[0]} slices, its original {r.image_id!r} as "
                             f"{a.shape[1:]} x {a.shape[0]}: PSNR and SSIM compare the same "
                             "pixels")
        per.setdefault(r.modality, []).append((quality.psnr(a, b), quality.ssim(a, b)))
    out = {m: {**quality.psnr_summary([v[0] for v in vals]),
               "ssim": float(np.mean([v[1] for v in vals]))} for m, vals in sorted(per.items())}
    changed = [v["psnr_db"] for v in out.values() if math.isfinite(v["psnr_db"])]
    out["mean"] = {"psnr_db": float(np.mean(changed)) if changed else math.inf,
                   "psnr_db_min": min(v["psnr_db_min"] for v in out.values()),
                   "unchanged": sum(v["unchanged"] for v in out.values()),
                   "ssim": float(np.mean([v["ssim"] for v in out.values()]))}
    return out


def history_classifiers(args, app_cfg):
    """(classifiers, what gives their features) of ``--history-classifier``, checked before
    the long work: the re-ID model ``--history-model`` (a ``TrainedModel``) or, for
    ``features=teacher:NAME``, that diagnosis model (a ``DiagnosisBackbone``), whichever
    every classifier was trained on."""
    if not args.history_classifier:
        return None
    classifiers = [history_utility.HistoryClassifier(d, app_cfg) for d in args.history_classifier]
    if app_cfg.features == READER:     # each classifier brings its own readers
        return classifiers, None
    name = teacher_name(app_cfg.features)
    if name is not None:
        # read as the classifiers' `train` read (the first's windows; the others checked)
        source = DiagnosisBackbone(name, str(app_cfg.get("teacher_weights", "")),
                                   value_windows=classifiers[0].backbone_windows)
        for classifier in classifiers:
            classifier.check_backbone(source)
        return classifiers, source
    model = TrainedModel(args.history_model, model_experiment(args.history_model, args)[0],
                         role="--history-model", action="evaluate")
    for classifier in classifiers:
        classifier.check_model(model)
    return classifiers, model


def history_report(classifiers, source, rows, prot_rows, labels_path: str,
                   keep_beside: str | None = None) -> dict:
    """{classifier folder: its per-modality AUCs}; the features are computed once, a re-ID
    model's passes keeping their chunks beside the output ``keep_beside`` when given."""
    y = read_row_labels(rows, labels_path, classifiers[0].cfg)
    if source is None:                 # features=reader: each classifier's own readers
        inputs = [(c.checked(c.reader.features(rows)), c.checked(c.reader.features(prot_rows)))
                  for c in classifiers]
        abouts = [{"model": f"reader:{c.reader.path}", "step": None,
                   "fingerprint": c.reader.fingerprint} for c in classifiers]
    else:
        orig, prot = (source_features(source, images, keep_beside) for images in (rows, prot_rows))
        if isinstance(source, DiagnosisBackbone):
            inputs = [(c.checked(orig), c.checked(prot)) for c in classifiers]
            about = {"model": f"teacher:{source.name}", "step": None,
                     "fingerprint": source.info["fingerprint"]}
        else:
            inputs = [(c.inputs(*orig), c.inputs(*prot)) for c in classifiers]
            about = {"model": source.workdir, "step": source.embedder.step,
                     "fingerprint": source.fingerprint}
        abouts = [about] * len(classifiers)
    return {c.out_dir: {"classifier": c.out_dir, **about, "label_column": c.cfg.label_column,
                        "auc": history_utility.diagnosis_report(c, a, b, y,
                                                                [r.modality for r in rows])}
            for c, (a, b), about in zip(classifiers, inputs, abouts)}


def source_features(source, rows, keep_beside: str | None):
    """``source.features(rows)``; a re-ID model's pass keeps its chunks beside ``keep_beside``
    (a diagnosis model caches its features itself)."""
    if keep_beside is None or not isinstance(source, TrainedModel):
        return source.features(rows)
    return source.features(rows, store=kept_pass(source.embedder, rows, keep_beside,
                                                 "embedding and backbone"))


def kept_pass(embedder, rows, out: str, what: str):
    """The chunk store of one of evaluate's embedding passes (``what`` of ``rows`` under
    ``embedder``), beside ``out`` with the others."""
    return embedder.chunk_store(out, rows_signature(rows), what, shared=True)


def model_experiment(model: str, args):
    """(spec, config) ``model`` is read with: ``--experiment`` when given, else the run's own
    (``experiment_config.experiment_spec``)."""
    spec = experiment_spec(model, args.experiment, how="--experiment FILE[:ARG]")
    return spec, load_experiment(spec)


def run(args, app_cfg=None) -> dict:
    """Measures everything ``args`` asks for; returns what was written to OUT."""
    models = named(args.model, "--model")
    experiments = {model: model_experiment(model, args) for _, model in models}
    cfg = experiments[models[0][1]][1]      # the slices the first model reads
    original = read_manifest(args.original)
    rows, prot_rows = paired_rows(original, read_manifest(args.protected), args.split,
                                  sources=(f"--original {args.original}",
                                           f"--protected {args.protected}"))
    refuse_overwriting_inputs(
        [os.path.join(args.out, name) for name in evaluation_report.WRITTEN],
        [args.original, args.protected] + ([args.labels] if args.labels else []), "--out")
    train = [r for r in original if r.split == PROBE_SPLIT]
    labels = probe_labels(args, rows, train)
    refuse_missing_files(rows + prot_rows + (train if labels else []))
    history = history_classifiers(args, app_cfg)
    if history is not None:     # their column, checked before any embedding (was at the end)
        read_row_labels(rows, args.labels, history[0][0].cfg)
    result = {"complete": False, "attack": {}, "args": vars(args)}
    result["quality"] = image_quality(rows, prot_rows, cfg.data)
    evaluation_report.save(result, args.out)
    probe_feats = {}

    def features(emb, images, desc):
        """utility.features, its chunks kept beside OUT until the evaluation is written."""
        return utility.features(emb, images, desc, store=kept_pass(emb, images, args.out,
                                                                   "embedding and pooled"))

    for name, model in models:
        spec, model_cfg = experiments[model]
        emb = Embedder.load(model, model_cfg, action="evaluate", role=f"--model {name}")
        e_orig, f_orig = features(emb, rows, f"{name}, original")
        e_prot, f_prot = features(emb, prot_rows, f"{name}, protected")
        result["attack"][name] = attack_eval.attack_report(e_orig, e_prot, rows)
        result["attack"][name]["source"] = {"model": model, "step": emb.step, "config": spec}
        patients = attack_eval.patient_report(e_orig, e_prot, rows)
        result.setdefault("patients", {})[name] = patients
        for group, entries in patients.items():
            for when in ("before", "after"):
                result["attack"][name][group][f"rank1_{when}_ci95"] = \
                    attack_eval.rank1_interval(entries, f"matched_{when}")
        print(name, json.dumps(result["attack"][name]["mean"]), flush=True)
        probe_feats[model] = (emb, f_orig, f_prot)
        evaluation_report.save(result, args.out)
    if labels is not None:
        result["utility"] = {}
        for model in args.probe_model:
            if model not in probe_feats:
                emb = Embedder.load(model, model_experiment(model, args)[1], action="evaluate",
                                    role="--probe-model")
                probe_feats[model] = (emb, features(emb, rows, "probe, original")[1],
                                      features(emb, prot_rows, "probe, protected")[1])
            emb, f_orig, f_prot = probe_feats[model]
            f_train = features(emb, train, "probe, training images")[1]
            result["utility"][f"{model} (step {emb.step})"] = utility.diagnosis_report(
                f_train, np.asarray([labels[r.image_id] for r in train]),
                [r.modality for r in train], f_orig, f_prot,
                np.asarray([labels[r.image_id] for r in rows]), [r.modality for r in rows])
            evaluation_report.save(result, args.out)
    if history:
        result["history_utility"] = history_report(*history, rows, prot_rows, args.labels,
                                                   keep_beside=args.out)
    result["complete"] = True
    print(evaluation_report.save(result, args.out))
    discard_beside(args.out)
    for picture in evaluation_report.pictures(result, args.out):
        print(f"wrote {picture}")
    return result
