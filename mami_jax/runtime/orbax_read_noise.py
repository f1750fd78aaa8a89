"""orbax's leftover read callbacks after a failed restore, kept out of a command's output.

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
"""

from __future__ import annotations

import logging
import sys

_UNRETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")


class _SiblingReadFailures(logging.Filter):
    """Drops asyncio's reports of unretrieved tensorstore read failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith(_UNRETRIEVED) and exc is not None
                    and "Error reading" in str(exc))


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


def quiet_orphaned_read_callbacks() -> None:
    """Installs (for the rest of the process: the callbacks can come after ``main``
    returns) an unraisable-exception hook that drops ``_is_orphaned_read_callback``
    reports and passes every other one to the previous hook, and a filter on asyncio's
    logger that drops its reports of sibling reads' failures (``_SiblingReadFailures``). Only for the command-line
    process, so that a failed read ends in one ``error:`` line and nothing else."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_orphaned_read_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_SiblingReadFailures())
