"""Figures of the privacy protection (docs/privacy.md): attack, utility, image quality.

    python benchmarks/privacy_eval.py --original MANIFEST --protected OUT/manifest.csv \
        --labels LABELS.csv --model NAME=MODEL [--model ...] [--probe-model MODEL] \
        [--history-classifier DIR [...] --history-model WORKDIR [--history-config FILE[:ARG]]] \
        [--experiment configs/all.py:runlocal] [--split test] --out DIR

A model (``--model``, ``--probe-model``) is a workdir, ``WORKDIR@STEP``, a released or
exported ``.pth``/``.safetensors`` file or a converter folder (``Embedder.load``). For each
``--model``: Rank-1 and verification AUC of the protected queries of the split
against its unprotected gallery, before and after (``attack_eval``), and per patient how
many of its queries still rank one of its own images first (the patients a protection
fails: ``patients`` in the JSON, those still matched in the markdown). Utility: a
diagnosis probe on ``--probe-model``'s frozen features, fitted on the ORIGINAL training
images, scored on original and protected test images (``utility``); and, with
``--history-classifier`` (repeatable, e.g. classifier seeds), the history application's
current-only diagnosis classifier (a history ``train`` output made with ``--history-model``
on the ORIGINAL images; refused when it was trained on another model's features) on the
same images (``history_utility``); with a ``--history-config`` of ``features=teacher:NAME``
the classifiers read that separate diagnosis model instead (no ``--history-model``), and with
``features=reader`` the CNN readers their `train` fitted on the labels, saved beside them
(every slice of a series). Quality: PSNR and
SSIM of every protected image against its original, on the slices the model reads.
Writes DIR/privacy_eval.json and DIR/privacy_eval.md (and prints the tables). Bad input
ends with one ``error: ...`` line (exit status 2 for usage, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.named_models import named  # noqa: E402
from mami_jax.apps.history.experiment import read_row_labels  # noqa: E402
from mami_jax.apps.history.diagnosis_backbone import DiagnosisBackbone, teacher_name  # noqa: E402
from mami_jax.apps.history.diagnosis_reader import KIND as READER  # noqa: E402
from mami_jax.apps.history.features import TrainedModel  # noqa: E402
from mami_jax.apps.privacy import attack_eval, history_utility, quality, utility  # noqa: E402
from mami_jax.apps.privacy.model_input import read_source, settings_for  # noqa: E402
from mami_jax.apps.privacy.protect import SUFFIX  # noqa: E402
from mami_jax.apps.privacy.settings import load_config, resolve_spec  # noqa: E402
from mami_jax.data.manifest import ManifestError, read_manifest  # noqa: E402
from mami_jax.inference import Embedder  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402


def paired_rows(original, protected, split):
    by_id = {r.image_id: r for r in protected}
    rows = [r for r in original if r.split == split]
    missing = [r.image_id for r in rows if r.image_id + SUFFIX not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} rows of split {split!r} have no protected copy, "
                         f"e.g. {missing[:3]}")
    return rows, [by_id[r.image_id + SUFFIX] for r in rows]


def image_quality(rows, prot_rows, data_cfg) -> dict:
    per = {}
    for r, p in tqdm(list(zip(rows, prot_rows)), desc="quality", unit="img"):
        s = settings_for(data_cfg, r.modality)
        a, b = read_source(r, s).unit, read_source(p, s).unit
        per.setdefault(r.modality, []).append((quality.psnr(a, b), quality.ssim(a, b)))
    out = {m: {"psnr_db": float(np.mean([v[0] for v in vals])),
               "psnr_db_min": float(np.min([v[0] for v in vals])),
               "ssim": float(np.mean([v[1] for v in vals]))} for m, vals in sorted(per.items())}
    out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in ("psnr_db", "ssim")}
    out["mean"]["psnr_db_min"] = float(min(v["psnr_db_min"] for k, v in out.items() if k != "mean"))
    return out


def markdown(result: dict) -> str:
    lines = ["| model | group | chance R1 | R1 before | R1 after | AUC before | AUC after |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rep in result.get("attack", {}).items():
        for g, v in rep.items():
            if g == "source":
                continue
            lines.append(f"| {name} | {g} | {v['chance_rank1']:.3f} | {v['rank1_before']:.3f} | "
                         f"{v['rank1_after']:.3f} | {v['auc_before']:.3f} | {v['auc_after']:.3f} |")
    for name, rep in result.get("patients", {}).items():
        for g, patients in rep.items():
            kept = [v for v in patients if v["matched_after"]]
            if not kept:
                continue
            lines += ["", f"{name}, {g}: {len(kept)} of {len(patients)} patients still matched",
                      "", "| patient | queries | matched before | matched after |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {v['patient']} | {v['queries']} | {v['matched_before']} | "
                      f"{v['matched_after']} |" for v in kept]
    for probe, rep in result.get("utility", {}).items():
        lines += ["", f"diagnosis probe on {probe}", "",
                  "| modality | diagnosis AUC original | protected |", "| --- | --- | --- |"]
        for m, v in rep.items():
            lines.append(f"| {m} | {v['auc_original']:.3f} | {v['auc_protected']:.3f} |")
    for hist in result.get("history_utility", {}).values():
        step = "" if hist.get("step") is None else f" (step {hist['step']})"
        lines += ["", f"history diagnosis classifier {hist['classifier']} on {hist['model']}{step}",
                  "",
                  "| modality | diagnosis AUC original | protected | relative change |",
                  "| --- | --- | --- | --- |"]
        for m, v in hist["auc"].items():
            lines.append(f"| {m} | {_num(v['auc_original'])} | {_num(v['auc_protected'])} | "
                         f"{_pct(v.get('relative_change'))} |")
    lines += ["", "| modality | PSNR dB (mean) | PSNR dB (min) | SSIM |", "| --- | --- | --- | --- |"]
    for m, v in result.get("quality", {}).items():
        lines.append(f"| {m} | {v['psnr_db']:.2f} | {v['psnr_db_min']:.2f} | {v['ssim']:.4f} |")
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:+.1f} %"


def history_check(args, app_cfg):
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
        source = DiagnosisBackbone(name, str(app_cfg.get("teacher_weights", "")))
        for classifier in classifiers:
            classifier.check_backbone(source)
        return classifiers, source
    model = TrainedModel(args.history_model, resolve_spec(args.experiment),
                         role="--history-model", action="evaluate")
    for classifier in classifiers:
        classifier.check_model(model)
    return classifiers, model


def history_report(classifiers, source, rows, prot_rows, labels_path: str) -> dict:
    """{classifier folder: its per-modality AUCs}; the features are computed once."""
    y = read_row_labels(rows, labels_path, classifiers[0].cfg)
    if source is None:                 # features=reader: each classifier's own readers
        inputs = [(c.checked(c.reader.features(rows)), c.checked(c.reader.features(prot_rows)))
                  for c in classifiers]
        abouts = [{"model": f"reader:{c.reader.path}", "step": None,
                   "fingerprint": c.reader.fingerprint} for c in classifiers]
    else:
        orig, prot = source.features(rows), source.features(prot_rows)
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


def save(result: dict, out: str) -> str:
    """Writes what is measured so far (JSON and markdown); returns the markdown."""
    text = markdown(result)
    write_text_atomic(os.path.join(out, "privacy_eval.json"), json.dumps(result, indent=1))
    write_text_atomic(os.path.join(out, "privacy_eval.md"), text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", required=True)
    p.add_argument("--protected", required=True)
    p.add_argument("--labels", default="")
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL")
    p.add_argument("--probe-model", action="append", default=[],
                   help="model whose frozen features the diagnosis probe uses (repeatable)")
    p.add_argument("--history-classifier", action="append", default=[],
                   help="a history `train` output folder (classifiers.msgpack) trained on the "
                        "original images (repeatable)")
    p.add_argument("--history-model", default="",
                   help="the workdir that history `train` used (its features are checked)")
    p.add_argument("--history-config", default="configs/history.py",
                   help="the history app config the classifier was trained with")
    p.add_argument("--experiment", default="configs/all.py:runlocal")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        named(args.model, "--model")    # checked before any work; args stay as given
    except ValueError as e:
        p.error(str(e))
    try:
        app_cfg = load_config(args.history_config) if args.history_classifier else None
    except (ValueError, OSError) as e:
        print(f"error: --history-config {args.history_config}: {e}", file=sys.stderr)
        return 1
    if app_cfg is not None and not args.labels:
        p.error("--history-classifier needs --labels")
    if (app_cfg is not None and teacher_name(app_cfg.features) is None
            and app_cfg.features != READER and not args.history_model):
        p.error("--history-classifier needs --history-model (the workdir its `train` used) "
                "and --labels")
    try:
        return run(args, app_cfg)
    except (ValueError, OSError, ImportError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run(args, app_cfg=None) -> int:
    cfg = load_config(args.experiment)
    original = read_manifest(args.original)
    rows, prot_rows = paired_rows(original, read_manifest(args.protected), args.split)
    history = history_check(args, app_cfg)
    result = {"attack": {}, "args": vars(args)}
    os.makedirs(args.out, exist_ok=True)
    result["quality"] = image_quality(rows, prot_rows, cfg.data)
    save(result, args.out)
    probe_feats = {}
    for name, model in named(args.model, "--model"):
        emb = Embedder.load(model, cfg, action="evaluate", role=f"--model {name}")
        (e_orig, f_orig), (e_prot, f_prot) = utility.features(emb, rows), utility.features(emb, prot_rows)
        result["attack"][name] = attack_eval.attack_report(e_orig, e_prot, rows)
        result["attack"][name]["source"] = {"model": model, "step": emb.step}
        result.setdefault("patients", {})[name] = attack_eval.patient_report(e_orig, e_prot, rows)
        print(name, json.dumps(result["attack"][name]["mean"]), flush=True)
        probe_feats[model] = (emb, f_orig, f_prot)
        save(result, args.out)
    if args.labels:
        labels = utility.read_labels(args.labels)
        train = [r for r in original if r.split == "train"]
        result["utility"] = {}
        for model in args.probe_model:
            if model not in probe_feats:
                emb = Embedder.load(model, cfg, action="evaluate", role="--probe-model")
                probe_feats[model] = (emb, utility.features(emb, rows)[1],
                                      utility.features(emb, prot_rows)[1])
            emb, f_orig, f_prot = probe_feats[model]
            result["utility"][f"{model} (step {emb.step})"] = utility.diagnosis_report(
                utility.features(emb, train)[1], np.asarray([labels[r.image_id] for r in train]),
                [r.modality for r in train], f_orig, f_prot,
                np.asarray([labels[r.image_id] for r in rows]), [r.modality for r in rows])
            save(result, args.out)
    if history:
        result["history_utility"] = history_report(*history, rows, prot_rows, args.labels)
    print(save(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
