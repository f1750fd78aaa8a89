"""The progress bar of long work (rendering phantoms, embedding a split or a manifest).

A command that works for minutes without a word looks hung. Long loops therefore show a
tqdm bar on stderr (stdout stays for results): redrawn ten times a second on a terminal,
but once per 30 s when stderr is a log file, so a job log gets a few lines per bar, not
one per batch. A bar inside another one (an evaluation during training) is removed when
it ends; an outermost bar stays as the record of what was done.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "img", disable: bool = False,
                 delay: float = 0.0) -> tqdm:
    """A tqdm bar over ``total`` items (None: a count without an end), set up as the module
    doc says; use it as a context manager (``with progress_bar(...) as bar: ...
    bar.update(n)``) so that it is closed, and its last line written, when the work ends
    or fails. ``disable``: no output (a caller that was asked for none, or a process other
    than the first of several). ``delay``: seconds before the bar first shows, for work
    that is usually quick and long only on large inputs or slow disks (a bar that never
    showed writes nothing, so a quick command's output stays its own)."""
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                leave=None, mininterval=interval, delay=delay,
                maxinterval=max(10.0, interval))   # tqdm's monitor redraws after maxinterval
