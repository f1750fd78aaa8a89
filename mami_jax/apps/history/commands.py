"""The command-line actions (``python -m mami_jax.apps.history``; arguments there)."""

from __future__ import annotations

import os

from mami_jax.apps.history.archive import Archive, ArchiveError, mean_directions
from mami_jax.apps.history.calibration import calibrate_archive
from mami_jax.apps.history.features import TrainedModel
from mami_jax.apps.history.history_select import retrieve
from mami_jax.apps.history.query_rows import query_row, visit_mates
from mami_jax.apps.history.visit_fusion import (VisitFusion, fit_visit_retrieval, scores_visits,
                                                stats_from_calibration)
from mami_jax.config_files import load_config
from mami_jax.data.labels import default_labels_path, labels_for, read_labels
from mami_jax.data.manifest import ManifestRow
from mami_jax.experiment_config import experiment_spec, load_experiment

DEFAULT_APP_CONFIG = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "configs", "history.py"))


def app_config(args):
    return load_config(getattr(args, "app_config", None) or DEFAULT_APP_CONFIG)


def _rows(args, config) -> list[ManifestRow]:
    """The manifest's rows, with the run config's split rule when it has no splits, and
    only of the modalities the run was trained on (``data.only_modalities``; how many
    others were left out is said)."""
    from mami_jax.data.loading import read_rows
    with config.unlocked():
        config.data.manifest = os.path.abspath(args.manifest)
    rows, left_out = read_rows(config, os.path.dirname(os.path.abspath(args.manifest)))
    if left_out:
        print(f"  {sum(left_out.values())} images of {'/'.join(sorted(left_out))} in "
              f"{args.manifest} left out: the run was trained on "
              f"{', '.join(config.data.only_modalities)} only (data.only_modalities)",
              flush=True)
    return rows


def _refuse_inputs_as_output(out: str, args) -> None:
    out = os.path.abspath(out)
    inputs = {getattr(args, "model_flag", "--workdir"): getattr(args, "workdir", None),
              "the manifest's folder": os.path.dirname(os.path.abspath(args.manifest))}
    for name, path in inputs.items():
        if path and out == os.path.abspath(path):
            raise ValueError(f"--out {out} is {name}: outputs never go into the inputs")


def _recorded(rows, args, cfg) -> list[str] | None:
    """The diagnoses (``cfg.label_column`` of ``--labels``) of ``rows``, None without
    ``--labels``; an unknown value or an unlabelled row is an error naming it."""
    if not getattr(args, "labels", None):
        return None
    classes = [str(c) for c in cfg.classes]
    return [classes[i] for i in labels_for(rows, read_labels(args.labels, cfg.label_column,
                                                              classes), args.labels)]


def _say_records(archive: Archive, added: int, recorded: list | None) -> None:
    if recorded is not None:
        print(f"  recorded diagnoses ({archive.record_column}) of {len(recorded)} images")
    elif archive.record_column is not None:
        print(f"  {added} images added without a recorded diagnosis (no --labels); the archive "
              f"records {archive.record_column!r} for {len(archive.records)} of {len(archive)}")


def _experiment_spec(args) -> str:
    """``--config`` when given, else the ``--workdir`` model's own (``experiment_config``)."""
    return experiment_spec(args.workdir, args.config, how="--config FILE[:ARG]")


def index(args) -> int:
    _refuse_inputs_as_output(args.out, args)
    cfg = app_config(args)
    spec = _experiment_spec(args)
    rows = _rows(args, load_experiment(spec))   # bad input first, before the model loads
    recorded = _recorded(rows, args, cfg)
    model = TrainedModel(args.workdir, spec, role=args.model_flag)
    emb = model.embeddings(rows)
    archive = Archive(emb.shape[1], args.kind or cfg.index.kind, dict(cfg.index), model.info,
                      centers=mean_directions(rows, emb) if cfg.center else None)
    archive.add(rows, emb)
    if recorded is not None:
        archive.record(rows, recorded, cfg.label_column)
    calibration = {}
    if any(r.split == cfg.calibration_split for r in rows):
        if cfg.get("visit_fusion", False):   # as train/eval retrieve; query scores visits
            calibration = fit_visit_retrieval(archive, rows, emb, cfg)[1]
        else:
            calibration = calibrate_archive(archive, rows, emb, cfg)
    archive.calibration = calibration
    archive.save(args.out)
    print(f"archive {os.path.abspath(args.out)}: {len(archive)} images "
          f"({', '.join(f'{m} {n}' for m, n in archive.header()['modalities'].items())}), "
          f"{archive.kind} index, {archive.dim}-d{', centred' if cfg.center else ''}, "
          f"model step {model.info['step']}")
    for m, c in calibration.items():
        print(f"  {m}: accept above {c['threshold']:.6f} (FAR {c['far']:.4f}, TAR "
              f"{c['tar']:.3f} on {c['patients']} {cfg.calibration_split} patients, "
              f"{c['method']} calibration)")
    if not calibration:
        print(f"  no {cfg.calibration_split!r} patients: not calibrated (query needs --threshold)")
    _say_records(archive, len(rows), recorded)
    return 0


