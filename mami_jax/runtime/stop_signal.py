"""SIGTERM while training: save a checkpoint of the step reached, then end.

SIGTERM is how a run is told it will be stopped: a preempted Cloud TPU or spot VM, Slurm's
time limit or preemption, a Kubernetes eviction, ``kill PID``. Its default action ended
the process at once, and the run lost every step since its last periodic checkpoint
(``train.checkpoint_every``: hours of a TPU's time). With ``StopRequests`` the trainer
finishes the step it is on, saves that step's checkpoint, waits for it and ends with one
line (``say_stopped``) and status 143 (128 + SIGTERM, as the shell reports it), so that
the same command run again goes on from that step.

One process: once the first step has run (``listen``), a handler notes the signal and the
loop asks ``reached(step)`` after every step. Before it, while the run reads its data,
restores its checkpoint and compiles its step (minutes for a large model), nothing has
been trained that a checkpoint would keep, and SIGTERM stops the run at once, as Ctrl-C
does (``interrupts.stop_on_sigterm_like_ctrl_c``, the command's handler until then). Several processes (``jax.distributed``): every host must save the same step, or the
hosts that go on wait for the others for ever, so JAX's preemption service decides: it
hears SIGTERM on any host and names one step at which ``reached`` is true on all of them.

An evaluation during training embeds a whole split, minutes on a large one, longer than
the grace period a preempted VM gets before it is killed; one process asks ``heard``
after every batch of it and leaves the evaluation unfinished to save the step at once.
"""

from __future__ import annotations

import signal
import sys
import threading

from absl import logging

from mami_jax.runtime.interrupts import TERMINATED


class StoppedBySignal(Exception):
    """The run saved the checkpoint of ``step`` in ``where`` and stopped, as SIGTERM asked."""

    def __init__(self, step: int, where: str):
        super().__init__(f"stopped by SIGTERM after step {step}, saved in {where}")
        self.step, self.where = step, where


class StopRequests:
    """Within ``with StopRequests() as stop:``, after ``stop.listen()``,
    ``stop.reached(step)`` says whether to save ``step`` and stop; the previous SIGTERM
    handler is back on leaving."""

    def __init__(self):
        self._received = False
        self._listening = False
        self._previous = None
        self._several = False

    def __enter__(self) -> "StopRequests":
        import jax      # here: main imports this module before it re-executes itself
        self._several = jax.process_count() > 1
        return self

    def listen(self) -> None:
        """From now on SIGTERM is noted, for ``reached`` and ``heard`` (called once the
        first step has run; again, it does nothing)."""
        if self._several:
            return                          # JAX's preemption service listens instead
        if self._listening:
            return
        if threading.current_thread() is not threading.main_thread():
            return                          # signals reach only the main thread
        self._previous = signal.signal(signal.SIGTERM, self._note)
        self._listening = True

    def __exit__(self, *exc) -> None:
        if self._listening:
            signal.signal(signal.SIGTERM, self._previous
                          if self._previous is not None else signal.SIG_DFL)
            self._listening, self._previous = False, None

    def _note(self, signum, frame) -> None:
        # Only a flag: a handler that printed could interrupt a write to the same stream
        # (the progress bar's), and Python raises on such a reentrant write.
        self._received = True

    def heard(self) -> bool:
        """Whether SIGTERM came, asked between two steps (an evaluation's batches), where no
        step is reached: one process only. Several processes each hear it at another batch,
        and one leaving a collective the others are in stalls them all; they finish the
        evaluation and stop at the step after it (``reached``)."""
        return self._received and not self._several

    def reached(self, step: int) -> bool:
        """Whether the run should save ``step``'s checkpoint and stop (call after every
        step, on every process, with the same steps)."""
        if self._several:
            from jax.experimental import multihost_utils
            try:
                stop = bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError as e:   # the service is off (jax_enable_preemption_service)
                logging.warning("SIGTERM is not heard: %s", e)
                self._several = False   # warn once; the default action ends the process
                return False
        else:
            stop = self._received
        if stop:
            print(f"\nSIGTERM: saving the checkpoint of step {step}, then stopping",
                  file=sys.stderr, flush=True)
        return stop


def say_stopped(stopped: StoppedBySignal) -> int:
    """The line a run stopped by SIGTERM ends with; returns its exit status."""
    print(f"{stopped}; run the same command again to go on from it", file=sys.stderr,
          flush=True)
    return TERMINATED
