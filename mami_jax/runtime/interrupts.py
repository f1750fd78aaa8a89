"""Ctrl-C and SIGTERM in the commands: one line, status 130 (143), and a process that
really ends, its worker processes with it.

SIGTERM (``kill PID``, a scheduler's or a VM's stop) stops a command as Ctrl-C does
(``stop_on_sigterm_like_ctrl_c``: a ``Terminated``, a kind of KeyboardInterrupt, so every
command's Ctrl-C handling unwinds it). Its default action ended the process where it was:
its worker processes (the phantom renderer's, the tiler's, the data loader's) went on as
orphans holding the caller's pipes, and its staging folders and queues were left behind.
A training run, once its steps have begun, saves the step reached instead
(``stop_signal``).

Four things stood between Ctrl-C and its one line:

- a KeyboardInterrupt traceback: each command catches it and says ``interrupted`` in one
  line, with what running the same command again does (``say_interrupted``);
- a KeyboardInterrupt raised inside a callback the interpreter calls on its own (JAX's
  garbage-collection hook, a finaliser) is reported as "Exception ignored" and dropped,
  and the command ran on to the end: ``redeliver_swallowed_interrupts`` raises it again
  in the main thread;
- after the line, the interpreter's teardown, with JAX's and the input pipeline's threads
  still running, ended now and then in a segmentation fault (status 139): ``run_command``
  ends an interrupted process at once (``os._exit``) once the command has unwound, its
  files closed and its checkpoints finished by its own ``finally`` blocks;
- with data worker processes, their KeyboardInterrupt tracebacks (Ctrl-C reaches the
  terminal's whole process group; they leave it to the parent: ``leave_stops_to_the_parent``)
  and the resource tracker's "leaked" warnings after the exit
  (``release_what_outlives_the_process``).
"""

from __future__ import annotations

import _thread
import gc
import multiprocessing.util
import os
import signal
import sys
import threading
import traceback
from typing import Callable, NoReturn

#: The exit status of a command ended by Ctrl-C (128 + SIGINT, as the shell reports it).
INTERRUPTED = 130
#: The exit status of a command stopped by SIGTERM (128 + SIGTERM, as the shell reports it).
TERMINATED = 128 + signal.SIGTERM


#: Seconds a worker process given SIGTERM leaves its parent to stop it in order.
WORKER_GRACE_SECONDS = 10.0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def stop_on_sigterm_like_ctrl_c() -> None:
    """Installs (for the rest of the process, main thread only) a SIGTERM handler that
    raises ``Terminated``: the command unwinds, shuts its worker processes down and ends
    with ``say_interrupted``'s line and status 143."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def say_interrupted(again: str = "") -> int:
    """One ``interrupted`` line on stderr for Ctrl-C (``stopped by SIGTERM`` when the
    interrupt being handled is a ``Terminated``), instead of a KeyboardInterrupt
    traceback; ``again``: what running the same command again does (empty: nothing to
    say). Returns the exit status, ``INTERRUPTED`` (``TERMINATED``)."""
    terminated = isinstance(sys.exc_info()[1], Terminated)
    what = "stopped by SIGTERM" if terminated else "interrupted"
    print(f"\n{what}{'; ' + again if again else ''}", file=sys.stderr, flush=True)
    return TERMINATED if terminated else INTERRUPTED


def redeliver_swallowed_interrupts() -> None:
    """Installs (for the rest of the process) an unraisable-exception hook that turns a
    dropped KeyboardInterrupt into a new one in the main thread; every other report goes
    to the previous hook."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            # From another thread: raised here, in the main thread, it would be dropped again.
            signum = signal.SIGTERM if issubclass(unraisable.exc_type, Terminated) else signal.SIGINT
            _thread.start_new_thread(_thread.interrupt_main, (signum,))
        else:
            previous(unraisable)

    sys.unraisablehook = hook


def leave_stops_to_the_parent(*worker_info) -> None:
    """A worker process's initialiser (a process pool's; grain's ``worker_init_fn``, which
    passes the worker's index and count). Ctrl-C reaches the terminal's whole process
    group, and SIGTERM every process of a job stopped by Slurm or systemd; the parent
    stops on it anyway and stops its workers in order. A worker stopped on its own
    printed a KeyboardInterrupt traceback, or died mid-``put`` and left its batch's shared
    memory to the resource tracker's "leaked" warnings. So SIGINT is ignored, and SIGTERM
    ends the worker only ``WORKER_GRACE_SECONDS`` later, should the parent not have
    stopped it by then (a SIGTERM meant for the worker alone, or a parent that is gone)."""
    del worker_info
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_after_the_grace)


def _end_after_the_grace(signum, frame) -> None:
    timer = threading.Timer(WORKER_GRACE_SECONDS, os._exit, (TERMINATED,))
    timer.daemon = True
    timer.start()


def release_what_outlives_the_process() -> None:
    """What the skipped teardown would have released that outlives the process: the
    shared-memory blocks of the data workers' batches still held by the unwound frames
    (the interrupt's traceback keeps them, in cycles) and the named semaphores of
    multiprocessing's queues (released by its exit finalisers). Left, the resource
    tracker releases them after the exit and says so in "leaked ... objects" warnings
    under the command's one line."""
    handled = sys.exc_info()[1]
    if handled is not None:
        traceback.clear_frames(handled.__traceback__)
    gc.collect()
    run_exit_finalizers = getattr(multiprocessing.util, "_run_finalizers", None)
    if run_exit_finalizers is not None:
        run_exit_finalizers(0)   # what multiprocessing's atexit runs first


def end_process(status: int) -> NoReturn:
    """Exit with ``status``; after Ctrl-C or SIGTERM (status 130 or 143) at once, without
    the interpreter's teardown (``release_what_outlives_the_process`` first)."""
    if status in (INTERRUPTED, TERMINATED):
        release_what_outlives_the_process()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def run_command(main: Callable[[], int]) -> NoReturn:
    """What a command's ``if __name__ == "__main__"`` does: ``main()`` with swallowed
    Ctrl-Cs raised again, SIGTERM stopping it as Ctrl-C does, a Ctrl-C outside ``main``'s
    own handling (while its imports load) said in one line too, and the process ended
    with ``main``'s status."""
    redeliver_swallowed_interrupts()
    stop_on_sigterm_like_ctrl_c()
    try:
        status = main()
    except KeyboardInterrupt:
        status = say_interrupted()
    end_process(status)
