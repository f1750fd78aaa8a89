"""The one ``error:`` line every command ends with on bad input or a failed write.

Each command catches its own families of user errors (a bad manifest, a damaged file,
a missing extra); what it prints is the same for all of them: the message on one line (a
message of several lines, a file's list of problems, joined by ``one_line``), a
``KeyError``'s key without the quotes ``str`` adds, and a write that failed for want of
space said as where, how much is free and what to do (``no_space``), not as the OS's
``[Errno 28]`` naming one file of many.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from mami_jax.runtime.no_space import NoSpaceError, is_no_space, no_space_error


def error_line(error: BaseException, where: str | None = None) -> str:
    """The text after ``error:`` for ``error``; ``where``: the folder a full disk is said
    of when the error names no file (a command's output folder)."""
    if is_no_space(error) and not isinstance(error, NoSpaceError):
        name = getattr(error, "filename", None)
        folder = os.path.dirname(os.path.abspath(name)) if name else where
        if folder:
            error = no_space_error(folder, f"writing {name or 'its output'}",
                                   "free space there and run the same command again")
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error)
    return one_line(text) or type(error).__name__


def one_line(message: str) -> str:
    """A message of several lines (a ConversionError's key listings, a manifest's list of
    bad rows) as one line: indented lines are the items of the title above them (joined
    with ", "), titles are joined with "; "."""
    out = ""
    for line in str(message).splitlines():
        if not line.strip():
            continue
        if line[:1].isspace() and out:
            out += (" " if out.endswith(":") else ", ") + line.strip()
        else:
            out += ("; " if out else "") + line.strip()
    return out


def print_error(error: BaseException, where: str | None = None) -> None:
    """Prints ``error: ...`` (``error_line``) on stderr."""
    print(f"error: {error_line(error, where)}", file=sys.stderr, flush=True)


def exit_status(work: Callable[[], object]) -> int:
    """What a command's ``main`` returns for its work: ``work()``'s own status when it
    returns an int, else 0; 1 after one ``error:`` line when it raises ValueError or
    OSError (bad input, a refused output, each naming its file or flag). Any other
    exception is a bug and keeps its traceback."""
    try:
        status = work()
    except (ValueError, OSError) as e:
        print_error(e)
        return 1
    return status if isinstance(status, int) and not isinstance(status, bool) else 0
