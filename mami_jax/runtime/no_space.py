"""A full disk, said in one line: where, how much is free, and what to do.

A training run's disk fills with checkpoints (ViT-B/16 with its optimiser state is about
1 GiB a step kept) on a TPU VM's boot disk. The write that fails is usually orbax's, in
its own threads: tensorstore reports ``RESOURCE_EXHAUSTED: Error writing ... Failed
writing`` as a ValueError, not ENOSPC, and the command used to end in some 400 lines of
tracebacks from every thread that was writing. ``is_no_space`` recognises either form;
``NoSpaceError`` carries the one line a command prints.
"""

from __future__ import annotations

import errno
import os
import shutil

#: errno values that mean the file system has no room for this user's write.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class NoSpaceError(OSError):
    """A write failed for want of space; the message says where and what to do."""


def is_no_space(error: BaseException | None) -> bool:
    """Whether ``error`` (or an exception it was raised from) is a write that failed for
    want of space: an OSError with ENOSPC or EDQUOT, or tensorstore's RESOURCE_EXHAUSTED
    failure to write a file."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
            return True
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text and ("Failed writing" in text
                                             or "No space left" in text):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_space(path: str) -> str:
    """The free space of the file system holding ``path`` (or its nearest existing
    folder), e.g. "12.5 MiB free"; "" when it cannot be read."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return ""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            break
        free /= 1024
    return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"


def no_space_error(path: str, writing: str, then: str) -> NoSpaceError:
    """``NoSpaceError``: "no space left on the device of PATH while WRITING (F free); THEN"."""
    free = free_space(path)
    return NoSpaceError(f"no space left on the device of {path} while {writing}"
                        + (f" ({free})" if free else "") + f"; {then}")
