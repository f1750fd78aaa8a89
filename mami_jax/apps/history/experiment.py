"""``train`` and ``eval``: the diagnosis experiment on a manifest with a labels table.

1. Every image's embedding and backbone feature (``features.TrainedModel``), and its
   token map of ``map_layer`` when the history model compares maps (``classifier.map_dim``
   > 0), cached in OUT/features.npz (reused only for the same model fingerprint, image
   ids and map settings).
2. An in-memory archive of every image of the manifest (all splits: the other patients
   are the impostors a real archive holds), centred on its mean embedding (``center``).
3. Per-modality thresholds calibrated on ``calibration_split`` (the validation patients)
   for ``target_far`` (``calibration``: their pairs, or their top-k archive candidates);
   each image's ``k`` best earlier candidates,
   accepted above the threshold (``history_select.retrieve``) = its retrieved history;
   the patient's own earlier images = its true history.
4. ``train``: the current-only classifier, then the history model (current branch
   frozen) on ``train_split`` with ``train_history``: ``"both"`` (the default) each
   training image once with its retrieved history and once with its true one (the
   training patients' own earlier images, whose links a hospital knows for the images
   it trains on), ``"retrieved"`` or ``"true"`` one of them; with
   ``classifier.records`` the history tokens also carry the labels table's diagnoses of
   the history images (an archive's prior reports): OUT/classifiers.msgpack and what
   they were trained on, OUT/classifiers.json.
5. Evaluation on ``eval_split``, per modality and overall: current-only, the history
   model with the retrieved and with the true history, and the false-history rate;
   OUT/metrics.json, OUT/metrics.md and OUT/auc.png.

The results of one run (the classifiers of ``train`` and the report of either command)
are written to a staging folder and moved into OUT together (``publish``), metrics.json
last: a run that fails leaves OUT's earlier results as they were, never new classifiers
beside an old metrics.json. The caches (features.npz, the reader's and a teacher's) are
written as soon as they are computed: they are keyed by what they were computed from.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import numpy as np

from mami_jax.apps.history import diagnosis_reader, scoring, training
from mami_jax.apps.history.archive import Archive, mean_directions
from mami_jax.apps.history.calibration import calibrate_archive
from mami_jax.apps.history.diagnosis_backbone import (DiagnosisBackbone,
                                                      cached_backbone_features, teacher_name)
from mami_jax.apps.history.features import diagnosis_features
from mami_jax.apps.history.history_select import retrieve, true_history
from mami_jax.apps.history.npz_files import read_cache
from mami_jax.apps.history.trained_classifiers import (CLASSIFIERS, CLASSIFIERS_INFO,
                                                       check_classifier_settings, maps_key,
                                                       score_kind)
from mami_jax.apps.history.settings import check_settings
from mami_jax.apps.history.visit_fusion import fit_visit_retrieval
from mami_jax.data.image_signature import rows_signature
from mami_jax.data.labels import labels_for, read_labels
from mami_jax.runtime import strict_json
from mami_jax.runtime.atomic_files import (finish_tree, staging_dir, write_atomic,
                                           write_text_atomic)

FEATURES_CACHE = "features.npz"
METRICS = "metrics.json"
#: What ``train`` writes in OUT (``eval``: the report only), checked against the inputs
#: before any work: results, then caches.
REPORT_FILES = (METRICS, "metrics.md", "auc.png")
TRAIN_FILES = (CLASSIFIERS, CLASSIFIERS_INFO) + REPORT_FILES
CACHE_FILES = (FEATURES_CACHE, diagnosis_reader.LOGITS, diagnosis_reader.PARAMS)


def _same_model(recorded, mine) -> bool:
    """Whether the model a classifiers.json records gave this run's features: equal, or
    for a record written before the re-ID features' ``reading`` was kept, equal but for
    it (``commands._experiment`` checks the reading itself, before any features)."""
    if isinstance(recorded, dict) and isinstance(mine, dict) and "reading" not in recorded:
        mine = {k: v for k, v in mine.items() if k != "reading"}
    return recorded == mine


def check_splits(rows, cfg, split: str | None, manifest: str, training: bool) -> str:
    """The evaluation split (``--split``, else the config's ``eval_split``), after checking
    that the manifest's ``rows`` hold it (and the training split when ``training``), and
    images of each modality in the calibration split (and, when ``training``, in the
    training split: ``check_training_modalities``): cheap, so a name typed wrongly, or a
    modality a split lacks, stops before the features are computed. ``train`` evaluating
    its own training split is refused, as ``eval`` refuses the patients trained on (it
    reported AUC 0.979 on them). Returns the evaluation split."""
    have = sorted({r.split for r in rows})
    named = [(split, "--split")] if split else [(str(cfg.eval_split), "eval_split")]
    if training:
        named.append((str(cfg.train_split), "train_split"))
        if named[0][0] == str(cfg.train_split):
            raise ValueError(f"{named[0][1]} {named[0][0]!r} is train_split: the classifiers "
                             "are trained on its patients, so its scores would be of the "
                             "images they learnt; evaluate another split")
    for name, what in named:
        if name not in have:
            raise ValueError(f"{what} {name!r}: {manifest} has no images in it (its splits: "
                             f"{', '.join(repr(h) for h in have)})")
    if training:
        check_training_modalities(rows, str(cfg.train_split), manifest)
    calibration = str(cfg.calibration_split)
    missing = sorted({r.modality for r in rows}
                     - {r.modality for r in rows if r.split == calibration})
    if missing:
        raise ValueError(f"calibration_split {calibration!r}: {manifest} has no {'/'.join(missing)} "
                         f"images in it to calibrate the thresholds on")
    return named[0][0]


def check_training_modalities(rows, train_split: str, manifest: str) -> None:
    """Refuses a manifest with a modality that has no image in ``train_split``: the
    classifiers read each image's features standardised by its modality's training
    images (``training.standardizer``), so that modality's images could not be read at
    all. It was refused only after every image was embedded, calibrated and retrieved."""
    missing = sorted({r.modality for r in rows}
                     - {r.modality for r in rows if r.split == train_split})
    if missing:
        raise ValueError(f"train_split {train_split!r}: {manifest} has no {'/'.join(missing)} "
                         f"images in it, so the classifiers could not read the features of "
                         f"such images (each modality is standardised by its own training "
                         f"images); add training patients of that modality or leave its "
                         f"images out of the manifest")


def check_trained_modalities(rows, norm: dict, classifiers: str, manifest: str) -> None:
    """Refuses, for ``eval``, a manifest with a modality the classifiers were not trained
    on (``norm``: their per-modality feature statistics, ``trained_classifiers``): its
    features could not be read, an error that came only after every image was
    embedded."""
    missing = sorted({r.modality for r in rows} - set(norm))
    if missing:
        raise ValueError(f"{manifest}: has {'/'.join(missing)} images, and the classifiers "
                         f"{classifiers} were trained on {', '.join(sorted(norm))} images "
                         f"only, so they could not read their features; train them on a "
                         f"manifest with training images of that modality, or leave its "
                         f"images out")


def check_training_classes(rows, y, cfg, labels_path: str, manifest: str) -> None:
    """Refuses a training split whose images all carry one label: the classifiers would
    learn a constant and the report's AUCs would all be undefined ("-"), after minutes of
    features and training, without saying why."""
    train = str(cfg.train_split)
    present = sorted({int(c) for r, c in zip(rows, y) if r.split == train})
    if len(present) == 1:
        raise ValueError(
            f"labels table {labels_path}: every image of train_split {train!r} in {manifest} "
            f"has {cfg.label_column}={str(cfg.classes[present[0]])!r}; a classifier cannot "
            f"learn from one class (classes: {', '.join(str(c) for c in cfg.classes)})")


def publish(out_dir: str, writers: dict[str, Callable[[str], None]],
            last: str = METRICS) -> None:
    """Writes each file of ``writers`` (name -> ``write(path)``) into a staging folder in
    ``out_dir``, then moves them into place together: ``last`` is removed first and moved
    in last, so a folder holding ``last`` holds one run's files, and a failure while
    writing leaves the folder as it was."""
    with staging_dir(os.path.join(out_dir, "results")) as tmp:
        for name, write in writers.items():
            write(os.path.join(tmp, name))
        finish_tree(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out_dir, last))
        for name in sorted(writers, key=lambda n: n == last):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    os.rmdir(tmp)


def cached_features(model, rows, out_dir: str, cfg, files: str | None = None):
    """(embeddings, backbone features, token maps or None) of ``rows``, from
    OUT/features.npz when it is this model's, read as it reads them (``model.reading``:
    another ``--config`` reads other sizes or slices with the same parameters), for these
    images (ids and files: ``files``, their ``rows_signature`` where the caller has it
    already) and holds the maps needed
    (maps of another layer or grid are computed again, and so is a cache that cannot be
    read, said in one line)."""
    path = os.path.join(out_dir, FEATURES_CACHE)
    ids = np.asarray([r.image_id for r in rows])
    files = rows_signature(rows) if files is None else files
    key = maps_key(cfg)

    def use(f):
        cached_maps = str(f["maps_key"]) if "maps_key" in f.files else ""
        if (str(f["fingerprint"]) == model.fingerprint and "reading" in f.files
                and str(f["reading"]) == model.reading and np.array_equal(f["image_id"], ids)
                and "files" in f.files and str(f["files"]) == files
                and key in ("", cached_maps)):
            return f["embedding"], f["backbone"], (f["maps"] if key else None)
        return None

    cached = read_cache(path, use)
    if cached is not None:
        return cached
    store = model.chunk_store(out_dir, files, f"features {key}")
    if key:
        emb, backbone, maps = model.features_and_maps(rows, cfg.map_layer, int(cfg.map_grid),
                                                      store=store)
    else:
        (emb, backbone), maps = (model.features(rows, store=store),
                                 np.zeros((len(rows), 0, 0), np.float32))
    write_atomic(path, lambda tmp: np.savez(tmp, embedding=emb, backbone=backbone, image_id=ids,
                                            fingerprint=np.asarray(model.fingerprint),
                                            reading=np.asarray(model.reading),
                                            files=np.asarray(files),
                                            maps=maps, maps_key=np.asarray(key)))
    store.discard()
    return emb, backbone, (maps if key else None)


def read_row_labels(rows, labels_path: str, cfg) -> list[int]:
    """Each row's class index from the labels table (errors name the row or image)."""
    return labels_for(rows, read_labels(labels_path, cfg.label_column,
                                        [str(c) for c in cfg.classes]), labels_path)