def _model_for(archive: Archive, args, where: str) -> TrainedModel:
    given = getattr(args, "workdir", None)
    workdir = given or archive.model.get("workdir")
    spec = _experiment_spec(args) if given else (getattr(args, "config", None)
                                                 or archive.model.get("config"))
    if not workdir or not spec:
        raise ArchiveError(f"{where}: the archive does not record its model; give --workdir "
                           f"and --config")
    role = args.model_flag if given else "the archive's recorded model"
    model = TrainedModel(workdir, spec, role=role)
    archive.check_model(model.info, where)
    return model


def add(args) -> int:
    archive = Archive.load(args.index)
    model = _model_for(archive, args, f"adding {args.manifest} to {args.index}")
    rows = _rows(args, load_experiment(model.spec))     # the run's modalities, as index reads
    known = {r.image_id for r in archive.rows}
    dup = [r.image_id for r in rows if r.image_id in known]
    if dup:  # before the (long) embedding
        raise ArchiveError(f"{args.manifest}: {len(dup)} image(s) already in {args.index}, "
                           f"e.g. {dup[:5]}")
    cfg = app_config(args)
    recorded = _recorded(rows, args, cfg)
    if recorded is not None and archive.record_column not in (None, cfg.label_column):
        raise ArchiveError(f"--labels: the archive records {archive.record_column!r}, the app "
                           f"config's label column is {cfg.label_column!r}")
    archive.add(rows, model.embeddings(rows))
    if recorded is not None:
        archive.record(rows, recorded, cfg.label_column)
    archive.save(args.index)
    print(f"archive {os.path.abspath(args.index)}: added {len(rows)} images, now {len(archive)}")
    _say_records(archive, len(rows), recorded)
    return 0


def query(args) -> int:
    import numpy as np
    from mami_jax.apps.history.pictures import query_figure
    from mami_jax.runtime.atomic_files import write_atomic

    cfg = app_config(args)
    k = int(args.k if args.k is not None else cfg.k)
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    archive = Archive.load(args.index)
    row = query_row(archive, args.image, args.modality, args.order)
    by_visit = scores_visits(archive.calibration)
    if args.with_images and not by_visit:
        raise ValueError(f"--with: {args.index} scores single images (it was indexed with "
                         f"visit_fusion=0 or without calibration); index it again to score "
                         f"visits")
    mates = visit_mates(archive, row, args.with_images or []) if by_visit else []
    if args.threshold is not None:
        threshold = float(args.threshold)
    elif row.modality in archive.calibration:
        threshold = archive.thresholds()[row.modality]
    else:
        raise ValueError(f"{args.index}: no calibrated threshold for {row.modality}; give "
                         f"--threshold")
    model = _model_for(archive, args, f"querying {args.index}")
    image = model.embedder.preprocess(row)
    emb = model.embedder.embed(image[None])
    if by_visit:
        vectors = np.concatenate([emb] + [model.embedder.embed(model.embedder.preprocess(m)[None])
                                          for m in mates])
        fusion = VisitFusion(archive, [row] + mates, vectors,
                             stats_from_calibration(archive.calibration),
                             shortlist=int(cfg.visit_shortlist))
        matches = fusion.retrieve([0], k, threshold)[0]
        visit = (f"; scored by visit with {', '.join(m.image_id for m in mates)}" if mates
                 else "; scored by visit, no other image of it")
    else:
        matches, visit = retrieve(archive, [row], emb, k, threshold)[0], ""
    print(f"query {row.image_id} ({row.modality}, order {row.order or 'newest'}){visit}; "
          f"accept above {threshold:.6f}")
    column = archive.record_column
    print(f"{'rank':>4}  {'score':>9}  {'decision':8}  image_id  (study, order)"
          + (f"  {column}" if column else ""))
    shown = []
    for rank, m in enumerate(matches, 1):
        r = archive.rows[m.position]
        decision = "accept" if m.accepted else "reject"
        record = f"  {archive.records.get(r.image_id, '-')}" if column else ""
        print(f"{rank:>4}  {m.score:9.6f}  {decision:8}  {r.image_id}  ({r.study_id}, {r.order})"
              f"{record}")
        caption = f"{r.image_id}\n{m.score:.6f} {decision}"
        if column:
            caption += f"\n{column}: {archive.records.get(r.image_id, '-')}"
        shown.append((model.embedder.preprocess(r), caption, m.accepted))
    if not matches:
        print("  (no earlier image in the archive)")
    png = args.png or os.path.join(os.getcwd(), f"query_{os.path.basename(row.path)}.png")
    write_atomic(png, lambda tmp: query_figure(np.asarray(image), row.image_id, shown, tmp))
    print(f"picture: {os.path.abspath(png)}")
    return 0


