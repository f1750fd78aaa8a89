"""Re-executes the main job with jemalloc preloaded, when jemalloc is installed.

Why: XLA:CPU allocates the temporaries of every step with ``malloc``. Under glibc they
land in per-thread arenas whose heaps are created and deleted again on every step, so
the pages are faulted in and zeroed anew each time: in the runlocal job's 80 px
pathology step that is ~72k page faults (~290 MB) per step and about a fifth of the
CPU time in the kernel. jemalloc with purging disabled keeps the pages mapped, which
makes CPU training steps markedly faster at the price of a larger resident set (it
never returns freed pages); the measurements are in ``docs/experiments.md#allocator``
(``python benchmarks/malloc_speed.py`` reproduces them). TPU VM images preload tcmalloc for the same reason,
and PyTorch's CPU launcher (``torch.backends.xeon.run_cpu``) preloads jemalloc or
tcmalloc when it finds one.

An allocator can only be chosen before the process starts, so ``main`` calls
``reexec_with_preload`` first thing: when a jemalloc library is found and no
allocator is preloaded yet, the process replaces itself (``os.execve``) with the same
command line and ``LD_PRELOAD`` set. Nothing happens on other systems or without the
library (``apt-get install libjemalloc2`` provides it).

``MAMI_JAX_MALLOC`` controls it: unset or ``auto`` (find jemalloc), ``system`` (never
re-execute), or the path of an allocator library to preload (an error if it is not a
file).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from typing import Mapping, Sequence

from absl import logging

ENV_CHOICE = "MAMI_JAX_MALLOC"
#: Set in the re-executed process, so it never re-executes twice.
ENV_DONE = "MAMI_JAX_MALLOC_PRELOADED"
#: jemalloc options used when MALLOC_CONF is not set: never purge dirty or muzzy pages
#: (the step frees and reallocates the same sizes at once) and keep large allocations in
#: the normal arenas (jemalloc's oversize arena purges eagerly).
DEFAULT_MALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
#: Where distributions install jemalloc.
JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
#: An LD_PRELOAD entry containing one of these already replaces malloc.
ALLOCATOR_MARKERS = ("jemalloc", "tcmalloc", "mimalloc")


def find_jemalloc(candidates: Sequence[str] = JEMALLOC_CANDIDATES) -> str | None:
    """The first installed jemalloc library, or None."""
    for path in candidates:
        if os.path.isfile(path):
            return path
    name = ctypes.util.find_library("jemalloc")
    if name and os.path.isabs(name) and os.path.isfile(name):
        return name
    return None


def preload_environment(environ: Mapping[str, str],
                        candidates: Sequence[str] = JEMALLOC_CANDIDATES,
                        platform: str = sys.platform) -> dict | None:
    """The environment to re-execute with, or None to carry on as we are.

    Raises ValueError naming ``MAMI_JAX_MALLOC`` when it is neither ``auto``,
    ``system`` nor an existing file.
    """
    choice = environ.get(ENV_CHOICE, "auto").strip() or "auto"
    if choice == "system" or environ.get(ENV_DONE) or not platform.startswith("linux"):
        return None
    preloaded = environ.get("LD_PRELOAD", "")
    if any(marker in preloaded for marker in ALLOCATOR_MARKERS):
        return None
    if choice == "auto":
        library = find_jemalloc(candidates)
        if library is None:
            return None
    elif os.path.isfile(choice):
        library = choice
    else:
        raise ValueError(f"{ENV_CHOICE}={choice!r}: expected 'auto', 'system' or the path "
                         "of an allocator library (e.g. /usr/lib/x86_64-linux-gnu/"
                         "libjemalloc.so.2); no such file")
    env = dict(environ)
    env["LD_PRELOAD"] = library + (":" + preloaded if preloaded else "")
    env.setdefault("MALLOC_CONF", DEFAULT_MALLOC_CONF)
    env[ENV_DONE] = library
    return env


def reexec_with_preload() -> None:
    """Replace this process by itself with jemalloc preloaded (see the module docstring).

    Returns only when nothing is to be done. Call it before any work starts: the
    process is started over from its first line.
    """
    env = preload_environment(os.environ)
    if env is None:
        return
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def log_allocator() -> None:
    """One log line saying which allocator this process runs with."""
    library = os.environ.get(ENV_DONE)
    preloaded = os.environ.get("LD_PRELOAD", "")
    if library:
        logging.info("malloc: %s preloaded (%s=system turns this off)", library, ENV_CHOICE)
    elif any(marker in preloaded for marker in ALLOCATOR_MARKERS):
        logging.info("malloc: preloaded by the environment (LD_PRELOAD=%s)", preloaded)
    elif os.environ.get(ENV_CHOICE, "").strip() == "system":
        logging.info("malloc: the system allocator (%s=system)", ENV_CHOICE)
    else:
        logging.info("malloc: the system allocator (with libjemalloc2 installed, CPU steps "
                     "run faster; mami_jax/runtime/malloc_preload.py)")
