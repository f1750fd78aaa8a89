"""``fn`` over many items in a few threads, handed back in order, never far ahead.

Work that waits on a disk or a network (reading images, asking a mounted bucket about
files) or that releases Python's lock (decoding, resizing) goes faster in threads, but
the caller needs the results in the items' order, and results computed far ahead of it
fill memory (a decoded X-ray is 50 MB). ``ordered_map`` keeps at most ``ahead`` items in
flight and yields each result as soon as it and those before it are done. Leaving the
loop early (an error, Ctrl-C, ``break``) cancels what has not started; what is running
finishes in the background.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int,
                ahead: int | None = None, name: str = "ordered-map") -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed by ``threads`` threads with at most
    ``ahead`` (default ``2 * threads``) submitted and not yet handed back. An exception
    of ``fn`` is raised here, at its item's turn."""
    ahead = max(1, ahead or 2 * threads)
    pool = concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix=name)
    pending: collections.deque = collections.deque()
    items = iter(items)
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            for item in items:          # one in, one out
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
