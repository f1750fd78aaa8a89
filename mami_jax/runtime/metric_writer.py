"""Scalars to TensorBoard event files and the log, from process 0 only.

The events are written here, in the caller's thread (tensorboardX's ``EventsWriter``), not
through ``SummaryWriter``, whose writer thread and exit hook each printed a traceback when
the disk filled up, after the run's own one-line error. A write that fails (no space left,
a folder gone) is one warning, and the run goes on without its TensorBoard scalars: what
stops a run on a full disk is the checkpoint it cannot save (``runtime.no_space``).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import logging


class MetricWriter:
    def __init__(self, logdir: str):
        self._events = None
        self._logdir = logdir
        if jax.process_index() == 0:
            self._guarded(self._open)

    def _open(self) -> None:
        from tensorboardX.event_file_writer import EventsWriter

        os.makedirs(self._logdir, exist_ok=True)
        self._events = EventsWriter(os.path.join(self._logdir, "events"))

    def _guarded(self, write) -> None:
        """``write()``; an OSError stops the event file, with one warning."""
        try:
            write()
        except OSError as e:
            logging.warning("TensorBoard scalars are no longer written to %s: %s",
                            self._logdir, e)
            events, self._events = self._events, None
            if events is not None:
                try:
                    events.close()
                except OSError:
                    pass

    def write_scalars(self, step: int, scalars: dict) -> None:
        if jax.process_index() != 0:
            return
        clean = {k: float(np.asarray(v)) for k, v in scalars.items() if np.ndim(v) == 0}
        clean = {k: v for k, v in clean.items() if np.isfinite(v)}  # e.g. AUC of one patient
        if self._events is not None:
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.proto.summary_pb2 import Summary

            event = Event(wall_time=time.time(), step=int(step), summary=Summary(value=[
                Summary.Value(tag=k, simple_value=v) for k, v in clean.items()]))
            self._guarded(lambda: (self._events.write_event(event), self._events.flush()))
        logged = ", ".join(f"{k}={v:.5g}" for k, v in clean.items() if k.startswith("train/"))
        if logged:      # an evaluation's scalars: its table is printed instead
            logging.info("step %d: %s", step, logged)

    def close(self) -> None:
        if self._events is not None:
            self._guarded(self._events.close)
            self._events = None
