"""The command-line actions (``python -m mami_jax.apps.history``; arguments there).

Every action checks what it can cheaply before it loads a model or reads an image: the
settings (``settings.check_settings``), the manifest's rows and splits, the labels
table, the archive, the classifiers ``eval`` reuses, and where it will write. Where a
command may write (docs/history.md, "Where the commands write"):

- never over or into what it reads: an output equal to an input file, or inside an input
  folder (the model's run, the archive a query reads, a series folder) is refused, links
  resolved (``runtime.output_guard``);
- ``index --out`` and ``train --out`` are folders that are new, empty, or the command's own
  earlier output (an archive, holding archive.json; a train folder, holding features.npz),
  so a dataset's folder is never written into; such a folder may lie inside the
  manifest's folder, but not inside the model's run;
- ``query --png`` and ``figure --out`` are files, not folders; ``query``'s default picture,
  ``./query_<image id>.png``, never replaces an existing file (the next free
  ``query_<image id>-2.png``, ... is taken: ``query_output``).
"""

from __future__ import annotations

import math
import sys
import os

from mami_jax.apps.history.archive import ARCHIVE_JSON, Archive, ArchiveError, mean_directions
from mami_jax.apps.history.calibration import calibrate_archive
from mami_jax.apps.history.features import TrainedModel
from mami_jax.apps.history.history_select import NEW_IMAGE_DATASET, retrieve
from mami_jax.apps.history import query_output
from mami_jax.apps.history.query_rows import keyed_to, placed_by_mates, query_row, visit_mates
from mami_jax.apps.history.settings import check_settings
from mami_jax.apps.history.visit_fusion import (VisitFusion, fit_visit_retrieval, scores_visits,
                                                stats_from_calibration)
from mami_jax.config_files import load_config, resolve, split_spec
from mami_jax.data.image_signature import ImageFiles
from mami_jax.data.labels import default_labels_path, labels_for, read_labels
from mami_jax.data.manifest import ManifestRow, first_order_clash, order_clash
from mami_jax.data.missing_files import refuse_missing_files
from mami_jax.data.reading_settings import first_difference, reading_settings
from mami_jax.experiment_config import experiment_spec, load_experiment
from mami_jax.inference import names_a_path
from mami_jax.model_name import workdir_and_step
from mami_jax.runtime import folder_lock
from mami_jax.runtime.atomic_files import aside_path, finish_replacement
from mami_jax.runtime.output_guard import (check_output_folder, check_picture_file,
                                           check_parent_is_folder, refuse_inside_inputs,
                                           refuse_landing_on_images,
                                           refuse_overwriting_inputs, same_or_inside)

DEFAULT_APP_CONFIG = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "configs", "history.py"))


def app_config(args):
    """The app settings of ``--app-config`` (default configs/history.py), checked."""
    cfg = load_config(getattr(args, "app_config", None) or DEFAULT_APP_CONFIG, kind="history")
    check_settings(cfg)     # a copy of the file may not check what it sets
    return cfg


def _rows(args, config) -> tuple[list[ManifestRow], ImageFiles]:
    """The manifest's rows, with the run config's split rule when it has no splits, and
    only of the modalities the run was trained on (``data.only_modalities``; how many
    others were left out is said), and their files as asked once (``ImageFiles``: the
    missing check here, an embedding cache's key later). A manifest without rows (of
    those modalities), or a row whose image is missing, is an error naming it."""
    from mami_jax.data.loading import read_rows
    with config.unlocked():
        config.data.manifest = os.path.abspath(args.manifest)
    rows, left_out = read_rows(config, os.path.dirname(os.path.abspath(args.manifest)))
    if left_out:
        print(f"  {sum(left_out.values())} images of {'/'.join(sorted(left_out))} in "
              f"{args.manifest} left out: the run was trained on "
              f"{', '.join(config.data.only_modalities)} only (data.only_modalities)",
              flush=True)
    if not rows:
        others = " of the run's modalities" if left_out else ""
        raise ValueError(f"--manifest {args.manifest}: no images{others} to work on")
    reserved = next((r for r in rows if r.dataset == NEW_IMAGE_DATASET), None)
    if reserved is not None:
        raise ValueError(f"--manifest {args.manifest}: image {reserved.image_id} is of dataset "
                         f"{NEW_IMAGE_DATASET!r}, the name queries give images not in the "
                         "archive; name the dataset otherwise")
    files = ImageFiles(rows)
    refuse_missing_files(rows, files=files)     # before a model loads and any output is begun
    return rows, files


