"""The grain input pipeline: patient-balanced training batches and padded eval batches.

Training (``make_train_loader``): one grain element is one per-process batch of one
step. Element ``step`` is built by ``sampler.plan_step(sources, P, K, seed, step)``
(a pure function of seed and step), from which this process takes its contiguous
share of the global P*K images; then it decodes, samples T slices and augments
each image with ``np.random.default_rng([seed, step, 1, position in global batch])``.
Nothing depends on the worker count, thread timing or what ran before, so:

- ``iterator.get_state()`` / ``set_state()`` (a grain ``DatasetIterator``; orbax saves
  it with ``grain.checkpoint.CheckpointSave``) resume exactly;
- process p of N reads only its own share (``process_index``, ``process_count``);
  concatenating the shares in process order gives the global batch.

Batch (numpy): ``images`` float32 (B, T, H, W, 3) normalised; ``label`` int32 (B,)
identity label (``train_label_map``; -1 for a patient outside the training split);
``index`` int32 (B,) row index into ``rows`` (-1 on padding); ``modality`` int32 (B,)
index into ``MODALITIES``; ``mask`` bool (B,): False on eval padding and on images
skipped as unreadable. With teacher features (``teachers=``, data/teacher_join.py) a
training batch also holds ``teacher`` {name: (B, D_t) float32} and ``teacher_mask``
{name: (B,) bool}, joined by manifest row.

Evaluation (``make_eval_loader``): the given row indices grouped by source (one T
per batch), each group in the given order, its last batch padded to ``batch_size``; as in
training, process p of N reads and yields only its contiguous share of each batch.

Bad input: duplicate image ids, a patient in two splits, an unknown modality or an
empty training set raise before the first batch (``manifest.validate_rows``). An
unreadable image raises ``example_reader.DataError`` naming the manifest row, image id and file;
with ``cfg.skip_bad_images`` it becomes a masked-out zero image and is counted in
the loader's ``skipped_images`` (print it at the end of the run).

Workers: ``cfg.num_workers`` grain processes (0 = in the main process), each
decoding ``cfg.read_threads`` batches at a time, ``cfg.prefetch`` batches ahead;
``worker_processes`` is what they need around them (flags, Ctrl-C, their shared memory).
"""

from __future__ import annotations


import sys
import threading
from typing import Sequence

import grain
import numpy as np

from mami_jax.data import sampler, worker_processes
from mami_jax.tuple_flags import text_tuple_flag
from mami_jax.data.config import only_modalities, sampler_source_weights
from mami_jax.data.example_reader import ExampleReader
from mami_jax.data.manifest import MODALITIES, ManifestError, ManifestRow, validate_rows
from mami_jax.data.splits import split_counts
from mami_jax.runtime.interrupts import leave_stops_to_the_parent

MODALITY_INDEX = {m: i for i, m in enumerate(MODALITIES)}
train_label_map = sampler.train_label_map


def num_classes(rows: Sequence[ManifestRow], identity_classes: str = "patient") -> int:
    """Number of identity classes: training patients (or patients x modalities)."""
    return len(train_label_map(rows, identity_classes))


def _collate(images, labels, indices, modalities, mask, skipped) -> dict:
    return {
        "images": np.stack(images).astype(np.float32, copy=False),
        "label": np.asarray(labels, np.int32),
        "index": np.asarray(indices, np.int32),
        "modality": np.asarray(modalities, np.int32),
        "mask": np.asarray(mask, bool),
        "_skipped": int(skipped),
    }


def read_planned(reader: ExampleReader, source: sampler.Source, plan: sampler.StepPlan,
                 seed: int, pos: int) -> tuple[np.ndarray, bool]:
    """(image, ok) at position ``pos`` of a step's global batch: its row read with the
    training transform of that step and position (``read_or_skip``)."""
    rng = np.random.default_rng([int(seed), int(plan.step), 1, int(pos)])
    return reader.read_or_skip(int(plan.rows[pos]), source.num_slices, rng)


class _TrainBatch:
    """grain map: step -> this process's share of the step's batch."""

    def __init__(self, reader, sources, cfg, seed, process_index, process_count, teachers=None):
        self.reader = reader
        self.teachers = teachers
        self.sources = sources
        self.p = int(cfg.patients_per_batch)
        self.k = int(cfg.images_per_patient)
        self.seed = int(seed)
        self.local = self.p * self.k // process_count
        self.offset = process_index * self.local

    def __call__(self, step: int) -> dict:
        plan = sampler.plan_step(self.sources, self.p, self.k, self.seed, step)
        src = self.sources[plan.source]
        images, mask, skipped = [], [], 0
        positions = range(self.offset, self.offset + self.local)
        for pos in positions:
            x, ok = read_planned(self.reader, src, plan, self.seed, pos)
            images.append(x)
            mask.append(ok)
            skipped += not ok
        sl = slice(self.offset, self.offset + self.local)
        batch = _collate(images, plan.labels[sl], plan.rows[sl],
                         [MODALITY_INDEX[src.modality]] * self.local, mask, skipped)
        if self.teachers is not None:
            batch.update(self.teachers.join(plan.rows[sl]))
        return batch


