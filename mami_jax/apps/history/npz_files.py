"""Reading the app's .npz files: the archive's arrays and the caches ``train`` keeps in OUT.

``np.load`` reports a damaged file in many ways (a truncated zip, a member cut short, a
text file taken for a pickle, a missing array), none of which names the file. The
archive's arrays are part of the archive, so there a damaged file is an error naming it
(``archive.py``). A cache (OUT/features.npz, OUT/diagnosis_reader.npz,
OUT/diagnosis_<teacher>.npz) only saves time: ``read_cache`` says in one line that it
cannot be read and the caller computes it again and replaces it, as it does for a cache
of other images or another model.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Callable, TypeVar

import numpy as np

#: What ``np.load`` (allow_pickle=False) and reading its arrays raise for a file that is
#: missing, truncated, not an .npz, or lacks an array.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)

T = TypeVar("T")


def npz_error(e: BaseException) -> str:
    """What is wrong, in a few words on one line (the OS's words for an OSError)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, KeyError):
        return f"an array is missing: {e.args[0]}" if e.args else "an array is missing"
    return " ".join(f"{type(e).__name__}: {e}".split())


def read_cache(path: str, use: Callable[[np.lib.npyio.NpzFile], T | None],
               log: Callable[[str], None] = print) -> T | None:
    """``use(npz)`` of the cache ``path`` (it returns the cached values, or None when they
    are for other inputs); None when there is no such file, or when it cannot be read,
    which ``log`` says in one line: the caller computes the values again."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return use(f)
    except NPZ_ERRORS as e:
        log(f"  {path}: not a readable cache ({npz_error(e)}); computing it again")
        return None