# -- where the commands write ------------------------------------------------------------
def _file_of(spec: str | None) -> str | None:
    """The file of a config spec ``FILE[:ARG]``, as ``load_config`` finds it (FILE may
    hold ':' of its own: a run folder ``run_12:00``)."""
    return resolve(split_spec(spec)[0]) if spec else None


def _model_path(name: str | None) -> str | None:
    """What a model flag names on disk: the file or folder, or the workdir of
    ``WORKDIR@STEP``."""
    if not name:
        return None
    return workdir_and_step(name)[0] or None


def _inputs(args, labels: str | None = None) -> dict[str, str | None]:
    """The files and folders a model command reads (flag -> path)."""
    return {getattr(args, "model_flag", "--workdir"): _model_path(getattr(args, "workdir", None)),
            "--manifest": getattr(args, "manifest", None),
            "--labels": labels if labels is not None else getattr(args, "labels", None),
            "--config": _file_of(getattr(args, "config", None)),
            "--app-config": _file_of(getattr(args, "app_config", None) or DEFAULT_APP_CONFIG)}


def _check_out_folder(args, marker: str | None, outputs, labels: str | None = None) -> None:
    """``--out``: not inside the model's run (nor any other input), not where no folder
    can be, new, empty or this command's own (holding ``marker``; None: any, for
    ``eval``, which writes into ``train``'s folder), and none of the files ``outputs``
    (names in it) an input."""
    out = args.out
    refuse_inside_inputs(out, "--out", _inputs(args, labels))
    check_parent_is_folder(out, "--out")
    if marker is not None:
        check_output_folder(out, "--out", marker)
    read = [p for p in _inputs(args, labels).values() if p and os.path.isfile(p)]
    refuse_overwriting_inputs([os.path.join(out, name) for name in outputs], read, "--out")


