"""Range checks of numeric settings, one message shape for every command.

absl's ``--config.KEY=VALUE`` and ``--set KEY=VALUE`` check a value's type, not its range;
a training run, a protection and the history app each check theirs before any work
(``train/settings_check.py``, ``apps/privacy/protect.check_search``,
``apps/history/settings.py``) with these, so a bad value reads the same everywhere:
``KEY=VALUE: expected WHAT``.
"""

from __future__ import annotations

import math


def is_number(value) -> bool:
    """A finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def is_whole(value) -> bool:
    """An int (a bool is not one here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_pattern(pattern, key: str) -> None:
    """ValueError ``KEY: 'PATTERN' is not a regular expression: WHY`` unless ``pattern``
    compiles (a settings' regex was otherwise a re.error traceback where it was first used)."""
    import re
    try:
        re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"{key}: {pattern!r} is not a regular expression: {e}") from None


def require(ok: bool, key: str, value, expected: str) -> None:
    """ValueError ``KEY=VALUE: expected EXPECTED`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key}={value!r}: expected {expected}")