class _EvalBatch:
    """grain map: (T, modality index, row indices with -1 padding) -> this process's
    share of the batch: positions [offset, offset + local) of it."""

    def __init__(self, reader, labels, offset: int, local: int):
        self.reader = reader
        self.labels = labels  # int32 per row: train label or -1
        self.offset, self.local = offset, local

    def __call__(self, item) -> dict:
        t, modality, indices = item
        indices = indices[self.offset:self.offset + self.local]
        size = self.reader.eval_image_size(MODALITIES[modality])
        images, mask, skipped = [], [], 0
        for i in indices:
            if i < 0:
                images.append(np.zeros((t, size, size, 3), np.float32))
                mask.append(False)
                continue
            x, ok = self.reader.read_or_skip(int(i), t, None)
            images.append(x)
            mask.append(ok)
            skipped += not ok
        labels = [int(self.labels[i]) if i >= 0 else -1 for i in indices]
        return _collate(images, labels, indices, [modality] * len(indices), mask, skipped)


class SkipCounter:
    """grain map in the consuming process: removes and sums the per-batch skip counts."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def __call__(self, batch: dict) -> dict:
        n = batch.pop("_skipped")
        if n:
            with self._lock:
                self.value += int(n)
        return batch


def _finish(ds: "grain.MapDataset", cfg, counter: SkipCounter) -> "grain.IterDataset":
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(cfg.read_threads),
                                              prefetch_buffer_size=int(cfg.prefetch)))
    if int(cfg.num_workers) > 0:
        worker_processes.prepare()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=int(cfg.num_workers), per_worker_buffer_size=max(1, int(cfg.prefetch))),
            worker_init_fn=leave_stops_to_the_parent)
    return it.map(counter)


def _check_rows(rows: Sequence[ManifestRow]) -> None:
    validate_rows(rows, source="training rows")


class TrainLoader:
    """Iterable of per-process training batches; ``iter()`` gives a grain DatasetIterator."""

    def __init__(self, rows, cfg, *, seed: int, process_index: int = 0, process_count: int = 1,
                 start_step: int = 0, teachers=None):
        rows = list(rows)
        _check_rows(rows)
        p, k = int(cfg.patients_per_batch), int(cfg.images_per_patient)
        if p < 1 or k < 1:
            raise ValueError(f"patients_per_batch={p} and images_per_patient={k} must be >= 1")
        local = _process_share(p * k, process_index, process_count,
                               f"global batch P*K = {p * k} is not divisible by the "
                               f"{process_count} processes")
        if seed < 0 or start_step < 0:
            raise ValueError(f"seed ({seed}) and start_step ({start_step}) must be >= 0")
        if not any(r.split == "train" for r in rows):
            where = f"{rows[0].location[0]}: " if rows and rows[0].location else ""
            raise ManifestError(
                f"{where}no training rows (split 'train'; the rows' splits: "
                f"{split_counts(rows)}): "
                "give some rows split 'train', or leave the split column empty in every row "
                "and patient-disjoint splits are assigned (data.split_fractions)")
        self.rows = rows
        self.cfg = cfg
        self.seed = int(seed)
        self.process_index, self.process_count = process_index, process_count
        self.start_step = int(start_step)
        self.teachers = teachers  # teacher_join.TeacherTable or None
        self.label_map = train_label_map(rows, cfg.identity_classes)
        self.num_classes = len(self.label_map)
        self._reader = ExampleReader(rows, cfg)
        settings = self._reader.settings
        trained = {r.modality for r in rows if r.split == "train"}
        kept = only_modalities(cfg)
        for m, s in settings.items():
            if s.source_weight is not None and m not in trained and (not kept or m in kept):
                raise ValueError(
                    f"data.modalities.{m}.source_weight={s.source_weight}: no training rows of "
                    f"modality {m!r} (training modalities: {sorted(trained)}); train on those "
                    f"only with {text_tuple_flag('data.only_modalities', sorted(trained))}")
        self.sources = sampler.build_sources(
            rows, slices={m: s.slices for m, s in settings.items()},
            source_weights=sampler_source_weights(cfg, settings), label_map=self.label_map,
            identity_classes=cfg.identity_classes)
        self.global_batch_size = p * k
        self.local_batch_size = local
        self._counter = SkipCounter()

    @property
    def skipped_images(self) -> int:
        """Images skipped as unreadable so far (only with cfg.skip_bad_images)."""
        return self._counter.value

    def dataset(self) -> "grain.IterDataset":
        fn = _TrainBatch(self._reader, self.sources, self.cfg, self.seed,
                         self.process_index, self.process_count, self.teachers)
        ds = grain.MapDataset.range(self.start_step, sys.maxsize).map(fn)
        return _finish(ds, self.cfg, self._counter)

    def __iter__(self):
        """A grain DatasetIterator (get_state/set_state); call ``close()`` on it when done
        if ``num_workers`` > 0, to stop the worker processes promptly."""
        return iter(self.dataset())

    def plan(self, step: int) -> sampler.StepPlan:
        """The global plan of ``step`` (for inspection and tests)."""
        return sampler.plan_step(self.sources, int(self.cfg.patients_per_batch),
                                 int(self.cfg.images_per_patient), self.seed, step)

    def normalization(self, modality: str) -> str:
        """``data.normalization`` as ``modality``'s inputs have it (``display_view`` undoes it)."""
        return self._reader.settings[modality].augment.normalization

    def read_planned(self, step: int, positions: Sequence[int]) -> list[tuple[np.ndarray, bool]]:
        """(image, ok) at ``positions`` of plan ``step``'s global batch, exactly as the
        batch holds them (``training_batches`` draws them)."""
        plan = self.plan(step)
        return [read_planned(self._reader, self.sources[plan.source], plan, self.seed, pos)
                for pos in positions]

    def summary(self) -> str:
        lines = [f"training: {self.num_classes} identity classes (one per "
                 f"{self.cfg.identity_classes.replace('_', ' x ')}), "
                 f"{sum(s.num_images for s in self.sources)} images, global batch "
                 f"{self.global_batch_size} = P {self.cfg.patients_per_batch} x K "
                 f"{self.cfg.images_per_patient}, this process reads {self.local_batch_size}"]
        lines += ["  " + s for s in sampler.summary_lines(self.sources, int(self.cfg.patients_per_batch))]
        never = sum(s.num_single_image for s in self.sources)
        lines.append(f"  patients never sampled (fewer than 2 training images in their source): {never}")
        if self.teachers is not None:
            lines.append("  " + self.teachers.summary())
        return "\n".join(lines)