def _recorded(rows, args, cfg) -> list[str] | None:
    """The diagnoses (``cfg.label_column`` of ``--labels``) of ``rows``, None without
    ``--labels``; an unknown value or an unlabelled row is an error naming it."""
    if not getattr(args, "labels", None):
        return None
    classes = [str(c) for c in cfg.classes]
    table = read_labels(args.labels, cfg.label_column, classes)
    return [classes[i] for i in labels_for(rows, table, args.labels)]


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
    cfg = app_config(args)
    spec = _experiment_spec(args)
    out = os.path.abspath(args.out)
    # the archive replaces the whole folder: nothing it reads may lie in it
    for flag, path in _inputs(args).items():
        if path and same_or_inside(path, out):
            raise ValueError(f"--out {args.out}: holds {flag} {path}; the archive replaces the "
                             f"whole folder, and outputs never go into the inputs")
    _check_out_folder(args, ARCHIVE_JSON, ())
    rows, files = _rows(args, load_experiment(spec))   # bad input first, before the model loads
    if os.path.isdir(out):
        inside = next((r for r in rows if same_or_inside(r.path, out)), None)
        if inside is not None:
            raise ValueError(f"--out {args.out}: holds the image {inside.path} of "
                             f"{inside.image_id}; the archive replaces the whole folder")
    recorded = _recorded(rows, args, cfg)
    model = TrainedModel(args.workdir, spec, role=args.model_flag)
    store = model.chunk_store(out, files.signature(rows), "embeddings")
    emb = model.embeddings(rows, store=store)
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
    store.discard()
    print(f"archive {out}: {len(archive)} images "
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


def _model_source(archive: Archive, args, where: str) -> tuple[str, str, str]:
    """(model, experiment config spec, how it was named) for an archive's command: the
    ``--workdir`` given (its identity is still checked against the archive's), else the
    model the archive records, when it is still there."""
    if not archive.model.get("fingerprint"):
        raise ArchiveError(f"{where}: {ARCHIVE_JSON} records no model fingerprint, so no model "
                           f"can be checked against the archive's embeddings; build the "
                           f"archive again with `index`")
    given = getattr(args, "workdir", None)
    if given:
        return given, _experiment_spec(args), args.model_flag
    workdir = archive.model.get("workdir")
    spec = getattr(args, "config", None) or archive.model.get("config")
    if not workdir or not spec:
        raise ArchiveError(f"{where}: the archive does not record where its model is; give "
                           f"--workdir (and --config FILE[:ARG] for a run without its "
                           f"config.json)")
    if not names_a_path(str(workdir)):
        raise ArchiveError(f"{where}: the archive's model {workdir} is not there any more; give "
                           f"--workdir where it is now (its parameters are checked against the "
                           f"archive's)")
    if not getattr(args, "config", None) and not os.path.exists(_file_of(str(spec))):
        raise ArchiveError(f"{where}: the config the archive's model was read with, {spec}, is "
                           f"not there any more; give --config FILE[:ARG] (or --workdir)")
    return str(workdir), str(spec), "the archive's recorded model"


def _load_model(archive: Archive, source: tuple[str, str, str], where: str,
                index: str) -> TrainedModel:
    """The model of ``_model_source``, refused unless its parameters are the archive's and
    it reads images as the archive's were read; an archive that cannot say how they were
    read (``_check_reading``) is said here, once every cheap check has passed."""
    workdir, spec, role = source
    if not archive.records_reading:
        print(f"warning: {index} records no image-reading settings (it was built before "
              f"archives recorded them), so whether {spec} reads images as its images were "
              "read cannot be checked; index it again to record them", file=sys.stderr,
              flush=True)
    model = TrainedModel(workdir, spec, role=role)
    archive.check_model(model.info, where)
    return model


def _check_reading(archive: Archive, spec: str, where: str) -> None:
    """Refuses, before the model loads, the experiment config ``spec`` when it reads images
    otherwise than the archive's were read (``Archive.check_reading``: a ``--config`` that
    differs in ``resize_size`` alone gave other embeddings, and another patient's images
    were accepted as the query's history). An archive written before archives recorded
    their reading cannot be checked: it is used, as before, with a warning
    (``_load_model``); refusing it would leave every such archive unusable until embedded
    again, while its commands read by default with the config it records, as it was
    built."""
    if archive.records_reading:
        archive.check_reading(reading_settings(load_experiment(spec).data), where, spec)


def add(args) -> int:
    """Adds a manifest's images to the archive ``--index``, one ``add`` at a time: two
    at once each saved the archive they had read plus their own rows, and the last save
    lost the other's rows without a word. The lock is on the archive's parent folder, since
    a save replaces the archive folder whole. An archive that a save killed between its two
    renames left aside (``.NAME.mami-replaced``, nothing at ``--index``) is put back first,
    under the lock, as ``index``'s save does, and said: the lock keeps it from being taken
    from under an ``add`` that is between those renames now."""
    aside = aside_path(args.index)
    if not (os.path.isdir(args.index) or os.path.isdir(aside)):
        return _add(args)               # Archive.load says what is missing
    parent = os.path.dirname(os.path.abspath(args.index))
    with folder_lock.held(parent, f"--index {args.index}", "history add (or a command "
                          "adding to an archive in the same folder)", in_file=False):
        if finish_replacement(args.index):
            print(f"  {args.index}: put back the archive that a save stopped half-way had "
                  f"left aside in {aside}", flush=True)
        return _add(args)


def _already_archived(archive: Archive, rows, args) -> None:
    """Refuses rows whose image file (links resolved) is archived already, or listed twice
    in the manifest, naming the first: a re-export of archived images under new ids
    archived them again, and each doubled image took two of its patient's k places. An
    image is its file: the metadata (dataset, patient, study, modality, order) is no key,
    since several images of one study legitimately share it (views of an X-ray study,
    the tiles of a slide, the series of a CT study)."""
    held = {os.path.realpath(r.path): r.image_id for r in archive.rows}
    listed: dict[str, str] = {}
    doubled = []
    for r in rows:
        real = os.path.realpath(r.path)
        if real in held or real in listed:
            doubled.append((r, real))
        listed.setdefault(real, r.image_id)
    if doubled:
        r, real = doubled[0]
        first = (f"archived as {held[real]} in {args.index}" if real in held
                 else f"image {listed[real]} of the manifest too")
        raise ArchiveError(f"{args.manifest}: image {r.image_id}: its file {r.path} is "
                           f"{first} ({len(doubled)} such image(s)); an image archived twice "
                           "takes two of its patient's places among the k candidates: leave "
                           "them out")


def _add(args) -> int:
    archive = Archive.load(args.index)
    cfg = app_config(args)
    for flag in ("--manifest", "--labels"):
        path = getattr(args, flag[2:])
        if path and same_or_inside(path, args.index):
            raise ValueError(f"{flag} {path}: lies inside --index {args.index}, which add "
                             f"rewrites; give a copy outside it")
    where = f"adding {args.manifest} to {args.index}"
    source = _model_source(archive, args, where)
    _check_reading(archive, source[1], where)
    rows, files = _rows(args, load_experiment(source[1]))   # the run's modalities, as index reads
    known = {r.image_id for r in archive.rows}
    dup = [r.image_id for r in rows if r.image_id in known]
    if dup:  # before the (long) embedding
        raise ArchiveError(f"{args.manifest}: {len(dup)} image(s) already in {args.index}, "
                           f"e.g. {dup[:5]}")
    _already_archived(archive, rows, args)
    uncentred = next((r for r in rows if archive.centred and r.modality not in archive.centers),
                     None)
    if uncentred is not None:   # else found by Archive.add, after every image was embedded
        raise ArchiveError(f"{args.manifest}: image {uncentred.image_id} is "
                           f"{uncentred.modality}, for which {args.index} holds no centre (it "
                           f"was indexed without {uncentred.modality} images; centres for "
                           f"{', '.join(sorted(archive.centers))}): index the archive again "
                           f"over its images and these")
    together = archive.rows + rows
    clash = first_order_clash(together, start=len(archive.rows))
    if clash is not None:   # a patient's history would sort numbers before dates
        i, j = clash
        new, held = together[i], together[j]
        place = f"archive {args.index}" if j < len(archive.rows) else args.manifest
        raise ArchiveError(f"{args.manifest}: image {new.image_id}: "
                           + order_clash(new, held, f"image {held.image_id} of {place}"))
    recorded = _recorded(rows, args, cfg)
    if recorded is not None and archive.record_column not in (None, cfg.label_column):
        raise ArchiveError(f"--labels: the archive records {archive.record_column!r}, the app "
                           f"config's label column is {cfg.label_column!r}")
    model = _load_model(archive, source, where, args.index)
    store = model.chunk_store(args.index, files.signature(rows), "embeddings")
    archive.add(rows, model.embeddings(rows, store=store))
    if recorded is not None:
        archive.record(rows, recorded, cfg.label_column)
    archive.save(args.index)
    store.discard()
    print(f"archive {os.path.abspath(args.index)}: added {len(rows)} images, now {len(archive)}")
    _say_records(archive, len(rows), recorded)
    if archive.calibration:
        print(f"warning: the thresholds (and visit scores' impostor statistics) stay those index "
              f"calibrated on {len(archive) - len(rows)} images; with {len(rows)} more "
              "impostors and their densities the false-accept rate at them may differ: build "
              "the archive again with index over every image to calibrate it anew",
              file=sys.stderr, flush=True)
    return 0


def query(args) -> int:
    import numpy as np
    from mami_jax.apps.history.pictures import query_figure
    from mami_jax.runtime.atomic_files import write_atomic

    cfg = app_config(args)
    k = int(args.k if args.k is not None else cfg.k)
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise ValueError(f"--threshold {args.threshold}: must be a finite number")
    archive = Archive.load(args.index)
    row = query_row(archive, args.image, args.modality, args.order)
    named = row             # the picture's name: as given, before --with places a new one
    by_visit = scores_visits(archive.calibration)
    if args.with_images and not by_visit:
        raise ValueError(f"--with: {args.index} scores single images (it was indexed with "
                         f"visit_fusion=0 or without calibration); index it again to score "
                         f"visits")
    mates = visit_mates(archive, row, args.with_images or []) if by_visit else []
    row = placed_by_mates(row, mates)
    mates = keyed_to(row, mates)
    if args.threshold is not None:
        threshold = float(args.threshold)
    elif row.modality in archive.calibration:
        threshold = archive.thresholds()[row.modality]
    else:
        raise ValueError(f"{args.index}: no calibrated threshold for {row.modality}; give "
                         f"--threshold")
    where = f"querying {args.index}"
    source = _model_source(archive, args, where)
    _check_reading(archive, source[1], where)
    if args.png:
        png, flag = args.png, "--png"
    else:   # named by the image, never over an existing file (query_output)
        png = query_output.free_picture(query_output.default_picture(named, os.getcwd()))
        flag = (f"the picture (default ./{os.path.basename(png)}; --png names another)")
    refuse_inside_inputs(png, flag, {
        "--index": args.index, "--image": args.image,
        **{f"--with {spec}": spec.partition("=")[2] if "=" in spec else spec
           for spec in args.with_images or []},
        **{k: v for k, v in _inputs(args).items() if k in ("--config", "--app-config")},
        source[2]: _model_path(source[0])})
    refuse_landing_on_images(png, flag, ((r.image_id, r.path) for r in archive.rows),
                             f"the archive {args.index}")
    check_picture_file(png, flag)
    model = _load_model(archive, source, where, args.index)
    image = model.embedder.preprocess(row)
    # embedded as the archive's images were (``embed_rows``: symmetry-averaged where the
    # modality's eval_symmetry says so), or an archived image would not find itself
    vectors = model.embeddings([row] + (mates if by_visit else []), progress=False)
    emb = vectors[:1]
    if by_visit:
        fusion = VisitFusion(archive, [row] + mates, vectors,
                             stats_from_calibration(archive.calibration),
                             shortlist=int(cfg.visit_shortlist))
        matches = fusion.retrieve([0], k, threshold, progress=False)[0]
        visit = (f"; scored by visit with {', '.join(m.image_id for m in mates)}" if mates
                 else "; scored by visit, no other image of it")
    else:
        matches, visit = retrieve(archive, [row], emb, k, threshold, progress=False)[0], ""
    print(query_output.header(row, visit, threshold))
    column, records = archive.record_column, archive.records
    found = [(archive.rows[m.position], m.score, m.accepted) for m in matches]
    # the whole table first: ranks and scores come from the index alone
    print("\n".join(query_output.table(found, column, records)))
    if not matches:
        print("  (no earlier image in the archive)")
    shown, unshown = _candidate_panels(model, found, column, records)
    if unshown:
        print(f"warning: the image files of {len(unshown)} of the {len(found)} candidates "
              f"are missing or unreadable, so the picture shows their captions without "
              f"them (their ranks and scores come from the archive's index): "
              f"{'; '.join(unshown)}", file=sys.stderr, flush=True)

    def draw(tmp):
        query_figure(np.asarray(image), query_output.query_caption(row), shown, tmp)
    png = (write_atomic(png, draw) if args.png
           else query_output.write_new_picture(png, draw, write_atomic))
    print(f"picture: {os.path.abspath(png)}")
    return 0


def _candidate_panels(model, found, column, records) -> tuple[list, list[str]]:
    """(the picture's panels: (image or None, caption, accepted) per candidate, what
    could not be shown: ``PATH (IMAGE_ID): why`` each). A candidate whose file is gone
    (moved, deleted by a retention rule) or cannot be read is a panel without its image,
    captioned so: retrieval needs only the index, and one such file ended the whole
    query half-way through its table, with no picture."""
    from mami_jax.data.decode_errors import DecodeError
    from mami_jax.data.example_reader import DataError
    from mami_jax.data.missing_files import missing_rows
    gone = {r.image_id for r in missing_rows([r for r, _, _ in found])}
    shown, unshown = [], []
    for r, score, accepted in found:
        image, trouble, why = None, "file missing", "no such file or folder"
        if r.image_id not in gone:
            try:
                image = model.embedder.preprocess(r)
            except FileNotFoundError:       # gone since it was looked for
                pass
            except (OSError, DataError, DecodeError) as e:
                trouble, why = "file unreadable", str(e) or type(e).__name__
        if image is None:
            unshown.append(f"{r.path} ({r.image_id}): {why}")
        shown.append((image, query_output.caption(r, score, accepted, column, records,
                                                  None if image is not None else trouble),
                      accepted))
    return shown, unshown


def _experiment(args, training: bool):
    """(the experiment of ``train``/``eval``, the evaluation split, and for ``eval`` the
    classifiers with their record), every cheap check made before the model loads."""
    from mami_jax.apps.history.experiment import (CACHE_FILES, REPORT_FILES, TRAIN_FILES,
                                                  Experiment, FEATURES_CACHE, check_splits,
                                                  check_trained_modalities,
                                                  check_training_classes, read_row_labels)
    from mami_jax.apps.history.trained_classifiers import (CLASSIFIERS,
                                                           check_classifier_settings,
                                                           load_trained,
                                                           refuse_trained_patients)
    cfg = app_config(args)
    spec = _experiment_spec(args)
    labels = args.labels or default_labels_path(args.manifest)
    out = os.path.abspath(args.out)
    if training:
        _check_out_folder(args, FEATURES_CACHE, TRAIN_FILES + CACHE_FILES, labels)
        trained = None
    else:
        _check_out_folder(args, None, REPORT_FILES + CACHE_FILES, labels)
        trained = load_trained(out)
        check_classifier_settings(*trained, cfg, os.path.join(out, CLASSIFIERS))
    rows, files = _rows(args, load_experiment(spec))
    split = check_splits(rows, cfg, args.split, args.manifest, training)
    if trained is not None:
        check_trained_modalities(rows, trained[0]["norm"]["features"],
                                 os.path.join(out, CLASSIFIERS), args.manifest)
        refuse_trained_patients(trained[1], rows, split)
    y = read_row_labels(rows, labels, cfg)
    if training:
        check_training_classes(rows, y, cfg, labels, args.manifest)
    model = TrainedModel(args.workdir, spec, role=args.model_flag)
    if trained is not None:
        recorded = ((trained[1] or {}).get("model") or {})
        if isinstance(recorded, dict) and recorded.get("reid_fingerprint") not in (
                None, model.fingerprint):
            raise ValueError(f"the classifiers were trained on the features of another model "
                             f"(parameters {str(recorded['reid_fingerprint'])[:12]}) than "
                             f"{args.model_flag} {args.workdir} (parameters "
                             f"{model.fingerprint[:12]}): train again or use the same "
                             f"{args.model_flag}")
        held = recorded.get("reading") if isinstance(recorded, dict) else None
        key = first_difference(held, model.reading_settings) if isinstance(held, dict) else None
        if key is not None:     # the same parameters reading images otherwise: other features
            given = model.reading_settings.get(key, "no such setting")
            raise ValueError(f"the classifiers were trained on features of images read with "
                             f"data.{key}={held[key]!r}, the config {spec} reads them with "
                             f"{given!r}: train again or use the config they were trained "
                             "with")
    reader = (((trained[1] or {}).get("model") or {}).get("fingerprint")
              if trained is not None and str(cfg.features) == "reader" else None)
    return (Experiment(model, rows, y, cfg, out, image_files=files,
                       trained_reader=reader if isinstance(reader, str) else None),
            split, trained)


def train(args) -> int:
    exp, split, _ = _experiment(args, training=True)
    payload = exp.train()
    exp.publish(exp.evaluate(payload, split), payload)
    print(f"wrote {os.path.join(exp.out_dir, 'metrics.json')}")
    return 0


def eval(args) -> int:  # noqa: A001 (the command's name)
    exp, split, (payload, info) = _experiment(args, training=False)
    exp.check_classifiers(payload, info)
    exp.publish(exp.evaluate(payload, split))
    print(f"wrote {os.path.join(exp.out_dir, 'metrics.json')}")
    return 0


def _is_number(value, none: bool = True) -> bool:
    return (value is None and none) or (isinstance(value, (int, float))
                                        and not isinstance(value, bool) and math.isfinite(value))


def _check_group(path: str, name: str, group) -> None:
    """ValueError naming ``path`` and the key of ``group`` (one group of a metrics.json)
    whose value the mean table and the picture cannot read."""
    from mami_jax.apps.history.scoring import CONDITIONS
    where = f"--metrics {path}: {name}"
    if not isinstance(group, dict):
        raise ValueError(f"{where} is {group!r}, not an object")
    for key in CONDITIONS + ("false_history_rate", "queries"):
        if key not in group:
            raise ValueError(f"--metrics {path}: no {key} in {name}")
    for c in CONDITIONS:
        if not isinstance(group[c], dict) or "auc" not in group[c]:
            raise ValueError(f"{where}.{c} is {group[c]!r}, not an object with an auc")
        if not _is_number(group[c]["auc"]):
            raise ValueError(f"{where}.{c}.auc is {group[c]['auc']!r}, not a number or null")
    if not _is_number(group["false_history_rate"]):
        raise ValueError(f"{where}.false_history_rate is {group.get('false_history_rate')!r}, "
                         f"not a number or null")
    if not isinstance(group.get("queries"), int) or isinstance(group.get("queries"), bool):
        raise ValueError(f"{where}.queries is {group.get('queries')!r}, not a whole number")
    gains = group.get("gain") or {}
    if not isinstance(gains, dict):
        raise ValueError(f"{where}.gain is {gains!r}, not an object")
    for c, g in gains.items():
        if g is None:
            continue
        ci = g.get("ci95") if isinstance(g, dict) else None
        if not (isinstance(g, dict) and _is_number(g.get("auc_gain"), none=False)
                and isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci)):
            raise ValueError(f"{where}.gain.{c} is {g!r}, not an AUC gain with its 95 % "
                             f"interval")


