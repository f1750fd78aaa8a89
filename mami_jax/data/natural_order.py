"""File names in the order people number them: "slice_2" before "slice_10"."""

from __future__ import annotations

import re


def natural_key(name: str):
    """Sort key treating digit runs as numbers: slice_2 < slice_10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]
