"""A history ``train`` output's classifiers as ``eval`` (and the privacy evaluation) read
them: OUT/classifiers.msgpack and the record of what they were trained on,
OUT/classifiers.json, both checked before any work.

A classifier applied to features, retrieval scores or classes other than its training's
fails with a shape error deep in flax, or worse, reads them wrongly without one; so the
record names what they were trained on, and classifiers without it (older runs) are
checked by their parameters' shapes against what the app config would build.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mami_jax.apps.history import training

CLASSIFIERS = "classifiers.msgpack"
#: What the classifiers were trained on (features kind, the model that gave them, width,
#: the retrieval scores their history term reads): ``eval`` refuses other features and
#: other scores.
CLASSIFIERS_INFO = "classifiers.json"
def score_kind(cfg) -> str:
    """The scale of the retrieval scores the history model reads beside each history image:
    ``visit`` (z-normalised visit sums of hub-corrected cosines, ``visit_fusion`` with
    ``index.hubness_k`` > 0), ``visit-cosine`` (the same sums of plain cosines,
    ``hubness_k`` = 0), ``csls`` (hub-corrected cosines) or ``cosine``; ``/raw`` when the
    archive is not centred. A history term trained on one scale reads another wrongly
    without any error of its own, hence the record. (The default's name, ``visit``, is
    the one records written before the two visit scales were told apart carry.)"""
    hub = int(cfg.index.get("hubness_k", 0)) > 0
    if cfg.get("visit_fusion", False):
        kind = "visit" if hub else "visit-cosine"
    else:
        kind = "csls" if hub else "cosine"
    return kind if cfg.center else f"{kind}/raw"


def maps_key(cfg) -> str:
    """``layer@grid`` of the token maps the classifiers compare (``classifier.map_dim`` > 0),
    "" without: maps of another layer or grid have the same width, so only the record
    tells them apart."""
    return f"{cfg.map_layer}@{int(cfg.map_grid)}" if uses_maps(cfg) else ""


def refuse_trained_patients(info: dict | None, rows, split: str) -> None:
    """ValueError naming the patients of ``split`` among ``rows`` that the classifiers were
    trained on (``trained_patients`` of their record): with the manifest's splits changed
    since ``train``, ``eval`` scored the classifiers on images they learnt from (AUC 1.000
    where the held-out patients gave 0.875)."""
    trained = set((info or {}).get("trained_patients", ()))
    seen = sorted({r.patient_key for r in rows if r.split == split} & trained)
    if seen:
        more = ", ..." if len(seen) > 3 else ""
        raise ValueError(f"{len(seen)} patient(s) of split {split!r} are among those the "
                         f"classifiers were trained on ({', '.join(seen[:3])}{more}): their "
                         "scores would be of images the classifiers learnt from; evaluate a "
                         "split of other patients, or train again on this manifest")


def read_classifiers_info(out_dir: str) -> dict | None:
    """DIR/classifiers.json as written by ``train``; None when there is none (classifiers
    of older runs). Raises OSError when it cannot be read and ValueError when it is not
    a JSON object."""
    path = os.path.join(out_dir, CLASSIFIERS_INFO)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    return info


def uses_maps(cfg) -> bool:
    return int(cfg.classifier.get("map_dim", 0)) > 0


def load_trained(out_dir: str) -> tuple[dict, dict | None]:
    """(the classifiers of OUT/classifiers.msgpack, what they were trained on: the
    record of OUT/classifiers.json or None) as ``eval`` reads them, before any work: a
    file that is missing, not msgpack or JSON, or does not hold what ``train`` writes is
    an error naming it."""
    path = os.path.join(out_dir, CLASSIFIERS)
    try:
        payload = training.load_classifiers(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any msgpack decoder error: not a classifiers file
        raise ValueError(f"classifiers {path}: not a classifiers file of `train` "
                         f"({type(e).__name__}: {e})") from e
    _check_payload(payload, path)
    info_path = os.path.join(out_dir, CLASSIFIERS_INFO)
    try:
        info = read_classifiers_info(out_dir)
    except OSError as e:
        raise OSError(f"{info_path}: cannot be read ({e.strerror})") from e
    except ValueError as e:
        raise ValueError(f"{info_path}: not the JSON object `train` writes ({e})") from e
    return payload, info


def _check_payload(payload, path: str) -> None:
    """ValueError naming ``path`` unless ``payload`` has the parts ``train`` saves: the
    per-modality feature statistics and the two classifiers' parameter trees."""
    if not isinstance(payload, dict):
        raise ValueError(f"classifiers {path}: holds a {type(payload).__name__}, not the "
                         f"classifiers `train` writes")
    for key in ("norm", "current", "fused"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"classifiers {path}: no {key!r} entry (not a classifiers file "
                             f"of `train`)")
    stats = payload["norm"].get("features")
    if not isinstance(stats, dict) or not stats or not all(
            isinstance(v, dict) and np.ndim(v.get("mean")) == 1 and np.ndim(v.get("std")) == 1
            for v in stats.values()):
        raise ValueError(f"classifiers {path}: no per-modality feature statistics "
                         f"('norm' 'features'; not a classifiers file of `train`)")