def _metrics_groups(path: str) -> tuple[str, dict]:
    """(split, {group: metrics}, setup) of a metrics.json of ``train``/``eval``: the setup
    is what the runs pooled into one spread must share (``SAME_SETUP``, and the retrieval
    settings, None in a report written before they were recorded); an unreadable file,
    another JSON or a value the table cannot read is an error naming the file and the
    key."""
    import json
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        split, groups = m["split"], {**m["per_modality"], "overall": m["overall"]}
        retrieval = m.get("retrieval")
        setup = {key: m.get(key) for key in SAME_SETUP}
        setup["calibration"] = {g: c.get("method") if isinstance(c, dict) else c
                                for g, c in (m.get("calibration") or {}).items()}
    except OSError as e:
        raise FileNotFoundError(f"--metrics {path}: cannot be read ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"--metrics {path}: not a metrics.json of `train`/`eval` ({e})") from e
    if not isinstance(split, str):
        raise ValueError(f"--metrics {path}: split is {split!r}, not a name")
    for name, group in groups.items():
        _check_group(path, name if name == "overall" else f"per_modality.{name}", group)
    if retrieval is not None and not isinstance(retrieval, dict):
        raise ValueError(f"--metrics {path}: retrieval is {retrieval!r}, not the settings")
    setup.update({f"retrieval.{k}": v for k, v in (retrieval or {}).items()})
    return split, groups, setup


#: What every metrics.json records of the experiment besides the retrieval settings: runs
#: of another label, classes, features, diagnosis model, k or false-accept target are
#: other experiments, not seeds of one.
SAME_SETUP = ("label_column", "classes", "features", "diagnosis_model", "k", "target_far")


def _same_setup(paths: list[str], setups: list[dict]) -> None:
    """Runs pooled into one mean and spread must differ only by seed: a run of another
    label, features, calibration method or retrieval setting (``hubness_k``,
    ``visit_fusion``, ...) is an error naming it. The retrieval settings of a report
    written before they were recorded are not compared."""
    def part(setup: dict, retrieval: bool) -> dict:
        return {k: v for k, v in setup.items() if k.startswith("retrieval.") == retrieval}
    for retrieval in (False, True):
        parts = [(p, part(s, retrieval)) for p, s in zip(paths, setups)]
        known = [(p, s) for p, s in parts if s or not retrieval]
        for path, mine in known[1:]:
            first_path, first = known[0]
            for key in sorted(set(first) | set(mine)):
                if first.get(key) != mine.get(key):
                    raise ValueError(f"--metrics {path}: {key} is {mine.get(key)!r}, "
                                     f"{first_path} has {first.get(key)!r}; the runs pooled "
                                     "into one spread must differ only by seed")


def figure(args) -> int:
    """Several runs' metrics.json (e.g. classifier seeds) -> one AUC picture with their
    spread, and the mean table."""
    from mami_jax.apps.history.pictures import auc_bars
    from mami_jax.apps.history.scoring import mean_table
    from mami_jax.runtime.atomic_files import write_atomic
    refuse_overwriting_inputs([args.out], args.metrics, "--out")
    check_picture_file(args.out, "--out")
    seen: dict[str, str] = {}
    for path in args.metrics:       # one run given twice counted twice in the mean and spread
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"--metrics {path}: given twice (as {seen[real]}); each run "
                             "counts once")
        seen[real] = path
    loaded = [_metrics_groups(p) for p in args.metrics]
    splits = {split for split, _, _ in loaded}
    runs = [groups for _, groups, _ in loaded]
    if len(splits) > 1:
        raise ValueError(f"--metrics: runs of different splits {sorted(splits)}")
    _same_setup(args.metrics, [setup for _, _, setup in loaded])
    for path, groups in zip(args.metrics, runs):
        if list(groups) != list(runs[0]):
            raise ValueError(f"--metrics {path}: groups {list(groups)}, the first run has "
                             f"{list(runs[0])}")
    write_atomic(args.out, lambda tmp: auc_bars(runs, tmp, splits.pop()))
    print(mean_table(runs), end="")
    print(f"picture: {os.path.abspath(args.out)}")
    return 0
