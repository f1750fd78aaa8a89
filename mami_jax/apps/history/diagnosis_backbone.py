"""A frozen pretrained image model as the diagnosis backbone (``features = "teacher:NAME"``).

The re-ID model finds a patient's history; what the classifier reads need not come from
it. A re-ID backbone is trained to recognise one patient through all of their visits, so
it learns to overlook what changes between visits, the disease included: on the phantoms
its features read the disease barely above chance on X-ray, fundus and pathology
(docs/history.md). A hospital that already runs a diagnosis backbone keeps it and lets
MaMI do the linking: any 2-D image model of the ``teachers`` registry serves here with
its own preprocessing (``teachers.preprocess``: the whole 2-D image, the middle slice of
a series), e.g. ``efficientnet_lite0`` (ImageNet, installs offline) or ``dinov2_base``,
``rad_dino``, ``retfound``, ``uni`` from local weights (``teacher_weights``, default
``$MAMI_TEACHER_WEIGHTS/<name>``). Needs the ``teachers`` extra (torch).

The features are cached in OUT/diagnosis_<name>.npz, reused only for the same weights
(the teacher's fingerprint), image ids and files (``data.image_signature``); an unreadable
cache is said and computed again (``npz_files.read_cache``).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from tqdm import tqdm

from mami_jax.apps.history.npz_files import read_cache
from mami_jax.data.config import windows_as_json, windows_from_json
from mami_jax.data.image_signature import rows_signature
from mami_jax.data.manifest import ManifestRow
from mami_jax.runtime.atomic_files import write_atomic

PREFIX = "teacher:"


def teacher_name(kind: str) -> str | None:
    """``"teacher:NAME"`` -> NAME; another feature kind -> None."""
    if not str(kind).startswith(PREFIX):
        return None
    name = str(kind)[len(PREFIX):]
    if not name:
        raise ValueError(f"features={kind!r}: name the teacher, e.g. teacher:efficientnet_lite0")
    return name


def check_teacher(name: str):
    """The registry's spec of the teacher ``name`` (ValueError naming ``features`` when no
    teacher has that name, or when it reads no 2-D image). Needs no torch: the history
    config names its teacher before any image is read."""
    from teachers import registry

    try:
        spec = registry.get_spec(name)
    except KeyError as e:
        raise ValueError(f"features=teacher:{name}: {e.args[0]}") from None
    if spec.input != "image":
        raise ValueError(f"features=teacher:{name}: a diagnosis backbone reads 2-D "
                         f"images, {name} reads {spec.input!r} input")
    return spec


class DiagnosisBackbone:
    """The teacher ``name`` of the ``teachers`` registry, frozen, on ``device``."""

    def __init__(self, name: str, weights_path: str = "", device: str = "cpu",
                 batch_size: int = 32, value_windows: dict | None = None):
        """``value_windows``: {modality: (lo, hi)}, the modalities the re-ID run reads
        through a fixed window (``TrainedModel.value_windows``), read so here too."""
        try:
            from teachers import registry
            from teachers.loaders import TeacherLoadError, load_teacher
        except ImportError as e:
            raise ImportError(f"features=teacher:{name} needs the teachers extra "
                              f"(pip install -e \".[torch,teachers]\"): {e}") from e
        spec = check_teacher(name)
        if not weights_path and spec.needs_weights:
            weights_path = registry.default_weights_path(name) or ""
        try:
            self.teacher = load_teacher(spec, weights_path or None, device=device)
        except TeacherLoadError as e:       # missing or unloadable weights: the user's input
            raise ValueError(str(e)) from e
        self.name, self.device, self.batch_size = name, device, int(batch_size)
        self.value_windows = windows_from_json(windows_as_json(value_windows))

    @property
    def info(self) -> dict:
        """What the classifiers' features come from (recorded beside them): the teacher,
        its weights and, where set, the value windows it reads through."""
        t = self.teacher
        info = {"teacher": self.name, "public_id": t.spec.public_id,
                "fingerprint": t.fingerprint, "feature_dim": t.feature_dim}
        if self.value_windows:
            info["value_windows"] = windows_as_json(self.value_windows)
        return info

    def features(self, rows: Sequence[ManifestRow], progress: bool = True) -> np.ndarray:
        """(n, D) float32, one row per manifest row, in order; an image of a modality the
        teacher does not cover, or that cannot be read, is an error naming it."""
        from teachers.extract import ExtractError, shard_features
        spec = self.teacher.spec
        uncovered = sorted({r.modality for r in rows if not spec.applies_to(r.modality)})
        if uncovered:
            raise ValueError(f"features=teacher:{self.name} covers {', '.join(spec.modalities)}, "
                             f"not {', '.join(uncovered)}")
        with tqdm(total=len(rows), unit="img", desc=f"diagnosis {self.name}",
                  disable=not progress) as bar:
            try:
                by_id = shard_features([self.teacher], list(rows), self.batch_size,
                                       self.device, False, bar,
                                       value_windows=self.value_windows)[0][self.teacher.spec.name]
            except ExtractError as e:       # an unreadable image, named
                raise ValueError(str(e)) from e
        return np.stack([by_id[r.image_id] for r in rows]).astype(np.float32)


def cached_backbone_features(backbone: DiagnosisBackbone, rows: Sequence[ManifestRow],
                             out_dir: str, progress: bool = True,
                             files: str | None = None) -> np.ndarray:
    """``backbone.features(rows)``, from OUT/diagnosis_<name>.npz when it holds these
    images' features (same ids and files: ``files``, their ``rows_signature`` where the
    caller has it already) from the same weights read through the same value windows."""
    path = os.path.join(out_dir, f"diagnosis_{backbone.name}.npz")
    ids = np.asarray([r.image_id for r in rows])
    windows = backbone.info.get("value_windows")
    fingerprint = backbone.info["fingerprint"] + (   # no windows: the key caches had before
        f"|{json.dumps(windows, sort_keys=True)}" if windows else "")
    files = rows_signature(rows) if files is None else files
    cached = read_cache(path, lambda f: f["features"] if (
        str(f["fingerprint"]) == fingerprint and np.array_equal(f["image_id"], ids)
        and "files" in f.files and str(f["files"]) == files) else None)
    if cached is not None:
        return cached
    x = backbone.features(rows, progress)
    write_atomic(path, lambda tmp: np.savez(tmp, features=x, image_id=ids, files=np.asarray(files),
                                            fingerprint=np.asarray(fingerprint)))
    return x
