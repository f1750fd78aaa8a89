"""Teacher features joined to the training batches by image id (the "align" loss term).

``prepare(config, workdir, manifest)`` resolves ``data.teacher_features`` (extracting the
features first when ``extract`` is on and the folder has no ``index.json``), checks
that the "align" term and the teacher features are configured together, and returns a
``TeacherTable``; the training loader adds ``table.join(row_indices)`` to each batch:

- ``batch["teacher"][name]``: (B, D_t) float32, that image's stored feature (zeros where
  there is none);
- ``batch["teacher_mask"][name]``: (B,) bool, the teacher applies to the image's modality
  (``modalities`` of the teacher in ``index.json``) and its feature is stored.

Why host memory, not a second grain source: the features are read once at loader
construction, per teacher into one (stored images, D_t) float32 array plus a (rows,)
int32 map from manifest row to its slot (-1: none), so the join is a numpy gather by the
batch's row indices inside the batch map, with no extra I/O, ordering or state to
checkpoint (the batch plan is a pure function of the step, and so is the join). The
size is the stored features, sum over teachers of images x D_t x 4 bytes, plus 4 bytes
per row and teacher: the runlocal phantoms (1,580 images, anatomy 256 + efficientnet_lite0
1,280 values) take 9.7 MB; a 500,000-image archive with the medical bag, where two
all-modality teachers (1,280 values) and one modality's own (<= 1,024) apply to each
image, about 4.6 GB per process. With ``data.num_workers`` > 0 each grain worker holds
its own copy (the table is pickled with the batch map).

An image of the training split that lacks a feature of a teacher that applies to it is
an error giving the count per teacher and a few ids; with ``skip_missing`` it is masked
out for that teacher and counted (``TeacherTable.missing``).

Features are joined by image id, but an id names a row, not the pixels: phantoms
regenerated under the same ids, or a study exported again, would take the features of the
old images without a word. The extraction keeps each image's ``file_stamp`` (sizes and
modification times of its files) and the join compares it with the files the manifest
names now (``check_changed_files``): features of changed files are an error naming the
count and a few ids. ``check_files=False`` trusts the ids (the same images copied without
their dates); a store extracted before stamps were kept is joined unchecked, with a line
saying so.

The teachers read the images as the student does: the extraction training starts passes
the run's value windows (``data.modalities.<m>.value_window``), and features a store
records reading through other windows (or without them) are used with a warning that
says so (``other_reading``).
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import os
import subprocess
import sys
from typing import Sequence

import numpy as np

from mami_jax.tuple_flags import listing_hint
from mami_jax.data import config as data_config
from mami_jax.data.file_questions import ask_each
from mami_jax.data.image_signature import file_stamp
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.teacher_features import (TeacherFeatureError, load_features, load_file_stamps,
                                            read_index)

#: The loss term that reads the joined features (mami_jax/train/loss_terms.py).
ALIGN_TERM = "align"
#: Where ``extract`` writes the features when ``data.teacher_features.dir`` is "".
WORKDIR_SUBDIR = "teachers"
_SHOWN_IDS = 5


class TeacherJoinError(TeacherFeatureError):
    """The teacher features cannot be joined to the training rows (message names the
    config key, folder, teacher and image ids)."""


@dataclasses.dataclass(frozen=True)
class TeacherTable:
    """Per teacher, the stored features of the rows it applies to, and where each row's is."""

    names: tuple[str, ...]
    features: dict[str, np.ndarray]   # name -> (stored, D_t) float32
    slot: dict[str, np.ndarray]       # name -> (rows,) int32: row of `features`, -1 = none
    missing: dict[str, int]           # name -> training images masked out (skip_missing)
    directory: str

    def join(self, row_indices) -> dict:
        """``{"teacher": {name: (B, D_t)}, "teacher_mask": {name: (B,)}}`` for manifest rows
        ``row_indices`` (-1 = padding: zeros, mask False)."""
        idx = np.asarray(row_indices, np.int64)
        out = {"teacher": {}, "teacher_mask": {}}
        for n in self.names:
            slot = np.where(idx >= 0, self.slot[n][np.maximum(idx, 0)], -1)
            have = slot >= 0
            feats = self.features[n][np.maximum(slot, 0)] if len(self.features[n]) else \
                np.zeros((len(idx), self.features[n].shape[1]), np.float32)
            out["teacher"][n] = np.where(have[:, None], feats, 0.0).astype(np.float32)
            out["teacher_mask"][n] = have
        return out

    def summary(self) -> str:
        parts = [f"{n} ({self.features[n].shape[1]}-d, {len(self.features[n])} images"
                 + (f", {self.missing[n]} training images masked out as missing"
                    if self.missing.get(n) else "") + ")" for n in self.names]
        return f"teacher features from {self.directory}: " + ", ".join(parts)


