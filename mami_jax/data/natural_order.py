"""File names in the order people number them: "slice_2" before "slice_10"."""

from __future__ import annotations

import re


def natural_key(name: str):
    """Sort key treating digit runs as numbers: slice_2 < slice_10; names equal as numbers
    (visit1, visit01) by the names themselves, so the order never follows the listing."""
    return ([(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t],
            name)


def examples(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names`` in natural order and how many more, for messages
    that name a folder's files without listing thousands."""
    names = sorted(names, key=natural_key)
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
