"""How fast a run trains, logged beside its losses: images per second (in all and per
device), seconds per step, and images seen.

A long run on a TPU or GPU is watched in TensorBoard, not in a terminal's progress bar, and
its speed says whether the input pipeline keeps the accelerators busy (per device, so that
runs on different slices compare) and when it will end. The clock is read at logged steps
only, where the trainer fetches the step's metrics: that waits for the step to finish, so an
interval covers exactly the steps in it. The first interval of a process includes the
compilation of the step and is not reported, nor is one that held an evaluation (``restart``).
"""

from __future__ import annotations

import time
from typing import Callable


class Throughput:
    """``at(step)`` at every logged step gives the scalars to log with it."""

    def __init__(self, global_batch_size: int, devices: int,
                 clock: Callable[[], float] = time.perf_counter):
        self.batch, self.devices, self._clock = int(global_batch_size), int(devices), clock
        self._last: tuple[int, float] | None = None

    def at(self, step: int) -> dict[str, float]:
        """``images_seen`` always; the rates over the steps since the last logged one
        when there was one (and no ``restart`` since)."""
        now = self._clock()
        out = {"images_seen": float(step * self.batch)}
        if self._last is not None and step > self._last[0] and now > self._last[1]:
            steps, seconds = step - self._last[0], now - self._last[1]
            rate = steps * self.batch / seconds
            out.update(images_per_second=rate, images_per_second_per_device=rate / self.devices,
                       step_seconds=seconds / steps)
        self._last = (step, now)
        return out

    def restart(self) -> None:
        """Forget the last logged step: the next interval would include work that is no
        training (an evaluation in between)."""
        self._last = None
