"""Ctrl-C in the commands: one line, status 130, and a process that really ends.

Three things stood between Ctrl-C and that:

- a KeyboardInterrupt traceback: each command catches it and says ``interrupted`` in one
  line, with what running the same command again does (``say_interrupted``);
- a KeyboardInterrupt raised inside a callback the interpreter calls on its own (JAX's
  garbage-collection hook, a finaliser) is reported as "Exception ignored" and dropped,
  and the command ran on to the end: ``redeliver_swallowed_interrupts`` raises it again
  in the main thread;
- after the line, the interpreter's teardown, with JAX's and the input pipeline's threads
  still running, ended now and then in a segmentation fault (status 139): ``run_command``
  ends an interrupted process at once (``os._exit``) once the command has unwound, its
  files closed and its checkpoints finished by its own ``finally`` blocks.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
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


def end_process(status: int) -> NoReturn:
    """Exit with ``status``; after Ctrl-C or SIGTERM (status 130 or 143) at once, without
    the interpreter's teardown."""
    if status in (INTERRUPTED, TERMINATED):
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
