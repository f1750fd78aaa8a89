"""Asking the file system about many files at once, with a progress bar when it is slow.

Several commands ask about every image before their work: the trainer and evaluation
whether each manifest row's image exists (``missing_files``), embedding and the
applications its size and date (``image_signature``, what says a kept result is still
valid; a command that needs both asks once, ``ImageFiles``), ``build_manifest`` whether each image a dataset's metadata names is there
(``datasets.common``), 377,000 of them for MIMIC-CXR. On a local disk one ``stat`` is a
few microseconds; on a bucket mounted with gcsfuse, the way a Cloud TPU VM usually
reaches its data, each is a request of tens of milliseconds, so asking one after another
kept a command silent for hours. The questions
wait on the file system, not the CPU: after the first ``CHUNK`` answers show a slow file
system, ``THREADS`` of them are asked at once (the waits overlap), in chunks of ``CHUNK``
(a million paths make some 16,000 tasks, not a million); a fast one is asked in order,
threads there only cost. A bar shows the progress when it takes more than ``BAR_DELAY``.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence, TypeVar

from mami_jax.runtime.ordered_map import ordered_map
from mami_jax.runtime.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")

#: Questions in flight at once on a slow file system: enough to hide a network's latency.
THREADS = 32
#: Items per task, and the first items, asked in order, that time the file system.
CHUNK = 64
#: Seconds per question above which the file system counts as slow (a local ``stat`` is
#: a few microseconds, a network mount's tens of milliseconds).
SLOW_SECONDS = 100e-6
#: Seconds before the bar shows (a local disk is done before).
BAR_DELAY = 2.0


def ask_each(items: Sequence[T], ask: Callable[[T], R], what: str) -> list[R]:
    """``ask(item)`` of every item, in order; the bar reads ``what`` ("checking the
    images"). Ctrl-C drops the questions not yet started."""
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    with progress_bar(len(items), what, unit="file", delay=BAR_DELAY) as bar:
        answers: list[list[R]] = []
        for chunk in chunks:
            start = time.perf_counter()
            answers.append([ask(item) for item in chunk])
            bar.update(len(chunk))
            if time.perf_counter() - start > SLOW_SECONDS * len(chunk):
                break
        else:
            return [a for chunk in answers for a in chunk]
        rest = chunks[len(answers):]
        return [a for chunk in answers + _in_threads(rest, ask, bar) for a in chunk]


def _in_threads(chunks, ask, bar) -> list[list]:
    answers = []
    for part in ordered_map(lambda chunk: [ask(item) for item in chunk], chunks, THREADS,
                            name="file-question"):
        answers.append(part)
        bar.update(len(part))
    return answers