class Experiment:
    """The features, thresholds and histories of every image of a manifest."""

    def __init__(self, model, rows, y, cfg, out_dir: str, log=print, diagnosis_backbone=None,
                 image_files=None, trained_reader: str | None = None):
        """``y``: each row's class index (``read_row_labels``). ``diagnosis_backbone``:
        the model of ``features = "teacher:NAME"`` (built from the config when None).
        ``image_files``: the rows' ``ImageFiles`` where the caller asked them already.
        ``trained_reader``: the reader fingerprint the classifiers being evaluated were
        trained on (``features = "reader"``): another is refused before any reader is
        trained or written.
        The rows' files are asked about once (on a bucket, a request per file) and key
        every cache of their features: the re-ID model's, the diagnosis reader's, a
        teacher's."""
        check_settings(cfg)          # before the features: a bad setting costs nothing
        self.rows, self.cfg, self.out_dir = rows, cfg, out_dir
        self.files = (image_files.signature(rows) if image_files is not None
                      else rows_signature(rows))
        self.classes = [str(c) for c in cfg.classes]
        self.y = np.asarray(y)
        log(f"features of {len(rows)} images ({model.info['source']})")
        emb, backbone, self.maps_raw = cached_features(model, rows, out_dir, cfg, self.files)
        archive = Archive(emb.shape[1], cfg.index.kind, dict(cfg.index), model.info,
                          centers=mean_directions(rows, emb) if cfg.center else None)
        archive.add(rows, emb)
        k = int(cfg.k)
        fusion = None
        if cfg.get("visit_fusion", False):
            fusion, self.calibration = fit_visit_retrieval(archive, rows, emb, cfg)
        else:
            self.calibration = calibrate_archive(archive, rows, emb, cfg)
        missing = sorted({r.modality for r in rows} - set(self.calibration))
        if missing:
            raise ValueError(f"no threshold for modality {missing}: split "
                             f"{cfg.calibration_split!r} has no pairs of it to calibrate on")
        archive.calibration = self.calibration
        self.true = true_history(rows, k)
        if fusion is not None:
            log(f"retrieval by visits (shortlist {fusion.shortlist})")
            self.matches = fusion.retrieve(range(len(rows)), k, archive.thresholds())
            self.true_scores = [[fusion.score(i, j) for j in t] for i, t in enumerate(self.true)]
        else:
            self.matches = retrieve(archive, rows, emb, k, archive.thresholds())
            unit = archive.prepare_rows(rows, emb)
            density = archive.row_density(rows, emb)
            self.true_scores = [[float(archive.adjust(unit[i] @ unit[j], density[i], density[j]))
                                 for j in t] for i, t in enumerate(self.true)]
        self.trained_reader = trained_reader
        self.x_raw, self.diagnosis_model = self._diagnosis_input(
            model, emb, backbone, diagnosis_backbone, log)
        self.modalities = np.asarray([r.modality for r in rows])
        self.retrieved_lists = [[m.position for m in ms if m.accepted] for ms in self.matches]
        self.retrieved_scores = [[m.score for m in ms if m.accepted] for ms in self.matches]

    def _diagnosis_input(self, model, emb, backbone, diagnosis_backbone, log):
        """(features the classifiers read (n, D), the model that gave them)."""
        if self.cfg.features == diagnosis_reader.KIND:
            log("diagnosis features: a reader trained on the labels (cross-fitted)")
            return diagnosis_reader.reader_logits(self.rows, self.y, len(self.classes),
                                                  self.cfg.reader, self.cfg.train_split,
                                                  self.out_dir, files=self.files,
                                                  value_windows=model.value_windows,
                                                  expected=self.trained_reader)
        name = teacher_name(self.cfg.features)
        if name is None:
            return (diagnosis_features(emb, backbone, self.cfg.features),
                    {"reid_fingerprint": model.fingerprint, "reading": model.reading_settings})
        if diagnosis_backbone is None:
            diagnosis_backbone = DiagnosisBackbone(name, str(self.cfg.get("teacher_weights", "")),
                                                   value_windows=model.value_windows)
        log(f"diagnosis features: teacher {name}")
        x = cached_backbone_features(diagnosis_backbone, self.rows, self.out_dir,
                                     files=self.files)
        return x, dict(diagnosis_backbone.info)

    def classifiers_info(self) -> dict:
        """What the classifiers read (OUT/classifiers.json): the label column and classes,
        the feature kind, the model that gave the features and their width, the scale of
        the retrieval scores, the ``records`` setting, the token maps compared and the
        patients trained on (``eval`` refuses a split holding any of them)."""
        train = str(self.cfg.train_split)
        return {"label_column": str(self.cfg.label_column), "classes": list(self.classes),
                "features": str(self.cfg.features), "feature_dim": int(self.x_raw.shape[1]),
                "model": self.diagnosis_model, "scores": score_kind(self.cfg),
                "records": bool(self.cfg.classifier.get("records", False)),
                "maps_key": maps_key(self.cfg),
                "trained_patients": sorted({r.patient_key for r in self.rows
                                            if r.split == train})}

    def retrieval_settings(self) -> dict:
        """How the history beside each image was found and scored (metrics.json
        ``retrieval``): two reports that differ only here differ by these settings, which
        the numbers alone do not say."""
        cfg = self.cfg
        return {"scores": score_kind(cfg), "visit_fusion": bool(cfg.get("visit_fusion", False)),
                "hubness_k": int(cfg.index.get("hubness_k", 0)), "center": bool(cfg.center),
                "index": str(cfg.index.kind), "train_history": str(cfg.train_history),
                "maps_key": maps_key(cfg)}

    def check_classifiers(self, payload: dict, info: dict | None,
                          source: str = CLASSIFIERS) -> None:
        """Refuses classifiers this experiment cannot evaluate: ``check_classifier_settings``
        (the app config's), then trained on features of another model or width (a record
        without ``scores`` is of a run before they were recorded: its features are still
        checked)."""
        check_classifier_settings(payload, info, self.cfg, source)
        mine = self.classifiers_info()
        widths = {int(np.asarray(s["mean"]).shape[-1]) for s in payload["norm"]["features"].values()}
        if info is not None and (info.get("features") != mine["features"]
                                 or not _same_model(info.get("model"), mine["model"])):
            raise ValueError(f"the classifiers were trained on features={info.get('features')!r} "
                             f"of {info.get('model')}, this run reads features="
                             f"{mine['features']!r} of {mine['model']}: train again or use "
                             f"the same --workdir and --app-config")
        if widths != {mine["feature_dim"]}:
            raise ValueError(f"the classifiers read {sorted(widths)}-wide features, this run's "
                             f"are {mine['feature_dim']}-wide (features={mine['features']!r}): "
                             f"train again or use the same --app-config")

    def split(self, name: str) -> np.ndarray:
        idx = np.asarray([i for i, r in enumerate(self.rows) if r.split == name], int)
        if not len(idx):
            raise ValueError(f"the manifest has no images in split {name!r}")
        return idx

    def inputs(self, norm: dict, idx):
        """(x, retrieved histories, true histories, token maps or None) of rows ``idx``."""
        x = training.apply_standardizer(norm["features"], self.x_raw, self.modalities)
        maps = None
        if self.maps_raw is not None:
            maps = training.apply_map_standardizer(norm["maps"], self.maps_raw, self.modalities)
        k = int(self.cfg.k)
        records = None
        if self.cfg.classifier.get("records", False):      # the archive's diagnoses
            records = np.eye(len(self.classes), dtype=np.float32)[self.y]
        retrieved = training.Histories.gather(x, [self.retrieved_lists[i] for i in idx],
                                              [self.retrieved_scores[i] for i in idx], k, maps,
                                              records)
        true = training.Histories.gather(x, [self.true[i] for i in idx],
                                         [self.true_scores[i] for i in idx], k, maps, records)
        return x[idx], retrieved, true, (None if maps is None else maps[idx])

    def train(self) -> dict:
        """The classifiers trained on ``train_split`` (the payload ``publish`` saves;
        nothing is written here)."""
        c = self.cfg.classifier
        idx = self.split(self.cfg.train_split)
        norm = {"features": training.standardizer(self.x_raw[idx], self.modalities[idx])}
        if self.maps_raw is not None:
            norm["maps"] = training.map_standardizer(self.maps_raw[idx], self.modalities[idx])
        x, retrieved, true, x_map = self.inputs(norm, idx)
        y = self.y[idx]
        n = len(self.classes)
        current = training.train_current(x, y, n, c)
        kind = str(self.cfg.train_history)
        if kind == "both":      # every training image twice: with each history
            history = training.Histories.concat([retrieved, true])
            x, y = np.concatenate([x, x]), np.concatenate([y, y])
            x_map = None if x_map is None else np.concatenate([x_map, x_map])
        else:
            history = {"retrieved": retrieved, "true": true}.get(kind)
        if history is None:
            raise ValueError(f"train_history={self.cfg.train_history!r} unknown; expected "
                             f"retrieved, true or both")
        fused = training.train_fused(current, x, history, y, n, c, x_map)
        return {"norm": norm, "current": current, "fused": fused}

    def evaluate(self, payload: dict, split: str | None = None) -> dict:
        """The metrics of classifiers ``payload`` on ``split`` (default ``eval_split``);
        nothing is written here (``publish``)."""
        c, n = self.cfg.classifier, len(self.classes)
        split = split or self.cfg.eval_split
        idx = self.split(split)
        x, retrieved, true, x_map = self.inputs(payload["norm"], idx)
        probs = {"current_only": training.predict_current(payload["current"], x, n, c),
                 "retrieved_history": training.predict_fused(payload["fused"], x, retrieved, n, c,
                                                             x_map),
                 "true_history": training.predict_fused(payload["fused"], x, true, n, c, x_map)}
        same, other, found, total = [], [], [], []
        for i in idx:
            mine = self.rows[i].patient_key
            accepted = self.retrieved_lists[i]
            same.append(sum(self.rows[j].patient_key == mine for j in accepted))
            other.append(len(accepted) - same[-1])
            found.append(len(set(accepted) & set(self.true[i])))
            total.append(len(self.true[i]))
        same, other, found, total = map(np.asarray, (same, other, found, total))
        mods = np.asarray([self.rows[i].modality for i in idx])
        patients = np.asarray([self.rows[i].patient_key for i in idx])
        groups = {}
        for name in [m for m in ("xray", "ct", "mri", "fundus", "pathology") if m in mods] + ["overall"]:
            sel = np.ones(len(idx), bool) if name == "overall" else mods == name
            groups[name] = scoring.group_metrics({k: p[sel] for k, p in probs.items()},
                                                 self.y[idx][sel], same[sel], other[sel],
                                                 found[sel], total[sel], patients[sel])
        metrics = {"split": split, "label_column": self.cfg.label_column, "classes": self.classes,
                   "features": self.cfg.features, "diagnosis_model": self.diagnosis_model,
                   "k": int(self.cfg.k),
                   "target_far": float(self.cfg.target_far), "calibration": self.calibration,
                   "retrieval": self.retrieval_settings(),
                   "overall": groups["overall"],
                   "per_modality": {m: g for m, g in groups.items() if m != "overall"}}
        return metrics

    def publish(self, metrics: dict, payload: dict | None = None) -> None:
        """Writes the report of ``metrics`` (``evaluate``): OUT/metrics.json, metrics.md and
        auc.png, and with ``payload`` (``train``) the classifiers and classifiers.json,
        all together (``publish``), and prints the table."""
        from mami_jax.apps.history.pictures import auc_bars
        groups = {**metrics["per_modality"], "overall": metrics["overall"]}
        text = scoring.table(groups)
        writers = {}
        if payload is not None:
            info = strict_json.dumps(self.classifiers_info(), indent=1, sort_keys=True) + "\n"
            writers[CLASSIFIERS] = lambda path: training.save_classifiers(path, payload)
            writers[CLASSIFIERS_INFO] = lambda path: write_text_atomic(path, info)
        writers.update({
            "metrics.md": lambda path: write_text_atomic(path, text),
            "auc.png": lambda path: auc_bars(groups, path, metrics["split"]),
            METRICS: lambda path: write_text_atomic(
                path, strict_json.dumps(metrics, indent=1, sort_keys=True) + "\n")})
        publish(self.out_dir, writers)
        print(text, end="")