def _experiment(args):
    from mami_jax.apps.history.experiment import Experiment, read_row_labels
    _refuse_inputs_as_output(args.out, args)
    cfg = app_config(args)
    spec = _experiment_spec(args)
    rows = _rows(args, load_experiment(spec))
    y = read_row_labels(rows, args.labels or default_labels_path(args.manifest), cfg)
    model = TrainedModel(args.workdir, spec, role=args.model_flag)
    return Experiment(model, rows, y, cfg, os.path.abspath(args.out))


def train(args) -> int:
    exp = _experiment(args)
    payload = exp.train()
    exp.evaluate(payload, args.split)
    print(f"wrote {os.path.join(os.path.abspath(args.out), 'metrics.json')}")
    return 0


def eval(args) -> int:  # noqa: A001 (the command's name)
    from mami_jax.apps.history.experiment import CLASSIFIERS, read_classifiers_info
    from mami_jax.apps.history.training import load_classifiers
    out = os.path.abspath(args.out)
    payload = load_classifiers(os.path.join(out, CLASSIFIERS))
    info = read_classifiers_info(out)
    exp = _experiment(args)
    exp.check_classifiers(payload, info)
    exp.evaluate(payload, args.split)
    print(f"wrote {os.path.join(os.path.abspath(args.out), 'metrics.json')}")
    return 0


def _metrics_groups(path: str) -> tuple[str, dict]:
    import json
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        return m["split"], {**m["per_modality"], "overall": m["overall"]}
    except OSError as e:
        raise FileNotFoundError(f"--metrics {path}: cannot be read ({e.strerror})") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"--metrics {path}: not a metrics.json of `train`/`eval` ({e})") from e


def figure(args) -> int:
    """Several runs' metrics.json (e.g. classifier seeds) -> one AUC picture with their
    spread, and the mean table."""
    from mami_jax.apps.history.pictures import auc_bars
    from mami_jax.apps.history.scoring import CONDITIONS, mean_table
    from mami_jax.runtime.atomic_files import write_atomic
    loaded = [_metrics_groups(p) for p in args.metrics]
    splits = {split for split, _ in loaded}
    runs = [groups for _, groups in loaded]
    if len(splits) > 1:
        raise ValueError(f"--metrics: runs of different splits {sorted(splits)}")
    for path, groups in zip(args.metrics, runs):
        if list(groups) != list(runs[0]):
            raise ValueError(f"--metrics {path}: groups {list(groups)}, the first run has "
                             f"{list(runs[0])}")
        for g in groups.values():
            missing = [c for c in CONDITIONS if c not in g]
            if missing:
                raise ValueError(f"--metrics {path}: no {missing[0]}")
    write_atomic(args.out, lambda tmp: auc_bars(runs, tmp, splits.pop()))
    print(mean_table(runs), end="")
    print(f"picture: {os.path.abspath(args.out)}")
    return 0
