"""What grain's worker processes (``data.num_workers`` > 0) need around them in a command:
flags they read, Ctrl-C left to the main process, and their batches' shared memory
released when the command ends at once.

- grain 0.2.x workers read an absl flag and fail with UnparsedFlagAccessError outside an
  absl app (google/grain#1355): ``prepare`` marks the flags parsed, which keeps every
  default, what such a script would get anyway.
- Ctrl-C and SIGTERM: a started worker leaves it to the main process, which closes the iterator and
  so stops the workers in order (``runtime.interrupts.leave_stops_to_the_parent``, the
  workers' ``worker_init_fn``; in the second or two a worker spends starting, importing
  the command's module, it does not yet).
- The main process unlinks a batch's shared memory when the batch is freed, on one grain
  thread, later. A command ended by Ctrl-C runs multiprocessing's exit finalisers and
  then leaves through ``os._exit`` (``runtime.interrupts``); the finalisers stopped that
  thread with its unlinks still queued, and the resource tracker released the blocks
  itself and said "leaked shared_memory objects" under the command's one line. ``prepare``
  registers a finaliser that lets the queued unlinks finish first.
"""

from __future__ import annotations

import multiprocessing.util

#: Above multiprocessing.pool's own exit priority (15), which discards queued work.
_BEFORE_THE_THREAD_POOLS_STOP = 20

_finaliser = None


def prepare() -> None:
    """Called before a grain iterator with worker processes is made (once is enough)."""
    global _finaliser
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    if _finaliser is None or not _finaliser.still_active():
        _finaliser = multiprocessing.util.Finalize(
            None, finish_shared_memory_releases, exitpriority=_BEFORE_THE_THREAD_POOLS_STOP)


def finish_shared_memory_releases() -> None:
    """Lets grain's queued unlinks of freed batches finish; later ones happen at once.
    (grain keeps the thread pool in a private attribute; a grain without it has nothing
    queued to wait for.)"""
    from grain._src.python.ipc import shared_memory_array

    arrays = shared_memory_array.SharedMemoryArray
    pool = getattr(arrays, "_del_thread_pool", None)
    if pool is not None:
        arrays._del_thread_pool = None
        pool.close()
        pool.join()