def make_train_loader(rows: Sequence[ManifestRow], cfg, *, seed: int, process_index: int = 0,
                      process_count: int = 1, start_step: int = 0,
                      teachers=None) -> TrainLoader:
    """Training batches of ``rows`` (those with split "train") for this process; with
    ``teachers`` (a ``teacher_join.TeacherTable`` built on ``rows``) the joined features."""
    return TrainLoader(rows, cfg, seed=seed, process_index=process_index,
                       process_count=process_count, start_step=start_step, teachers=teachers)


class EvalLoader:
    """Iterable of padded evaluation batches, grouped by source, in the given order.

    As in training, process p of N reads and yields only its contiguous share of each
    batch of ``batch_size`` (every field: images, label, index, modality, mask), and the
    shares concatenated in process order are the 1-process batch; ``skipped_images``
    counts this process's share. Every process iterates the same batches."""

    def __init__(self, rows, indices, cfg, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1):
        rows = list(rows)
        validate_rows(rows, source="evaluation rows")
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self.local_batch_size = _process_share(
            batch_size, process_index, process_count,
            f"evaluation batch size {batch_size} does not split over {process_count} processes")
        self.offset = process_index * self.local_batch_size
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(rows)]
        if bad:
            raise IndexError(f"row indices {bad[:10]} out of range for {len(rows)} rows")
        self._reader = ExampleReader(rows, cfg)
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(sampler.source_name(rows[i].dataset, rows[i].modality), []).append(i)
        self.batches = []  # (T, modality index, row indices padded with -1)
        self.group_sizes = {}
        for name, members in groups.items():
            modality = rows[members[0]].modality
            t = self._reader.settings[modality].slices
            self.group_sizes[name] = len(members)
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                chunk = chunk + [-1] * (batch_size - len(chunk))
                self.batches.append((t, MODALITY_INDEX[modality], np.asarray(chunk, np.int64)))
        label_map = train_label_map(rows, cfg.identity_classes)
        self._labels = np.asarray([label_map.get(sampler.identity_key(r, cfg.identity_classes), -1)
                                   for r in rows], np.int32)
        self.rows, self.cfg, self.batch_size = rows, cfg, batch_size
        self._counter = SkipCounter()

    @property
    def skipped_images(self) -> int:
        return self._counter.value

    def __len__(self) -> int:
        return len(self.batches)

    def dataset(self) -> "grain.IterDataset":
        ds = grain.MapDataset.source(self.batches).map(
            _EvalBatch(self._reader, self._labels, self.offset, self.local_batch_size))
        return _finish(ds, self.cfg, self._counter)

    def __iter__(self):
        """Yields every batch once; worker processes are shut down at the end."""
        it = iter(self.dataset())
        try:
            yield from it
        finally:
            it.close()


def _process_share(batch_size: int, process_index: int, process_count: int,
                   uneven: str) -> int:
    """The rows of a batch of ``batch_size`` that each of ``process_count`` processes reads
    (training's and evaluation's loaders alike); ValueError ``uneven`` when it does not
    split evenly."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(uneven)
    return batch_size // process_count


def make_eval_loader(rows: Sequence[ManifestRow], indices: Sequence[int], cfg,
                     batch_size: int, *, process_index: int = 0,
                     process_count: int = 1) -> EvalLoader:
    """Evaluation batches of ``rows[indices]``, ``batch_size`` rows each (``eval.batch_size``),
    of which this process (``process_index`` of ``process_count``) reads its share."""
    return EvalLoader(rows, indices, cfg, batch_size, process_index=process_index,
                      process_count=process_count)