def _shapes(tree) -> dict[str, tuple]:
    import jax
    return {jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_classifier_settings(payload: dict, info: dict | None, cfg, source: str) -> None:
    """Refuses, before any work, classifiers (``load_trained``) that this app config
    ``cfg`` cannot evaluate: trained on another label column or classes, on other
    features or retrieval scores, with the other ``records`` setting, or whose
    parameters another classifier setting shaped (``training.parameter_shapes``; the
    label and class count show there too for classifiers trained before
    classifiers.json recorded them). ``source``: the classifiers file, for the message."""
    classes = [str(c) for c in cfg.classes]
    again = "train again or use the same --app-config"
    if info is not None and "classes" in info and (
            info.get("label_column") != cfg.label_column or list(info["classes"]) != classes):
        raise ValueError(f"the classifiers were trained on {info.get('label_column')!r} "
                         f"(classes {', '.join(map(str, info['classes']))}), this run reads "
                         f"{cfg.label_column!r} (classes {', '.join(classes)}): {again}")
    if info is not None and "features" in info and info["features"] != str(cfg.features):
        raise ValueError(f"the classifiers were trained on features={info['features']!r}, this "
                         f"run reads features={str(cfg.features)!r}: {again}")
    if info is not None and "scores" in info and info["scores"] != score_kind(cfg):
        raise ValueError(f"the classifiers' history term was trained on {info['scores']!r} "
                         f"retrieval scores, this run gives {score_kind(cfg)!r} (visit_fusion, "
                         f"hubness_k, center): {again}")
    if info is not None and "maps_key" in info and info["maps_key"] != maps_key(cfg):
        raise ValueError(f"the classifiers compare token maps {info['maps_key'] or 'none'!r}, "
                         f"this run gives {maps_key(cfg) or 'none'!r} (map_layer@map_grid): "
                         f"{again}")
    records = bool(cfg.classifier.get("records", False))
    if info is not None and info.get("records", False) != records:
        raise ValueError(f"the classifiers were trained with records="
                         f"{int(info.get('records', False))}, this run has records="
                         f"{int(records)}: {again}")
    norm = payload["norm"]
    if uses_maps(cfg) and not isinstance(norm.get("maps"), dict):
        raise ValueError(f"classifiers {source}: trained without token maps, the app config "
                         f"compares them (classifier.map_dim={int(cfg.classifier.map_dim)}): "
                         f"{again}")
    width = int(np.shape(next(iter(norm["features"].values()))["mean"])[-1])
    channels = (int(np.shape(next(iter(norm["maps"].values()))["mean"])[-1])
                if uses_maps(cfg) else 0)
    expected = training.parameter_shapes(len(classes), cfg.classifier, width, channels)
    for part in ("current", "fused"):
        mine, theirs = _shapes(expected[part]), _shapes(payload[part])
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                raise ValueError(
                    f"classifiers {source}: parameter {part}{name} has shape "
                    f"{theirs.get(name, 'none')}, the app config's classifier gives "
                    f"{mine.get(name, 'none')} ({len(classes)} classes of "
                    f"{cfg.label_column!r}, hidden, attention_dim, map_dim, records): {again}")
