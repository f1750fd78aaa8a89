"""Ctrl-C in the commands: one line, status 130, and a process that really ends.

Four things stood between Ctrl-C and that:

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
  terminal's whole process group; they ignore it: ``leave_ctrl_c_to_the_parent``) and the resource
  tracker's "leaked" warnings after the exit (``release_what_outlives_the_process``).
"""

from __future__ import annotations

import _thread
import gc
import multiprocessing.util
import os
import signal
import sys
import traceback
from typing import Callable, NoReturn

#: The exit status of a command ended by Ctrl-C (128 + SIGINT, as the shell reports it).
INTERRUPTED = 130
#: The exit status of a training run stopped by SIGTERM after its checkpoint (``stop_signal``).
TERMINATED = 128 + signal.SIGTERM


def say_interrupted(again: str = "") -> int:
    """One ``interrupted`` line on stderr for Ctrl-C, instead of a KeyboardInterrupt
    traceback; ``again``: what running the same command again does (empty: nothing to
    say). Returns the exit status, ``INTERRUPTED``."""
    print(f"\ninterrupted{'; ' + again if again else ''}", file=sys.stderr, flush=True)
    return INTERRUPTED


def redeliver_swallowed_interrupts() -> None:
    """Installs (for the rest of the process) an unraisable-exception hook that turns a
    dropped KeyboardInterrupt into a new one in the main thread; every other report goes
    to the previous hook."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            # From another thread: raised here, in the main thread, it would be dropped again.
            _thread.start_new_thread(_thread.interrupt_main, ())
        else:
            previous(unraisable)

    sys.unraisablehook = hook


def leave_ctrl_c_to_the_parent(*worker_info) -> None:
    """A worker process's initialiser (a process pool's; grain's ``worker_init_fn``, which
    passes the worker's index and count): SIGINT ignored. Ctrl-C reaches the terminal's
    whole process group; each worker printed its own KeyboardInterrupt traceback (and a
    grain worker stopped mid-``put`` left its batch's shared memory behind), while the
    parent stops on it anyway and stops its workers in order. SIGTERM keeps its default:
    it is how a stuck worker is ended."""
    del worker_info
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    Ctrl-Cs raised again, a Ctrl-C outside ``main``'s own handling (while its imports
    load) said in one line too, and the process ended with ``main``'s status."""
    redeliver_swallowed_interrupts()
    try:
        status = main()
    except KeyboardInterrupt:
        status = say_interrupted()
    end_process(status)
