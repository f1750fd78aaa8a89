"""Checking the app settings (``configs/history.py`` or a copy of it) before any work.

A setting read only late (the calibration method after every image is embedded, the
training history after the features) would let a typo cost the whole embedding and
then stop, or, where nothing reads it, be ignored without a word. ``check_settings``
reads every setting the commands use, at load time (``configs/history.py`` calls it)
and again when a command starts (a hand-written config may set values the file's words
never checked), and names the first bad one.

One combination is refused rather than ignored: ``calibration = "pairs"`` with
``visit_fusion`` on. Visit-fused retrieval calibrates its thresholds on the validation
images' top-k visit candidates (``calibration.calibrate_visits``); pairs of single images
have no visit score to calibrate, so the setting would do nothing.
"""

from __future__ import annotations

import re

from mami_jax.runtime.setting_ranges import is_number, require

TRAIN_HISTORIES = ("retrieved", "true", "both")
#: The layers ``map_layer`` names besides ``block_<i>`` (``models.layer_tokens``; the block
#: index is checked against the model once it is read).
MAP_LAYER_NAMES = ("patch_embed", "ln_pre", "last_block")


_REQUIRED = object()


def _number(cfg, key: str, where: str = "", default=_REQUIRED):
    """``cfg[key]`` (``default`` when absent and one is given, as the code reading it
    assumes), a ValueError naming ``where`` + ``key`` unless a finite number."""
    name = f"{where}{key}"
    if key not in cfg and default is not _REQUIRED:
        return default
    if key not in cfg:
        raise ValueError(f"{name} is not set")
    value = cfg[key]
    require(is_number(value), name, value, "a finite number")
    return value


def _at_least(cfg, key: str, low: int, where: str = "", default=_REQUIRED) -> None:
    value = _number(cfg, key, where, default)
    require(int(value) == value and value >= low, f"{where}{key}", value,
            f"a whole number of at least {low}")


def _positive(cfg, key: str, where: str, zero_ok: bool = False) -> None:
    value = _number(cfg, key, where)
    require(value >= 0 if zero_ok else value > 0, f"{where}{key}", value,
            "a number >= 0" if zero_ok else "a number > 0")


def _check_model_settings(cfg) -> None:
    """The classifiers', the diagnosis reader's and the archive index's sizes and rates
    (a zero learning rate trained nothing, ``reader.epochs=0`` read the untrained reader's
    logits, ``index.ivf_nprobe=0`` searched no list)."""
    _at_least(cfg.classifier, "seed", 0, "classifier.")
    _positive(cfg.classifier, "learning_rate", "classifier.")
    _positive(cfg.classifier, "weight_decay", "classifier.", zero_ok=True)
    if "reader" in cfg:
        r = cfg.reader
        for key in ("size", "slices", "epochs", "batch_size"):
            _at_least(r, key, 1, "reader.")
        _at_least(r, "folds", 2, "reader.")
        _at_least(r, "seed", 0, "reader.")
        _positive(r, "learning_rate", "reader.")
        _positive(r, "weight_decay", "reader.", zero_ok=True)
        for modality, size in dict(r.get("sizes", {}) or {}).items():
            require(is_number(size) and int(size) == size and size >= 1,
                    f"reader.sizes.{modality}", size, "a whole number of at least 1")
        widths = tuple(r.widths)
        require(len(widths) > 0 and all(is_number(w) and int(w) == w and w >= 1 for w in widths),
                "reader.widths", widths, "one or more whole numbers of at least 1")
    for key, low in (("ivf_nlist", 1), ("ivf_nprobe", 1), ("hnsw_m", 2),
                     ("hnsw_ef_search", 1)):
        if key in cfg.index:
            _at_least(cfg.index, key, low, "index.")


def check_settings(cfg) -> None:
    """ValueError naming the first setting of ``cfg`` a command could not use: an unknown
    calibration method, index kind, feature kind or training history, a false-accept
    target outside [0, 1), a count below its least value, classes that are not distinct,
    ``calibration=pairs`` with ``visit_fusion`` (see the module docstring)."""
    from mami_jax.apps.history.archive import KINDS
    from mami_jax.apps.history.calibration import METHODS
    from mami_jax.apps.history.diagnosis_backbone import check_teacher, teacher_name
    from mami_jax.apps.history.diagnosis_reader import KIND as READER
    from mami_jax.apps.history.features import FEATURE_KINDS

    classes = [str(c) for c in cfg.classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes={list(cfg.classes)!r}: expected two or more distinct values")
    if not str(cfg.label_column):
        raise ValueError("label_column is empty: name the labels table's column")
    _at_least(cfg, "k", 1)
    far = _number(cfg, "target_far")
    require(0.0 <= far < 1.0, "target_far", far, "a false-accept rate in [0, 1)")
    if str(cfg.calibration) not in METHODS:
        raise ValueError(f"calibration={cfg.calibration!r} unknown; expected one of "
                         f"{', '.join(METHODS)}")
    if cfg.get("visit_fusion", False):
        _at_least(cfg, "visit_shortlist", 1)
        if str(cfg.calibration) == "pairs":
            raise ValueError("calibration='pairs' has no effect with visit_fusion (the default): "
                             "visit scores are calibrated on the validation images' top-k "
                             "visit candidates; add visit_fusion=0 to calibrate single images "
                             "on pairs")
    if str(cfg.index.kind) not in KINDS:
        raise ValueError(f"index.kind={cfg.index.kind!r} unknown; expected one of "
                         f"{', '.join(KINDS)}")
    _at_least(cfg.index, "hubness_k", 0, "index.", default=0)
    if int(cfg.index.get("hubness_k", 0)) > 0:
        _at_least(cfg.index, "hubness_shortlist", 1, "index.", default=100)
    if str(cfg.train_history) not in TRAIN_HISTORIES:
        raise ValueError(f"train_history={cfg.train_history!r} unknown; expected "
                         f"retrieved, true or both")
    features = str(cfg.features)
    teacher = teacher_name(features)
    if features not in FEATURE_KINDS + (READER,) and teacher is None:
        raise ValueError(f"features={features!r} unknown; expected one of "
                         f"{', '.join(FEATURE_KINDS)}, {READER} or teacher:NAME")
    if teacher is not None:
        check_teacher(teacher)
    elif str(cfg.get("teacher_weights", "")):
        raise ValueError(f"teacher_weights={cfg.teacher_weights!r} has no effect: "
                         f"features={features!r} reads no teacher (features=teacher:NAME does)")
    _check_model_settings(cfg)
    for key in ("steps", "fused_steps", "hidden", "attention_dim"):
        _at_least(cfg.classifier, key, 1, "classifier.")
    _at_least(cfg.classifier, "map_dim", 0, "classifier.", default=0)
    dropout = _number(cfg.classifier, "history_dropout", "classifier.")
    require(0.0 <= dropout < 1.0, "classifier.history_dropout", dropout,
            "a probability in [0, 1)")
    if int(cfg.classifier.get("map_dim", 0)) > 0:
        _at_least(cfg, "map_grid", 1)
        layer = str(cfg.map_layer)
        require(layer in MAP_LAYER_NAMES or re.fullmatch(r"block_\d+", layer) is not None,
                "map_layer", layer, f"one of {', '.join(MAP_LAYER_NAMES)} or block_<i>")
    splits = {k: str(cfg[k]) for k in ("train_split", "calibration_split", "eval_split")}
    for key, split in splits.items():
        if not split:
            raise ValueError(f"{key} is empty: name a split of the manifest")
