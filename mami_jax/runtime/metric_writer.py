"""Scalars to TensorBoard (tensorboardX) and the log, from process 0 only."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging


class MetricWriter:
    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir)

    def write_scalars(self, step: int, scalars: dict) -> None:
        if self._writer is None:
            return
        clean = {k: float(np.asarray(v)) for k, v in scalars.items() if np.ndim(v) == 0}
        clean = {k: v for k, v in clean.items() if np.isfinite(v)}  # e.g. AUC of one patient
        for key, value in clean.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()
        logged = ", ".join(f"{k}={v:.5g}" for k, v in clean.items() if k.startswith("train/"))
        if logged:      # an evaluation's scalars: its table is printed instead
            logging.info("step %d: %s", step, logged)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
