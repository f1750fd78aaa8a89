"""Does diagnosis survive protection? The history application's diagnosis classifier.

A history ``train`` output (``python -m mami_jax.apps.history train --workdir RUN ...
--out DIR``, on the ORIGINAL images) holds DIR/classifiers.msgpack: the current-only
classifier, trained on RUN's frozen features of the original training images, and the
per-modality standardiser of those features. It never saw a protected image, so its
ROC AUC on the original test images against its AUC on their protected copies measures
the diagnostic content the protection removed, with a stronger diagnosis model than the
logistic probe of ``utility``.

The features are the history application's own (``apps.history.features``: the
embedding and the backbone feature of one forward pass, combined as its config's
``features``), so they must come from the model the classifier was trained on: the
model fingerprint DIR records (DIR/classifiers.json, which ``train`` writes beside the
classifiers, else DIR/features.npz, its feature cache) must equal the fingerprint of the
model given, and the features kind DIR/classifiers.json records must be the history
config's.

Classifiers of a separate diagnosis model (``features = "teacher:NAME"``, e.g. the ImageNet
EfficientNet-Lite0) read that model's features of each image file instead
(``apps.history.diagnosis_backbone``); its weights' fingerprint must be the one
DIR/classifiers.json records. Such a model is not a re-ID model, so the protection,
optimised against re-ID models, was never aimed at it: it judges what a hospital's own
diagnosis model still reads in the protected images.

Classifiers of ``features = "reader"`` read the logits of the small CNNs their `train`
fitted on the labels (``apps.history.diagnosis_reader``, saved beside the classifiers in
DIR/diagnosis_reader.msgpack): every slice of a series, so a change to any slice counts.
New images get the mean of the fold readers' logits, as the test images did in training.
"""

from __future__ import annotations

import os
import types
from typing import Sequence

import numpy as np

from mami_jax.apps.history import scoring, training
from mami_jax.apps.history.diagnosis_backbone import DiagnosisBackbone, teacher_name
from mami_jax.apps.history.diagnosis_reader import KIND as READER
from mami_jax.apps.history.diagnosis_reader import TrainedReader
from mami_jax.apps.history.trained_classifiers import (CLASSIFIERS, CLASSIFIERS_INFO,
                                                       read_classifiers_info)
from mami_jax.apps.history.features import TrainedModel, diagnosis_features
from mami_jax.apps.history.npz_files import NPZ_ERRORS
from mami_jax.data.config import windows_from_json

FEATURES_CACHE = "features.npz"


class HistoryClassifierError(ValueError):
    """A history classifier that cannot be applied to these features (names DIR)."""


def read_info(out_dir: str) -> dict | None:
    """DIR/classifiers.json (what the classifiers read), None when ``train`` wrote none."""
    try:
        return read_classifiers_info(out_dir)
    except (OSError, ValueError) as e:
        path = os.path.join(out_dir, CLASSIFIERS_INFO)
        raise HistoryClassifierError(f"--history-classifier {path}: cannot be read ({e})") from e


def recorded_fingerprint(out_dir: str, info: dict | None) -> str:
    """The fingerprint of the re-ID model ``out_dir``'s classifiers were trained on."""
    model = (info or {}).get("model") or {}
    if isinstance(model, dict) and model.get("reid_fingerprint"):
        return str(model["reid_fingerprint"])
    path = os.path.join(out_dir, FEATURES_CACHE)
    try:
        with np.load(path) as f:
            return str(f["fingerprint"])
    except NPZ_ERRORS as e:       # a cut-short file too (BadZipFile, zlib.error)
        raise HistoryClassifierError(
            f"--history-classifier {out_dir}: the classifiers record no model fingerprint and "
            f"{path} (written by the history `train`) cannot be read ({e}); the classifier's "
            f"model cannot be checked") from e


