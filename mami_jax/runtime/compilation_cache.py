"""JAX's persistent compilation cache, switched on from the config.

Every batch shape the trainer meets (one per modality: a CT series and an X-ray are
different programs) compiles its own training step, and evaluation compiles the
embedding pass again; for a ViT-B on an accelerator each is a sizeable wait, paid again
by every resumed run after a preemption and by every ``--mode=eval`` of the same model.
With ``config.compilation_cache_dir`` set, XLA's executables are written there and the
next process with the same program, shapes, devices and JAX version loads them instead of
compiling. JAX itself decides what is stored (only compilations of a second or more,
written by process 0 alone on several hosts) and keys entries by everything that changes
the program, so a stale entry is never loaded.

The key is a machine setting, not part of the experiment: a checkpoint or a resume does
not depend on it. JAX's own ``JAX_COMPILATION_CACHE_DIR`` environment variable does the
same for every command (the privacy and history apps included); the config key wins
where both are given.
"""

from __future__ import annotations

import os

import jax
from absl import logging

#: Suffix of the executable files JAX writes into the cache folder.
_ENTRY_SUFFIX = "-cache"


def enable(cache_dir: str, required: bool = True) -> str | None:
    """Points JAX's persistent compilation cache at ``cache_dir`` ("" = leave JAX's setting).

    Must run before the process compiles anything: JAX opens the cache once, at the first
    compilation. A URL (``gs://bucket/cache``) is handed to JAX as it is; a local path is
    created. Returns the folder used, or None when ``cache_dir`` is "" (or unusable and
    not ``required``).
    Raises ValueError naming the key when the folder cannot be created or written; not
    ``required`` (``--mode=eval``/``embed``, which read a run's config.json, and with it
    the training machine's folder, on another machine), one warning line and no cache.
    """
    if not cache_dir:
        return None
    remote = "://" in cache_dir  # gs://... on a TPU VM: JAX reads and writes it through etils
    try:
        path = cache_dir if remote else _local_folder(cache_dir)
    except ValueError as e:
        if required:
            raise
        logging.warning("%s; compiling without the cache", e)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    logging.info("compilation cache: %s%s", path,
                 "" if remote else f" ({count_entries(path)} entries)")
    return path


def _local_folder(cache_dir: str) -> str:
    """The absolute, existing, writable folder for ``cache_dir``; ValueError naming the key."""
    path = os.path.abspath(os.path.expanduser(cache_dir))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"config.compilation_cache_dir={cache_dir!r}: cannot create the "
                         f"folder: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"config.compilation_cache_dir={cache_dir!r}: the folder {path} is "
                         "not writable")
    return path


def count_entries(cache_dir: str) -> int:
    """How many compiled executables the cache folder holds."""
    if not os.path.isdir(cache_dir):
        return 0
    return sum(name.endswith(_ENTRY_SUFFIX) for name in os.listdir(cache_dir))
