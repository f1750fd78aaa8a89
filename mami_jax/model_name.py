"""How a model a user names splits into a workdir and a checkpoint step.

Commands take ``WORKDIR@STEP`` for an earlier checkpoint of a run. A path holding '@' of
its own (a home folder ``/home/user@corp.com/run``, a run named ``runs@v2``) was cut at
its first '@' and refused; ``workdir_and_step`` takes a path that exists as it is, and
otherwise cuts at the last '@'.
"""

from __future__ import annotations

import os


def workdir_and_step(name: str) -> tuple[str, str | None]:
    """(workdir, the STEP text, or None without one) of the model name ``name``."""
    if os.path.exists(name) or "@" not in name:
        return name, None
    workdir, _, step = name.rpartition("@")
    return workdir, step
