"""Protecting the rows of a manifest: optimise, write in the input's format, new manifest.

``protect_rows`` works one modality and image shape at a time, ``batch_size`` images
together: it reads the pixels the model reads (``model_input``; for a series, every
group of slices the model could read, so that the whole series is protected), the original
embeddings of the patients' images under every ensemble member (the references of
``objective``), removes identity (``inpaint`` and/or ``perturb``, per ``config.method``;
``noise``: budget-sized noise aimed at nothing, the control),
and writes each image with ``writers``. Outputs go to ``OUT/images/<path relative to the
manifest's folder>`` (``copy_paths``: one file per row) and ``OUT/manifest.csv`` (the
project's schema: patient, study, order, modality, view and split kept; ``image_id`` +
``SUFFIX``; relative paths, so the folder can move). The inputs are only read.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from mami_jax.apps.privacy import common_weakness
from mami_jax.apps.privacy import cues as cues_lib
from mami_jax.apps.privacy import inpaint as inpaint_lib
from mami_jax.apps.privacy import deform as deform_lib
from mami_jax.apps.privacy import ensemble, objective, perturb, references
from mami_jax.apps.privacy.copy_formats import check_writable
from mami_jax.apps.privacy.copy_paths import check_distinct_copies, output_path
from mami_jax.apps.privacy.diagnosis_keep import DiagnosisKeeper
from mami_jax.apps.privacy.header_identity import (check_identity_setting, remove_identity,
                                                   says_burned_in_text)
from mami_jax.apps.privacy.change_masks import change_mask
from mami_jax.apps.privacy.model_input import InputMap, read_parts, settings_for
from mami_jax.apps.privacy.cue_run import check_cue_settings
from mami_jax.apps.privacy.derived_uids import new_uid_key
from mami_jax.apps.privacy.protect_log import ProtectLog
from mami_jax.apps.privacy.quality import psnr, psnr_of_rms
from mami_jax.apps.privacy.row_views import PendingRows
from mami_jax.apps.privacy.writers import files_left_out
from mami_jax.apps.privacy.written_budget import rms_change, write_within_budget
from mami_jax.data.image_signature import rows_signature
from mami_jax.data.manifest import MODALITIES, ManifestRow
from mami_jax.inference import embed_in_chunks
from mami_jax.runtime.chunk_store import discard_beside
from mami_jax.runtime.setting_ranges import is_number, is_whole, require

SUFFIX = "_protected"
METHODS = ("perturb", "inpaint", "both", "noise", "deform")
#: How region removal finds the identity regions (``inpaint.cue``).
CUES = ("gradient", "occlusion")


def select_rows(rows: Sequence[ManifestRow], split: str | None, source: str) -> list[ManifestRow]:
    chosen = [r for r in rows if split is None or r.split == split]
    if not chosen:
        present = sorted({r.split for r in rows})
        raise ValueError(f"{source}: no rows in split {split!r} (splits present: {present})")
    return chosen


def reference_embeddings(members, rows: Sequence[ManifestRow], progress: bool = True,
                         keep_beside: str | None = None) -> list[np.ndarray]:
    """Every member's evaluation embeddings of ``rows`` (batched as ``Embedder.embed_rows``
    batches them), with a progress bar per member; with ``keep_beside`` (an output folder)
    each pass keeps its finished chunks beside it (``Embedder.chunk_store``), so a stopped
    run of many members does not embed the references again."""
    signature = rows_signature(rows) if keep_beside else ""
    return [embed_in_chunks(m.embedder.embed_batch, rows, m.embedder, progress,
                            desc=f"references, model {i + 1}/{len(members)}",
                            store=m.embedder.chunk_store(keep_beside, signature, "references",
                                                         shared=True) if keep_beside else None)
            for i, m in enumerate(members)]


def groups_of(sources) -> dict:
    g = collections.defaultdict(list)
    for s in sources:
        g[(s.row.modality,) + s.unit.shape].append(s)
    return g


def keepers_of(cfg_perturb, members) -> list:
    """The ``DiagnosisKeeper`` of each entry of ``perturb.keep_diagnosis`` ("DIR" or
    "DIR+DIR+...": history ``train`` outputs of the members in order, ``--workdir``'s first)."""
    dirs = [d for d in str(cfg_perturb.get("keep_diagnosis", "")).split("+") if d]
    if len(dirs) > len(members):
        raise ValueError(f"perturb.keep_diagnosis names {len(dirs)} classifiers for "
                         f"{len(members)} re-ID models: one per model, --workdir's first")
    return [DiagnosisKeeper(d, str(cfg_perturb.keep_diagnosis_config), m)
            for d, m in zip(dirs, members)]


def epsilon_for(cfg_perturb, modality: str) -> float:
    """The budget of ``modality``'s images: ``perturb.modality_epsilon[modality]`` where
    given, else ``perturb.epsilon``. A modality whose diagnosis suffers where its identity
    is already removed with budget to spare (CT, docs/privacy_experiments.md) can be given
    less."""
    by_modality = dict(cfg_perturb.get("modality_epsilon", {}) or {})
    value = float(by_modality.get(modality, cfg_perturb.epsilon))
    if not value > 0:
        key = (f"perturb.modality_epsilon[{modality!r}]" if modality in by_modality
               else "perturb.epsilon")
        raise ValueError(f"{key}={value!r}: must be > 0")
    return value


#: ``perturb``'s per-modality tables: each entry replaces a plain setting for one modality.
MODALITY_TABLES = ("modality_epsilon", "modality_objective", "modality_member_weighting")


def check_modality_settings(cfg_perturb, modalities) -> None:
    """Refuses, before any work, a table entry for no modality of the project (it would be
    ignored) and a bad budget or weighting for any of ``modalities``."""
    for table in MODALITY_TABLES:
        unknown = sorted(set(dict(cfg_perturb.get(table, {}) or {})) - set(MODALITIES))
        if unknown:
            raise ValueError(f"perturb.{table}: no such modality {unknown}; known: {MODALITIES}")
    for modality in sorted(modalities):
        epsilon_for(cfg_perturb, modality)
        perturb.weighting_for(cfg_perturb, modality)


def ensemble_step(cfg_perturb, train_score, epsilon: float, keep, weighting):
    """The PGD step ``perturb.ensemble_update`` names: the members' gradients averaged
    (``perturb.make_step``, with ``weighting`` and the ``keep`` terms) or chained
    (``common_weakness.make_step``, which takes neither)."""
    update = str(cfg_perturb.get("ensemble_update", "average"))
    common_weakness.check_update(update)
    args = (train_score, cfg_perturb.norm, epsilon, float(cfg_perturb.step_size),
            float(cfg_perturb.momentum), float(cfg_perturb.get("smooth", 0.0)))
    if update == "average":
        return perturb.make_step(*args, keep_changes=keep, weighting=weighting[0],
                                 temperature=weighting[1])
    if keep or weighting[0] != "mean":
        raise ValueError("perturb.ensemble_update='common_weakness' chains the members' own "
                         "gradients: it takes neither perturb.keep_diagnosis nor a "
                         f"perturb.member_weighting other than 'mean' (got {weighting[0]!r})")
    return common_weakness.make_step(*args, reverse_size=float(cfg_perturb.cwa_reverse_size),
                                     inner_size=float(cfg_perturb.cwa_inner_size),
                                     inner_momentum=float(cfg_perturb.cwa_inner_momentum))


def noise_change(key, x0, mask, norm: str, epsilon: float) -> np.ndarray:
    """The control protection is measured against: Gaussian noise that uses the whole
    budget (``perturb.project`` of noise larger than it), clipped to the pixel range and
    zero where ``mask`` is. It is aimed at nothing, so what it costs (a diagnosis AUC, a
    match) is what any change of that size costs."""
    noise = 10.0 * epsilon * np.asarray(jax.random.normal(key, x0.shape), np.float32)
    if mask is not None:
        noise = noise * mask
    delta = np.asarray(perturb.project(noise, norm, epsilon), np.float32)
    return np.clip(x0 + delta, 0.0, 1.0) - x0


@dataclasses.dataclass
class ProtectionInputs:
    """What every batch of a protection run is built from: the views to protect
    (``model_input.read_parts``), and the rows, embeddings under every member and
    impostor counts its references (``objective``) are taken from."""

    sources: list
    data_cfg: object
    ref_rows: list
    row_index: dict
    embeddings: list
    impostors: dict

    every_slice: bool = True

    @classmethod
    def of(cls, rows_all, targets, members, config, progress: bool = True,
           read: bool = True, keep_beside: str | None = None) -> "ProtectionInputs":
        """The references of ``targets``' patients (their embeddings' chunks kept beside
        ``keep_beside``: ``reference_embeddings``); their views too unless ``read`` is
        False (``protect_rows`` reads them a chunk at a time: ``with_views``)."""
        # per modality, checked before any image is read: its objective's impostor count
        impostors = {m: objective.impostors_needed(config.perturb, m) for m in
                     sorted({r.modality for r in targets})}
        data_cfg = members[0].embedder.data_cfg
        ref_rows = references.reference_rows(rows_all, targets)
        inputs = cls([], data_cfg, ref_rows, {r.image_id: i for i, r in enumerate(ref_rows)},
                     reference_embeddings(members, ref_rows, progress, keep_beside), impostors,
                     bool(config.get("every_slice", True)))
        return inputs.with_views(targets, progress) if read else inputs

    def with_views(self, rows, progress: bool = False) -> "ProtectionInputs":
        """These inputs with the views of ``rows`` as ``sources`` (their pixels read)."""
        sources = [part for r in tqdm(rows, desc="read", unit="img", disable=not progress)
                   for part in read_parts(r, settings_for(self.data_cfg, r.modality),
                                          self.every_slice)]
        return dataclasses.replace(self, sources=sources)

    def batch(self, group, start: int, size: int, imap, cfg_perturb):
        """(views, views padded to a fixed batch size with the last one, their pixels x0,
        stain offset, references) of ``group[start:start + size]``: a fixed batch size
        compiles the step once."""
        batch = group[start:start + size]
        padded = batch + [batch[-1]] * (min(size, len(group)) - len(batch))
        x0 = np.stack([s.unit for s in padded])
        refs = references.build_references(padded, self.embeddings, self.ref_rows,
                                           self.row_index,
                                           str(cfg_perturb.get("target", "farthest")),
                                           self.impostors[padded[0].row.modality])
        return batch, padded, x0, imap.stain_offset(x0), refs


def member_score_fn(members, imap, cfg_perturb, modality: str):
    """One member's training score (``objective.make_member_score_fn``) for ``modality``'s
    views: every member shares the model config, so the step compiles it once and combines
    its gradient over the ensemble (``perturb.make_step``)."""
    tokens = None
    if float(cfg_perturb.get("feature_weight", 0.0)):
        tokens = ensemble.tokens_fn(members[0].embedder.model_cfg, str(cfg_perturb.feature_layer))
    return objective.make_member_score_fn(members[0].embed, imap, cfg_perturb,
                                          int(cfg_perturb.views), with_target=True,
                                          tokens_fn=tokens, modality=modality)


def member_sets(targets: Sequence[ManifestRow], members, modality_members: dict
                ) -> list[tuple[list, list]]:
    """(members, the targets they protect): ``members`` for every modality that
    ``modality_members`` does not name (first), then each named modality with its own."""
    default = [r for r in targets if r.modality not in modality_members]
    out = [(members, default)] if default else []
    for modality, chosen_members in modality_members.items():
        chosen = [r for r in targets if r.modality == modality]
        if chosen:
            out.append((chosen_members, chosen))
    return out


def check_settings(config, targets: Sequence[ManifestRow]) -> None:
    """ValueError naming the first setting of the privacy config that cannot protect
    ``targets``: checked before any model is read or anything is written."""
    if config.method not in METHODS:
        raise ValueError(f"method={config.method!r}: expected one of {METHODS}")
    for key in ("batch_size", "read_chunk"):
        if int(config[key]) < 1:
            raise ValueError(f"{key}={config[key]!r}: must be at least 1")
    if config.method == "inpaint" and (tuple(config.perturb.ensemble)
                                       or dict(config.perturb.modality_ensemble)):
        raise ValueError("method='inpaint' removes the strongest cue regions of --workdir's "
                         "model alone: perturb.ensemble / perturb.modality_ensemble would be "
                         "read and never used; empty them, or use method='both'")
    perturb.check_norm(config.perturb.norm)
    own_weight = config.perturb.own_weight
    require(is_number(own_weight) and own_weight >= 0, "perturb.own_weight", own_weight,
            "a weight >= 0 of the similarity to the own original")
    check_identity_setting(config.metadata.identity)
    check_modality_settings(config.perturb, {r.modality for r in targets})
    check_search(config)


def check_search(config) -> None:
    """The search of ``config.method`` (the perturbation's, the deformation's, the region
    removal's) can change an image: at least one step of a positive size
    (``perturb.steps=0`` wrote unchanged copies as protected ones), a momentum in [0, 1],
    views and shifts >= 0, a removed share of pixels in (0, 1)."""
    if config.method in ("inpaint", "both"):
        fraction, iterations = config.inpaint.region_fraction, config.inpaint.iterations
        require(is_number(fraction) and 0 < fraction < 1, "inpaint.region_fraction", fraction,
                f"a share of pixels in (0, 1) (method {config.method!r})")
        require(is_whole(iterations) and iterations >= 0, "inpaint.iterations", iterations,
                f"a whole number >= 0 (0: the mean fill) (method {config.method!r})")
        require(config.inpaint.cue in CUES, "inpaint.cue", config.inpaint.cue,
                f"one of {', '.join(CUES)} (method {config.method!r})")
        check_cue_settings(config.cues)
    name = {"perturb": "perturb", "both": "perturb", "deform": "deform"}.get(config.method)
    if name is None:
        return
    block = config[name]
    checks = [("steps", is_whole(block.steps) and block.steps >= 1, "a whole number >= 1"),
              ("step_size", is_number(block.step_size) and block.step_size > 0, "a number > 0"),
              ("momentum", is_number(block.momentum) and 0 <= block.momentum <= 1,
               "a number in [0, 1]")]
    if name == "perturb":
        checks += [("views", is_whole(block.views) and block.views >= 0,
                    "a whole number >= 0 (0: the plain image)"),
                   ("shift", is_whole(block.shift) and block.shift >= 0,
                    "a whole number of pixels >= 0"),
                   ("noise", is_number(block.noise) and block.noise >= 0, "a number >= 0")]
    for key, ok, expected in checks:
        require(ok, f"{name}.{key}", block[key], f"{expected} (method {config.method!r})")


def protect_rows(rows_all: Sequence[ManifestRow], targets: Sequence[ManifestRow], members,
                 config, manifest_dir: str, out_dir: str, progress: bool = True,
                 modality_members: dict | None = None, log: ProtectLog | None = None):
    """Protects ``targets`` (rows of ``rows_all``); returns (new rows, per-image records in
    the order of ``targets``).

    ``config.every_slice``: a series is protected slice group by slice group
    (``model_input.read_parts``), so that no slice is left as it was; else only the slices
    evaluation reads. A record's match scores are those of the evaluation view.

    ``modality_members`` (modality -> members, ``ensemble.load_modality_members``) replaces
    ``members`` for that modality's images: each set of members protects its rows as a run
    of its own on those rows would (from ``config.seed``).

    ``config.read_chunk`` rows are read at a time (their pixels held in memory; the
    references are embedded once for all), and each batch's random key is derived from its
    chunk and its place in it, so a run's output does not depend on what was skipped.

    ``log`` (``protect_log``): every finished image is added to it, and a batch whose
    images it already holds (their files still there) is not protected again, a chunk of
    finished rows not even read: a resumed run writes what an uninterrupted one would. With
    a log, the references' embeddings are kept beside ``out_dir`` until the run ends, so a
    resumed run does not embed them again under every member, and the de-identified UIDs
    are keyed by the log's secret (without one, by a secret of this call alone)."""
    check_settings(config, targets)
    check_writable(r.path for r in targets)
    check_distinct_copies(targets, manifest_dir, out_dir)
    if modality_members and str(config.perturb.get("keep_diagnosis", "")):
        raise ValueError("perturb.keep_diagnosis names a classifier per member of one ensemble; "
                         "it cannot be combined with perturb.modality_ensemble")
    # every set's inputs and keepers first: their checks (a modality's objective, a
    # classifier of another model) end the run before the progress bar starts
    keep_beside = out_dir if log is not None else None
    runs = [(chosen_members, chosen, ProtectionInputs.of(rows_all, chosen, chosen_members,
                                                         config, progress, read=False,
                                                         keep_beside=keep_beside),
             keepers_of(config.perturb, chosen_members))
            for chosen_members, chosen in member_sets(targets, members, modality_members or {})]
    new_rows, records = {}, {}
    uid_key = log.uid_key if log is not None else new_uid_key()
    finished = _finished(log, targets, manifest_dir, out_dir)
    bar = tqdm(total=len(targets), initial=len(finished), desc="protect", unit="img",
               disable=not progress)
    try:
        for chosen_members, chosen, inputs, keepers in runs:
            _protect_with(inputs, chosen, _Run(chosen_members, keepers, config, manifest_dir,
                                               out_dir, new_rows, records, bar, log, finished,
                                               uid_key))
    finally:                # an interrupted run's bar ends before its message
        bar.close()
    for row in targets:
        if row.image_id not in new_rows:        # finished before, in a skipped batch
            new_rows[row.image_id] = protected_row(row, manifest_dir, out_dir)
            records[row.image_id] = log.records[row.image_id]
    if keep_beside is not None:
        discard_beside(out_dir)
    return ([new_rows[r.image_id] for r in targets], [records[r.image_id] for r in targets])


def _finished(log: ProtectLog | None, targets, manifest_dir: str, out_dir: str) -> set[str]:
    if log is None:
        return set()
    return {r.image_id for r in targets
            if log.finished(r.image_id, output_path(r, manifest_dir, out_dir)[0])}


def protected_row(row: ManifestRow, manifest_dir: str, out_dir: str) -> ManifestRow:
    """The manifest row of ``row``'s protected copy."""
    return row.replace(image_id=row.image_id + SUFFIX,
                       path=output_path(row, manifest_dir, out_dir)[1])


@dataclasses.dataclass
class _Run:
    """One set of members protecting its rows: what every chunk of those rows shares."""
    members: list
    keepers: list
    config: object
    manifest_dir: str
    out_dir: str
    new_rows: dict              # image_id -> its protected copy's row
    records: dict               # image_id -> its record
    bar: object
    log: ProtectLog | None
    finished: set               # image_ids the log holds, their files still there
    uid_key: bytes              # keys the de-identified headers' UIDs (derived_uids)
    steps: dict = dataclasses.field(default_factory=dict)   # (modality, view shape) -> functions

    @property
    def params(self):
        return [m.params for m in self.members]


def _protect_with(refs: ProtectionInputs, rows, run: _Run) -> None:
    """``protect_rows`` for one set of members and its ``rows``, ``read_chunk`` rows at a
    time; a chunk whose rows are all finished is not read."""
    seed = jax.random.key(int(run.config.seed))
    chunk = int(run.config.get("read_chunk", 256))
    if chunk < 1:
        raise ValueError(f"read_chunk={chunk}: expected at least 1 row")
    for c, first in enumerate(range(0, len(rows), chunk)):
        part = rows[first:first + chunk]
        if not all(r.image_id in run.finished for r in part):
            _protect_chunk(refs.with_views(part), jax.random.fold_in(seed, c), run)


def _group_functions(members, keepers, config, modality: str, h: int, w: int, data_cfg):
    """(input map, budget, the plain score, the cue maps' score, the ensemble's step, the
    deformation step) of one modality and view shape: compiled once and kept for every
    chunk."""
    imap = InputMap(settings_for(data_cfg, modality), h, w)
    train_score = member_score_fn(members, imap, config.perturb, modality)
    plain_main = jax.jit(objective.make_score_fn(members[:1], imap, config.perturb, 0))
    cue_score = objective.make_score_fn(members[:1], imap, config.perturb, 0,
                                        own_weight=cues_lib.CUE_OWN_WEIGHT)
    keep = [(m, k.change_fn(imap, modality, config.perturb, int(config.perturb.views)))
            for m, k in enumerate(keepers)]
    epsilon = epsilon_for(config.perturb, modality)
    weighting = (perturb.weighting_for(config.perturb, modality),
                 float(config.perturb.get("hardest_temperature", 0.05)))
    step = ensemble_step(config.perturb, train_score, epsilon, keep, weighting)
    deform_step = (deform_lib.make_step(train_score, h, w, config.deform,
                                        config.perturb.norm, epsilon, *weighting)
                   if config.method == "deform" else None)
    return imap, epsilon, plain_main, cue_score, step, deform_step


def _protect_chunk(inputs: ProtectionInputs, key, run: _Run) -> None:
    config, params = run.config, run.params
    pending = PendingRows(inputs.sources, inputs.data_cfg)
    size, number = int(config.batch_size), 0
    for shape_key, group in groups_of(inputs.sources).items():
        modality, _, h, w, _ = shape_key
        if shape_key not in run.steps:
            run.steps[shape_key] = _group_functions(run.members, run.keepers, config, modality,
                                                    h, w, inputs.data_cfg)
        imap, epsilon, plain_main, cue_score, step, deform_step = run.steps[shape_key]
        value_window = settings_for(inputs.data_cfg, modality).value_window
        for start in range(0, len(group), size):
            sub = jax.random.fold_in(key, number)
            number += 1
            if all(s.row.image_id in run.finished for s in group[start:start + size]):
                continue
            batch, padded, x0, offset, refs = inputs.batch(group, start, size, imap,
                                                           config.perturb)
            main = refs.first().arrays()
            before = np.asarray(plain_main(params[:1], x0, offset, main, jax.random.key(0)))
            delta = np.zeros_like(x0)
            mask, owned = change_mask(padded, x0, value_window)
            if config.method in ("inpaint", "both"):
                maps = _cue_maps(config, cue_score, params[:1], x0, offset, refs.first())
                delta = inpaint_lib.inpaint(x0, maps, float(config.inpaint.region_fraction),
                                            int(config.inpaint.iterations))
            if config.method == "noise":
                delta = noise_change(sub, x0, mask, config.perturb.norm, epsilon)
            if config.method == "deform":
                delta, _, _ = deform_lib.deform(
                    deform_step, params, x0, offset, refs, int(config.deform.steps), sub,
                    slice_mask=None if owned is None else owned[:, :, 0, 0, 0])
            if config.method in ("perturb", "both"):
                delta, _ = perturb.perturb(step, params, x0, offset, refs, int(config.perturb.steps),
                                           sub, mask=mask,
                                           start=delta if config.method == "both" else None)
            after = np.asarray(plain_main(params[:1], x0 + delta, offset, main, jax.random.key(0)))
            for b, s in enumerate(batch):
                whole = pending.add(s, delta[b], float(before[b]), float(after[b]))
                if whole is None:
                    continue
                row = s.row
                out_abs, _ = output_path(row, run.manifest_dir, run.out_dir)
                # Region removal is not bounded by the budget; every other method keeps
                # it on disk, in its norm, after the file's rounding.
                bound = math.inf if config.method in ("inpaint", "both") else epsilon
                if run.log is not None:
                    run.log.start()
                written, on_disk, max_on_disk = write_within_budget(
                    row.path, whole.slices, whole.delta, out_abs, bound, whole.views,
                    value_window, config.perturb.norm)
                removed = (remove_identity(out_abs, run.uid_key)
                           if config.metadata.identity == "remove"
                           else 0)
                run.new_rows[row.image_id] = protected_row(row, run.manifest_dir, run.out_dir)
                record = {"image_id": row.image_id, "modality": modality,
                          "epsilon": epsilon,
                          "score_before": whole.score_before,
                          "score_after": whole.score_after,
                          "max_abs_change": max_on_disk,
                          "psnr_db": psnr(whole.unit, whole.unit + written),
                          "psnr_db_on_disk": psnr_of_rms(on_disk),
                          "change_scaled_by": ratio_of_changes(written, whole.delta),
                          "slices_protected": int(len(set(whole.slices.tolist()))),
                          "header_elements_removed": removed,
                          "files_not_copied": len(files_left_out(row.path)),
                          "burned_in_annotation": says_burned_in_text(row.path)}
                run.records[row.image_id] = record
                if run.log is not None:
                    run.log.add(record)
                if row.image_id not in run.finished:
                    run.bar.update(1)


def ratio_of_changes(written: np.ndarray, optimised: np.ndarray) -> float:
    """How much of the optimised change was written (1 unless the file's rounding forced a
    smaller one: ``written_budget``); 1 for no change."""
    size = rms_change(0.0, optimised)
    return 1.0 if size == 0 else rms_change(0.0, written) / size


def _cue_maps(config, score_fn, params, x0, offset, refs):
    if config.inpaint.cue == "occlusion":
        return cues_lib.occlusion_maps(score_fn, params, x0, offset, refs,
                                       int(config.cues.occlusion_patch),
                                       int(config.cues.occlusion_stride))
    return cues_lib.gradient_maps(score_fn, params, x0, offset, refs, float(config.cues.smooth))
