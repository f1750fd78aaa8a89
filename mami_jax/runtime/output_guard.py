"""Where a command may write: never over what it reads, never into someone else's folder.

A command's inputs (a manifest, its images, a checkpoint) are never modified. The
mistakes that would modify them are an output named like an input (``--out`` the input
folder, a symbolic link to it, a file inside a run's folder) and an output folder that
already holds other files (a dataset's folder, whose ``manifest.csv`` a protected copy
would replace). Paths are compared after resolving links, so a link to an input folder
is that folder.
"""

from __future__ import annotations

import os
from typing import Iterable


def same_or_inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refuse_overwriting_inputs(outputs: Iterable[str], inputs: Iterable[str],
                              flag: str) -> None:
    """ValueError naming the first input file one of ``outputs`` would replace."""
    read = {os.path.realpath(p): p for p in inputs}
    for out in outputs:
        if os.path.realpath(out) in read:
            raise ValueError(f"{flag} {out}: would overwrite the input "
                             f"{read[os.path.realpath(out)]}")


def check_output_folder(out: str, flag: str, own_marker: str) -> None:
    """An output folder must be new, empty, or one this command wrote before (it holds
    ``own_marker``, the record the command writes there; the command resumes or redoes
    its work in it). ValueError otherwise: a file, or a folder holding other files."""
    if os.path.isfile(out):
        raise ValueError(f"{flag} {out}: is a file, not a folder")
    if not os.path.isdir(out) or os.path.isfile(os.path.join(out, own_marker)):
        return
    held = sorted(os.listdir(out))
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ValueError(f"{flag} {out}: holds files this command did not write ({shown}); "
                         "give a new or empty folder")