def example_fields(tf_cfg) -> dict:
    """The joined fields of one image, sized from ``dims`` (what ``init`` needs)."""
    dims = _dims(tf_cfg)
    return {"teacher": {n: np.zeros((1, d), np.float32) for n, d in dims.items()},
            "teacher_mask": {n: np.ones((1,), bool) for n in dims}}


def _dims(tf_cfg) -> dict[str, int]:
    names = tuple(tf_cfg.teachers)
    dims = {str(k): v for k, v in dict(tf_cfg.dims).items()}
    if not names:
        raise TeacherJoinError("data.teacher_features.teachers is empty: name the teachers "
                               "to align to")
    lacking = [n for n in names if n not in dims]
    if lacking:     # or absl's reading of =efficientnet_lite0,anatomy: one name
        hint = listing_hint("data.teacher_features.teachers", names, dims)
        raise TeacherJoinError(f"data.teacher_features.teachers={names!r}{hint}" if hint else
                               f"data.teacher_features.dims has no feature size for {lacking}")
    return {n: int(dims[n]) for n in names}


def configured(tf_cfg) -> bool:
    return bool(tf_cfg.dir) or bool(tf_cfg.extract)


def features_dir(tf_cfg, workdir: str) -> str:
    return os.path.abspath(os.path.expanduser(tf_cfg.dir) if tf_cfg.dir
                           else os.path.join(workdir, WORKDIR_SUBDIR))


def check_config(config) -> None:
    """The "align" term and the teacher features are configured together, or neither."""
    tf_cfg = config.data.teacher_features
    wants = ALIGN_TERM in dict(config.loss.terms)
    if wants and not configured(tf_cfg):
        raise TeacherJoinError(f"loss.terms.{ALIGN_TERM} is set but no teacher features are: "
                               "set data.teacher_features.dir (configs/all.py:teachers=DIR), "
                               "or use configs/all.py:runlocal,align")
    if configured(tf_cfg) and not wants:
        raise TeacherJoinError(f"data.teacher_features is configured but loss.terms has no "
                               f"{ALIGN_TERM!r}: the features would be read for nothing; use "
                               "configs/all.py:teachers=DIR, which adds the term")
    if wants:
        _dims(tf_cfg)


def window_flags(value_windows: dict) -> list[str]:
    """``teachers.extract``'s ``--value-window`` arguments for ``value_windows``."""
    return [a for m, (lo, hi) in sorted(value_windows.items())
            for a in ("--value-window", f"{m}={lo!r},{hi!r}")]


def other_reading(index: dict, names: Sequence[str], modalities, value_windows: dict,
                  directory: str) -> str | None:
    """The warning when the store's features of the teachers ``names`` were read through
    other value windows than the run reads its images of ``modalities`` through, else None.
    A teacher with a window of its own (CT-FM reads Hounsfield units through [-1024, 2048]
    whatever the run reads) or that reads no pixels is not asked: extracting it again
    gives the same features, which the warning told the user to do."""
    stored = data_config.windows_from_json(index.get("value_windows"))

    def follows_the_run(name: str) -> bool:
        reading = index["teachers"][name].get("preprocessing", {})
        return not reading.get("value_window") and reading.get("input") != "none"
    seen = {m for n in names if follows_the_run(n)
            for m in index["teachers"][n]["modalities"]} & set(modalities)
    differ = sorted(m for m in seen if stored.get(m) != value_windows.get(m))
    if not differ:
        return None
    return (f"{directory}: the teachers read {_readings(stored, differ)}, this run reads "
            f"{_readings(value_windows, differ)} (data.modalities.<m>.value_window): the "
            "student would align to features of pixels it does not see; extract again with "
            f"{' '.join(window_flags(value_windows)) or 'no --value-window'}")


def _readings(windows: dict, modalities) -> str:
    """"ct by window (-1000.0, 1000.0), mri by min-max": how ``modalities`` are read."""
    return ", ".join(f"{m} by window {windows[m]}" if m in windows else f"{m} by min-max"
                     for m in modalities)


def extract(manifest: str, names: Sequence[str], out_dir: str,
            value_windows: dict | None = None) -> None:
    """Runs ``python -m teachers.extract`` in a subprocess: the teachers are PyTorch
    models, and this (JAX) process must not import torch. ``value_windows``: the run's
    (``data.config.value_windows``), so the teachers read what the student reads. Its
    output reaches the terminal as it comes (its progress bar: minutes of extraction
    showed nothing), and its last line of stderr names a failure."""
    cmd = [sys.executable, "-m", "teachers.extract", "--manifest", manifest,
           "--teachers", ",".join(names), "--out", out_dir] + window_flags(value_windows or {})
    logging.info("extracting teacher features: %s", " ".join(cmd))
    with subprocess.Popen(cmd, stderr=subprocess.PIPE) as child:
        tail = _forward(child.stderr, sys.stderr)
    if child.returncode:
        last = tail.decode("utf-8", "replace").replace("\r", "\n").strip().splitlines()[-1:]
        raise TeacherJoinError(f"teacher extraction into {out_dir} failed: "
                               f"{(last or [f'exit status {child.returncode}'])[0]} "
                               f"(command: {' '.join(cmd)})")


