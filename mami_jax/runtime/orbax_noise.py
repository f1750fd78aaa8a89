"""orbax's leftover reports after a failed restore or a save onto a full disk, kept out of
a command's output, so that either ends in the command's one ``error:`` line.

orbax restores every array of a checkpoint concurrently in a fresh event loop and closes
the loop as soon as one read fails (a truncated data file) while the other reads still
run; each of those, on finishing, calls ``loop.call_soon_threadsafe`` from a tensorstore
thread, which raises ``RuntimeError('Event loop is closed')`` and is printed as a traceback
through ``sys.unraisablehook``, after the command's one ``error:`` line and even during
interpreter shutdown. The read results are unwanted by then; nothing else is lost. A
restore into another model config's shapes fails before some reads finish; their
coroutines, collected unfinished, are each reported with orbax's "Encountered error
while reading array index" and the tensorstore spec (some 9,500 lines for a small model).

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


#: orbax's words for an array of another shape than the one asked for (another model config).
_OTHER_SHAPE = "is not compatible with the stored shape"


class _SiblingFailures(logging.Filter):
    """Drops asyncio's reports of unretrieved tensorstore read failures, of reads into
    another shape and of writes that found no space."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (_UNRETRIEVED in record.getMessage() and exc is not None
                    and ("Error reading" in str(exc) or _OTHER_SHAPE in str(exc)
                         or is_no_space(exc)))


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


def _is_closed_read(unraisable) -> bool:
    """Whether an unraisable exception is one of orbax's array reads closed unfinished when
    its coroutine was collected after the restore failed: orbax wraps the ``GeneratorExit``
    that closing sends in a broad ``Exception`` ("Encountered error while reading array
    index"), which Python can only report."""
    code = getattr(unraisable.object, "cr_code", None)
    return (getattr(code, "co_name", "") == "_read_array_index_and_device_put"
            and isinstance(getattr(unraisable.exc_value, "__cause__", None), GeneratorExit))


def quiet_failed_restore() -> None:
    """Installs, for the rest of the process (the callbacks come after the restore has
    failed) unless its hook is in place already, an unraisable-exception hook that drops
    ``_is_orphaned_read_callback`` and ``_is_closed_read`` reports and passes every other
    one to the previous hook, and a filter on asyncio's logger that drops its reports of
    sibling reads' and full-disk writes' failures (``_SiblingFailures``). The checkpointer
    calls it before each restore (the leftovers can be reported before the failure reaches
    it), so that a damaged checkpoint read in a notebook or a script is its one
    ``CheckpointError`` too: there some 3,800 lines of "Event loop is closed" tracebacks
    followed a damaged one, and some 9,500 lines of closed reads one of another model
    config."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_orbax_leftovers", False):
        return                          # installed by an earlier restore

    def hook(unraisable):
        if not (_is_orphaned_read_callback(unraisable) or _is_closed_read(unraisable)):
            previous(unraisable)

    hook.drops_orbax_leftovers = True
    sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _SiblingFailures) for f in asyncio_log.filters):
        asyncio_log.addFilter(_SiblingFailures())


def quiet_orbax_failure_noise() -> None:
    """``quiet_failed_restore`` from the start, and a filter on absl's logger for orbax's
    reports of a save that found no space (``_FullDiskSaveReports``). For a command-line
    process, so that a failed read or save ends in one ``error:`` line and nothing else."""
    quiet_failed_restore()
    logging.getLogger("absl").addFilter(_FullDiskSaveReports())


def quiet_abandoned_save() -> None:
    """After a save that found no space: orbax's writer coroutines that were never awaited
    are reported by Python when collected ("RuntimeWarning: coroutine ... was never
    awaited"), now and then after the command's ``error:`` line; the process is ending and
    the save is abandoned, so those reports are dropped from here on."""
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                            category=RuntimeWarning)
