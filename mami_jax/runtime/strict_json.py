"""JSON that every parser reads: what mami_jax writes to ``.json`` / ``.jsonl`` files.

Python's ``json`` writes ``NaN`` and ``Infinity`` for non-finite floats by default, which
RFC 8259 does not allow: jq, JavaScript's ``JSON.parse``, DuckDB, Go and Rust refuse the
whole file. Measured values can be non-finite for honest reasons (the PSNR of an image left
unchanged, an AUC of queries with one class), so every writer goes through ``dumps``: a
non-finite float is written ``null``, and the reader of a field says what null means there
(the file's documentation does too). numpy scalars and arrays are written as the numbers
they hold; anything else that is not JSON is refused naming where it sits, or passed to
``other`` (e.g. ``str`` for the settings records that name paths and dtypes).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["dumps", "plain"]


def plain(value, where: str = "value", other: Callable[[Any], Any] | None = None):
    """``value`` as plain JSON types, non-finite floats as None; a TypeError naming
    ``where`` (the path to the value, e.g. ``group/cmc``) for a type JSON has no form of,
    unless ``other`` converts it."""
    if isinstance(value, np.ndarray):
        return [plain(v, where, other) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v, where, other) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{where}/{k}", other) for k, v in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if other is not None:
        return plain(other(value), where)
    raise TypeError(f"{where}: cannot write a {type(value).__name__} as JSON")


def dumps(value, where: str = "value", other: Callable[[Any], Any] | None = None,
          **kwargs) -> str:
    """``json.dumps`` of ``plain(value, where, other)``; never writes NaN or Infinity."""
    return json.dumps(plain(value, where, other), allow_nan=False, **kwargs)