def _forward(source, sink, keep: int = 4096) -> bytes:
    """Copies ``source`` (a binary pipe) to ``sink`` (a text stream) as it arrives, bar
    updates included (they end in a carriage return, not a newline); returns the last
    ``keep`` bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = b""
    while chunk := source.read1(1024):
        sink.write(decoder.decode(chunk))
        sink.flush()
        tail = (tail + chunk)[-keep:]
    return tail


def load_table(rows: Sequence[ManifestRow], tf_cfg, directory: str) -> TeacherTable:
    """Reads the configured teachers from ``directory`` and joins them to ``rows``."""
    dims = _dims(tf_cfg)
    index = read_index(directory)
    for name, dim in dims.items():
        info = index["teachers"].get(name)
        if info is None:
            raise TeacherJoinError(f"{directory}: teacher {name!r} was not extracted (stored: "
                                   f"{sorted(index['teachers'])})")
        if int(info["feature_dim"]) != dim:
            raise TeacherJoinError(f"data.teacher_features.dims.{name}={dim}, but {directory} "
                                   f"stores {info['feature_dim']}-d features")
    stored = load_features(directory, list(dims))
    position = {r.image_id: i for i, r in enumerate(rows)}
    features, slots, missing, problems = {}, {}, {}, []
    for name, dim in dims.items():
        applies = set(index["teachers"][name]["modalities"])
        slot = np.full((len(rows),), -1, np.int32)
        kept = []
        for image_id, vec in zip(stored[name].image_ids, stored[name].vectors):
            i = position.get(image_id)
            if i is not None and rows[i].modality in applies:
                slot[i] = len(kept)
                kept.append(vec)
        lacking = [r.image_id for i, r in enumerate(rows)
                   if r.split == "train" and r.modality in applies and slot[i] < 0]
        if lacking:
            problems.append(f"{name}: {len(lacking)} (e.g. {lacking[:_SHOWN_IDS]})")
        features[name] = np.stack(kept).astype(np.float32) if kept else \
            np.zeros((0, dim), np.float32)
        slots[name], missing[name] = slot, len(lacking)
    if problems and not bool(tf_cfg.skip_missing):
        raise TeacherJoinError(
            f"{directory}: training images without the feature of a teacher that applies to "
            f"their modality: {'; '.join(problems)}. Extract them, or set "
            "data.teacher_features.skip_missing=True to mask them out for that teacher "
            "and count them")
    if bool(tf_cfg.get("check_files", True)):
        check_changed_files([r for i, r in enumerate(rows)
                             if any(slots[n][i] >= 0 for n in dims)], directory)
    return TeacherTable(tuple(dims), features, slots, missing, directory)


def check_changed_files(rows: Sequence[ManifestRow], directory: str) -> None:
    """Refuses features of ``rows`` whose files changed since extraction (their
    ``file_stamp`` differs from the one ``directory`` kept); rows without a kept stamp
    (an older store) are joined unchecked, said in one line."""
    kept = load_file_stamps(directory)
    checked = [r for r in rows if r.image_id in kept]
    if len(checked) < len(rows):
        logging.warning("%s: %d of %d joined images have no file stamp (extracted before "
                        "stamps were kept): not checked against their files", directory,
                        len(rows) - len(checked), len(rows))
    now = ask_each(checked, lambda r: file_stamp(r.path), "checking the teacher features' files")
    changed = [r.image_id for r, stamp in zip(checked, now) if stamp != kept[r.image_id]]
    if changed:
        raise TeacherJoinError(
            f"{directory}: the features of {len(changed)} images were extracted from other "
            f"files than the manifest names now (sizes or modification times differ; e.g. "
            f"{changed[:_SHOWN_IDS]}): extract them again into a new folder, or set "
            "data.teacher_features.check_files=False if they are the same images copied")


def prepare(config, workdir: str, rows: Sequence[ManifestRow], manifest: str,
            process_count: int = 1) -> TeacherTable | None:
    """The teacher table of a training run (None when no alignment is configured)."""
    check_config(config)
    tf_cfg = config.data.teacher_features
    if not configured(tf_cfg):
        return None
    directory = features_dir(tf_cfg, workdir)
    windows = data_config.value_windows(config.data)
    if tf_cfg.extract and not os.path.isfile(os.path.join(directory, "index.json")):
        if process_count > 1:
            raise TeacherJoinError(f"{directory}: no index.json; with several processes extract "
                                   "the teacher features before training (python -m "
                                   "teachers.extract) and set data.teacher_features.dir")
        extract(manifest, tuple(tf_cfg.teachers), directory, windows)
    table = load_table(rows, tf_cfg, directory)
    warning = other_reading(read_index(directory), table.names, {r.modality for r in rows},
                            windows, directory)
    if warning:
        logging.warning("%s", warning)
    logging.info("%s", table.summary())
    return table
