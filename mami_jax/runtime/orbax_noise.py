"""orbax's leftover reports after a failed restore or a save onto a full disk, kept out of
a command's output, so that either ends in the command's one ``error:`` line.

orbax restores every array of a checkpoint concurrently in a fresh event loop and closes
the loop as soon as one read fails (a truncated data file) while the other reads still
run; each of those, on finishing, calls ``loop.call_soon_threadsafe`` from a tensorstore
thread, which raises ``RuntimeError('Event loop is closed')`` and is printed as a traceback
through ``sys.unraisablehook``, after the command's one ``error:`` line and even during
interpreter shutdown. The read results are unwanted by then; nothing else is lost.

When the other reads fail too (every array of a truncated file), and finish before the
loop closes, their failures are never retrieved either, and asyncio logs each one when
its task is collected ("Task exception was never retrieved", with a traceback): the same
damage the ``error:`` line already named, twenty times over, as often as not.

A save onto a full disk fails in every writer thread at once: orbax logs each failure with
its traceback (its futures, its commit thread, its finalize thread, then "cannot schedule
new futures after shutdown" from the threads that came after), and asyncio logs the
unretrieved ones, some 400 lines before and after the checkpointer's ``NoSpaceError``
line (``train/checkpointing.py``), which says all of it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from mami_jax.runtime.no_space import is_no_space

#: asyncio's report of a failure nobody awaited ("Task ...", "Future ...",
#: "_GatheringFuture exception was never retrieved").
_UNRETRIEVED = "exception was never retrieved"


class _SiblingFailures(logging.Filter):
    """Drops asyncio's reports of unretrieved tensorstore read failures and of writes that
    found no space."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (_UNRETRIEVED in record.getMessage() and exc is not None
                    and ("Error reading" in str(exc) or is_no_space(exc)))


#: What orbax's threads log after one of them failed and the save was abandoned.
_AFTER_SHUTDOWN = "cannot schedule new futures after shutdown"


class _FullDiskSaveReports(logging.Filter):
    """Drops orbax's own error reports of a save that found no space (absl's logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not (is_no_space(exc) or _AFTER_SHUTDOWN in message
                    or ("RESOURCE_EXHAUSTED" in message and "Failed writing" in message))


def _is_orphaned_read_callback(unraisable) -> bool:
    """Whether an unraisable exception is tensorstore telling a closed asyncio loop that a
    read finished: ``RuntimeError('Event loop is closed')`` from the loop's closed check."""
    if unraisable.exc_type is not RuntimeError or \
            str(unraisable.exc_value) != "Event loop is closed":
        return False
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


def quiet_orbax_failure_noise() -> None:
    """Installs (for the rest of the process: the callbacks can come after ``main``
    returns) an unraisable-exception hook that drops ``_is_orphaned_read_callback``
    reports and passes every other one to the previous hook, a filter on asyncio's logger
    that drops its reports of sibling reads' and full-disk writes' failures
    (``_SiblingFailures``), and one on absl's logger for orbax's reports of a save that
    found no space (``_FullDiskSaveReports``). Only for the command-line process, so that a
    failed read or save ends in one ``error:`` line and nothing else."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_orphaned_read_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_SiblingFailures())
    logging.getLogger("absl").addFilter(_FullDiskSaveReports())


def quiet_abandoned_save() -> None:
    """After a save that found no space: orbax's writer coroutines that were never awaited
    are reported by Python when collected ("RuntimeWarning: coroutine ... was never
    awaited"), now and then after the command's ``error:`` line; the process is ending and
    the save is abandoned, so those reports are dropped from here on."""
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                            category=RuntimeWarning)
