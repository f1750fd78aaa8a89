"""The scalars a training run logged, read back from its TensorBoard files.

    from mami_jax.train.logged_scalars import read_scalars
    curves = read_scalars(WORKDIR)            # {"train/loss": (steps, values), ...}

The trainer writes its scalars (``train/<metric>`` every ``train.log_every`` steps,
``eval/<group>/<metric>`` at each evaluation) through
``mami_jax.runtime.metric_writer.MetricWriter`` into ``WORKDIR/tb``, as TensorBoard
event files: TFRecord framing around ``Event`` protocol buffers. This module reads
them without TensorBoard or TensorFlow (the framing and its CRCs are checked by
``mami_jax.data.teacher_features.iter_records``; the protobuf classes ship with
tensorboardX), for notebooks and scripts that plot a run's curves.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from mami_jax.data.teacher_features import TeacherFeatureError, iter_records

__all__ = ["read_scalars"]

#: Sub-folder of a workdir where the trainer's MetricWriter writes.
TB_SUBDIR = "tb"
EVENT_GLOB = "events.out.tfevents.*"


def _event_files(path: str) -> list[str]:
    folder = path
    if not glob.glob(os.path.join(folder, EVENT_GLOB)) and os.path.isdir(
            os.path.join(path, TB_SUBDIR)):
        folder = os.path.join(path, TB_SUBDIR)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: no such folder (expected a training workdir or "
                                f"its {TB_SUBDIR}/ folder)")
    files = sorted(glob.glob(os.path.join(folder, EVENT_GLOB)))
    if not files:
        raise FileNotFoundError(f"{folder}: no TensorBoard event files ({EVENT_GLOB}); has "
                                "the run logged anything yet?")
    return files


def read_scalars(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag under ``path`` (a workdir or its ``tb/`` folder) as (steps, values),
    sorted by step; a step logged twice (a resumed run) keeps its last value."""
    from tensorboardX.proto.event_pb2 import Event

    points: dict[str, dict[int, float]] = {}
    for name in _event_files(path):
        try:
            records = list(iter_records(name))
        except TeacherFeatureError as e:   # a corrupt or cut-off event file
            raise ValueError(str(e)) from None
        for index, payload in records:
            event = Event()
            try:
                event.ParseFromString(payload)
            except Exception as e:  # protobuf's DecodeError
                raise ValueError(f"{name}: record {index} is not a TensorBoard event "
                                 f"({e})") from None
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    points.setdefault(value.tag, {})[int(event.step)] = float(
                        value.simple_value)
    out = {}
    for tag, by_step in sorted(points.items()):
        steps = np.asarray(sorted(by_step), np.int64)
        out[tag] = (steps, np.asarray([by_step[s] for s in steps], np.float64))
    return out
