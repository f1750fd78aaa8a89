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
from typing import Callable, Iterable

from mami_jax.runtime.atomic_files import is_temporary
from mami_jax.runtime.folder_lock import LOCK_FILE


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


def refuse_landing_on_images(out: str, flag: str, images: Iterable[tuple[str, str]],
                             where: str) -> None:
    """ValueError when ``out`` is one of ``images`` (image_id, path) or lies inside one (a
    series stored as a folder of slices, which a new file would join); ``where``: what
    holds them (an archive, a manifest)."""
    target = os.path.realpath(out)
    for image_id, path in images:
        if same_or_inside(target, path):
            where_it = "is" if target == os.path.realpath(path) else "lies inside"
            raise ValueError(f"{flag} {out}: {where_it} the image {image_id} of {where} "
                             f"({path}), which this command reads: outputs never go into the "
                             "inputs")


def refuse_empty(path: str, flag: str, what: str) -> None:
    """ValueError when ``path`` is empty (``--out ""``, an unset shell variable): the OS
    reads it as the current folder, which no guard was asked about."""
    if not path:
        raise ValueError(f"{flag}: an empty path; give {what}")


def check_output_folder(out: str, flag: str, own_marker: str,
                        own_names: Callable[[], Iterable[str]] = tuple) -> None:
    """An output folder must be new, empty, or one this command wrote before (it holds
    ``own_marker``, the record the command writes there; the command resumes or redoes
    its work in it; the lock file of a run that was killed before its first file does not
    count, nor do temporaries of unfinished atomic writes: another process of the same run
    may be writing the marker), or hold only ``own_names()`` (what the command writes
    before its marker, left by a run stopped half-way; asked only for a folder without the
    marker). ValueError otherwise: a file, or a folder holding other files (or no path)."""
    refuse_empty(out, flag, "a folder")
    if os.path.isfile(out):
        raise ValueError(f"{flag} {out}: is a file, not a folder")
    if not os.path.isdir(out) or os.path.isfile(os.path.join(out, own_marker)):
        return
    ours = {LOCK_FILE, *own_names()}
    held = sorted(name for name in os.listdir(out) if name not in ours and not is_temporary(name))
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise ValueError(f"{flag} {out}: holds files this command did not write ({shown}); "
                         "give a new or empty folder")


def refuse_inside_inputs(out: str, flag: str, inputs: dict[str, str | None]) -> None:
    """ValueError when ``out`` is one of ``inputs`` (flag -> path; None: not given) or lies
    inside one: an output folder inside a run or an archive a command reads."""
    for what, path in inputs.items():
        if path and same_or_inside(out, path):
            where = "is" if os.path.realpath(out) == os.path.realpath(path) else "lies inside"
            raise ValueError(f"{flag} {out}: {where} {what} {path}, which this command reads: "
                             f"outputs never go into the inputs")


def check_parent_is_folder(path: str, flag: str) -> None:
    """ValueError when the nearest existing folder above ``path`` is a file (no folder
    can be made there)."""
    above = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ValueError(f"{flag} {path}: {above} is a file, not a folder")


def check_output_file(path: str, flag: str) -> None:
    """An output file's path must not name a folder (one that exists, or a trailing
    separator), nor be empty."""
    refuse_empty(path, flag, "a file name")
    if path.endswith(os.sep) or os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    check_parent_is_folder(path, flag)


def check_picture_file(path: str, flag: str) -> None:
    """A picture a command writes (always a PNG) must be named ``*.png`` (and not name a
    folder): a slip in the flag's value (``--preview manifest.csv``) replaced the file it
    named with a picture. An existing PNG is replaced: the flag names it as the output."""
    _check_named(path, flag, ".png", "the picture is a PNG")


def check_json_file(path: str, flag: str) -> None:
    """A report a command writes as JSON (a benchmark's ``--json``) must be named
    ``*.json``, for the same reason as ``check_picture_file``."""
    _check_named(path, flag, ".json", "the report is JSON")


def _check_named(path: str, flag: str, suffix: str, what: str) -> None:
    check_output_file(path, flag)
    if not path.lower().endswith(suffix):
        raise ValueError(f"{flag} {path}: {what}; give a name ending in {suffix}")


def check_replaceable_file(path: str, ours: bool, what: str, overwrite: bool, advice: str) -> None:
    """Refuses an existing output ``path`` (FileExistsError naming it) unless it is
    ``what`` this command writes (``ours``) and ``overwrite`` was given."""
    if not os.path.lexists(path):
        return
    if not ours:
        raise FileExistsError(f"{path} exists and is not {what}; refusing to replace it, "
                              f"even with --overwrite ({advice})")
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
