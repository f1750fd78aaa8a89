"""Whether the files a dataset's metadata names exist: many at once, with a progress bar.

A builder checks every image its metadata names (377,000 for MIMIC-CXR). On a local disk
one check is a few microseconds; on a bucket mounted with gcsfuse, the way a Cloud TPU VM
usually reaches its data, each is a request of tens of milliseconds, so checking them one
after another kept ``build_manifest`` silent for hours. The checks wait on the file
system, not the CPU, so ``THREADS`` of them run at once (the waits overlap; on a local
disk the whole takes about as long as before, a second or two), in chunks of ``CHUNK``
paths (a million paths make some 16,000 tasks, not a million), and a bar shows their
progress when they take more than a moment.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Sequence

from mami_jax.runtime.progress import progress_bar

#: Checks in flight at once: enough to hide a network file system's latency.
THREADS = 32
#: Paths per task.
CHUNK = 64
#: Seconds before the bar shows (a local disk is done before).
BAR_DELAY = 2.0


def is_present(path: str, folder: bool) -> bool:
    """A file: it exists and is a file. A series folder: it exists and holds a visible
    (not dot-hidden) entry."""
    if not folder:
        return os.path.isfile(path)
    try:
        return any(not name.startswith(".") for name in os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return False


def _check(chunk: Sequence[tuple[str, bool]]) -> list[bool]:
    return [is_present(path, folder) for path, folder in chunk]


def presence(candidates: Sequence[tuple[str, bool]], what: str) -> list[bool]:
    """``is_present`` of every ``(path, folder)``, in order; the bar is described by
    ``what`` (the dataset). Ctrl-C drops the checks not yet started."""
    chunks = [candidates[i:i + CHUNK] for i in range(0, len(candidates), CHUNK)]
    if len(chunks) <= 1:
        return _check(candidates)
    pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="file-check")
    results: list[list[bool]] = [[] for _ in chunks]
    try:
        with progress_bar(len(candidates), f"checking {what}'s files", unit="file",
                          delay=BAR_DELAY) as bar:
            futures = {pool.submit(_check, chunk): i for i, chunk in enumerate(chunks)}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(len(chunks[futures[future]]))
        return [ok for chunk in results for ok in chunk]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