class HistoryClassifier:
    """The current-only classifier of a history ``train`` output, for its model's features.

    ``app_cfg``: the history application's config the classifier was trained with
    (``configs/history.py``; its ``features``, ``label_column`` and ``classes``)."""

    def __init__(self, out_dir: str, app_cfg):
        self.out_dir, self.cfg = os.path.abspath(out_dir), app_cfg
        path = os.path.join(self.out_dir, CLASSIFIERS)
        try:
            self.payload = training.load_classifiers(path)
        except FileNotFoundError as e:
            raise HistoryClassifierError(f"--history-classifier {out_dir}: {e}") from e
        except Exception as e:  # a file that is not a msgpack of classifiers
            raise HistoryClassifierError(f"--history-classifier {path}: not a history "
                                         f"classifiers file ({type(e).__name__}: {e})") from e
        for key in ("norm", "current"):
            if key not in self.payload:
                raise HistoryClassifierError(f"--history-classifier {path}: no {key!r} entry "
                                             f"(not a history `train` output)")
        info = read_info(self.out_dir)
        features = str(app_cfg.features)
        if info is not None and info.get("features") != features:
            raise HistoryClassifierError(
                f"--history-classifier {out_dir}: trained on features={info.get('features')!r}, "
                f"the history config gives features={features!r}: pass the --history-config "
                f"its `train` used")
        #: the fold readers of ``features = "reader"`` (saved beside the classifiers)
        self.reader = None
        if features == READER:
            try:
                self.reader = TrainedReader(self.out_dir)
            except (OSError, ValueError) as e:
                raise HistoryClassifierError(f"--history-classifier {out_dir}: {e}") from e
        #: NAME of ``features = "teacher:NAME"``; None for the re-ID model's features
        self.teacher = teacher_name(features)
        if self.reader is not None:
            self.fingerprint = self.reader.fingerprint
            trained_on = ((info or {}).get("model") or {}).get("fingerprint")
            if isinstance(trained_on, str) and trained_on != self.fingerprint:
                # readers a later `train` or `eval` wrote beside classifiers of others
                raise HistoryClassifierError(
                    f"--history-classifier {out_dir}: its readers are {self.fingerprint[:12]}, "
                    f"the classifiers were trained on readers {trained_on[:12]} "
                    f"({CLASSIFIERS_INFO}): train again")
        elif self.teacher is None:
            self.fingerprint = recorded_fingerprint(self.out_dir, info)
        else:
            model = (info or {}).get("model") or {}
            if not isinstance(model, dict) or not model.get("fingerprint"):
                raise HistoryClassifierError(
                    f"--history-classifier {out_dir}: classifiers of features={features!r} "
                    f"need the {CLASSIFIERS_INFO} that `train` writes beside them (it records "
                    f"the diagnosis model's weights)")
            self.fingerprint = str(model["fingerprint"])
        #: the value windows the diagnosis backbone read through in `train` (none: min-max)
        self.backbone_windows = {} if self.teacher is None else windows_from_json(
            ((info or {}).get("model") or {}).get("value_windows"))
        self.norm = self.payload["norm"]["features"]
        current = self.payload["current"]
        self.hidden = int(np.asarray(current["hidden"]["kernel"]).shape[1])
        self.num_classes = int(np.asarray(current["logits"]["kernel"]).shape[1])
        if self.num_classes != len(app_cfg.classes):
            raise HistoryClassifierError(
                f"--history-classifier {path}: {self.num_classes} classes, the history config "
                f"has {len(app_cfg.classes)} ({app_cfg.label_column}: {list(app_cfg.classes)})")

    def check_model(self, model: TrainedModel) -> None:
        """Refuses a model other than the one the classifier was trained on."""
        if self.teacher is not None:
            raise HistoryClassifierError(
                f"--history-classifier {self.out_dir} reads the features of teacher "
                f"{self.teacher}, not of a re-ID model")
        if model.fingerprint != self.fingerprint:
            raise HistoryClassifierError(
                f"--history-classifier {self.out_dir} was trained on the features of the model "
                f"with fingerprint {self.fingerprint[:12]}..., not {model.workdir} (step "
                f"{model.embedder.step}, fingerprint {model.fingerprint[:12]}...): give the "
                f"workdir its `train` used")

    def check_backbone(self, backbone: DiagnosisBackbone) -> None:
        """Refuses a diagnosis model other than the one the classifier was trained on."""
        mine = backbone.info["fingerprint"]
        if backbone.name != self.teacher or mine != self.fingerprint:
            raise HistoryClassifierError(
                f"--history-classifier {self.out_dir} was trained on teacher {self.teacher} "
                f"with weights {self.fingerprint[:19]}..., not {backbone.name} with "
                f"{mine[:19]}...: give the weights its `train` used (teacher_weights)")
        if backbone.value_windows != self.backbone_windows:
            raise HistoryClassifierError(
                f"--history-classifier {self.out_dir} was trained on teacher features read "
                f"through value windows {self.backbone_windows or 'none (min-max)'}, not "
                f"{backbone.value_windows or 'none (min-max)'}: give classifiers of one "
                f"re-ID run's reading")

    def features(self, model: TrainedModel, rows) -> np.ndarray:
        """The classifier's input features of ``rows`` under ``model`` (unstandardised)."""
        return self.inputs(*model.features(rows))

    def inputs(self, emb: np.ndarray, backbone: np.ndarray) -> np.ndarray:
        """The classifier's input features from ``TrainedModel.features``' output."""
        return self.checked(diagnosis_features(emb, backbone, self.cfg.features))

    def checked(self, x: np.ndarray) -> np.ndarray:
        """``x`` when it has the width the classifier was trained on."""
        width = next(iter(self.norm.values()))["mean"].shape[0]
        if x.shape[1] != width:
            raise HistoryClassifierError(
                f"--history-classifier {self.out_dir}: trained on {width}-d features, the "
                f"history config's features={self.cfg.features!r} gives {x.shape[1]}-d")
        return x

    def probabilities(self, x: np.ndarray, modalities: Sequence[str]) -> np.ndarray:
        z = training.apply_standardizer(self.norm, x, modalities)
        return training.predict_current(self.payload["current"], z, self.num_classes,
                                        types.SimpleNamespace(hidden=self.hidden))


def diagnosis_report(classifier: HistoryClassifier, x_orig: np.ndarray, x_prot: np.ndarray,
                     y: Sequence[int], modalities: Sequence[str]) -> dict:
    """Per modality (and mean): the classifier's AUC (``scoring.macro_auc``) on the
    original and on the protected images, and the relative change."""
    y, modalities = np.asarray(y), np.asarray(modalities)
    p_orig = classifier.probabilities(x_orig, modalities)
    p_prot = classifier.probabilities(x_prot, modalities)
    out = {}
    for m in sorted(set(modalities.tolist())):
        sel = modalities == m
        a, b = scoring.macro_auc(p_orig[sel], y[sel]), scoring.macro_auc(p_prot[sel], y[sel])
        out[m] = {"auc_original": a, "auc_protected": b,
                  "relative_change": (b - a) / a if a and b is not None else None,
                  "images": int(sel.sum()),
                  "class_counts": np.bincount(y[sel], minlength=classifier.num_classes).tolist()}
    known = [v for v in out.values() if v["auc_original"] is not None
             and v["auc_protected"] is not None]
    out["mean"] = {k: (float(np.mean([v[k] for v in known])) if known else None)
                   for k in ("auc_original", "auc_protected")}
    return out
