"""Writing files and folders all-or-nothing, with the permissions the user's umask asks for.

Every artefact mami_jax writes (manifests, checkpoints, ``model_config.json``,
``metrics.json``, ``cmc.png``, exported weights, embeddings, phantoms) is first
written under a temporary name in the destination's own folder and then renamed
into place, so a killed process never leaves a half-written file under the final
name. ``tempfile.mkstemp``/``mkdtemp`` create their files 0600 and folders 0700
(private on purpose); left as they are, a run's results would be unreadable by the
user's group or by another service. Here the temporary is given the mode a plain
``open()``/``mkdir()`` would have had (0666 / 0777 minus the umask) before it is
published.

Temporary names start with ``.`` and carry ``TEMP_MARK``, so leftovers of a killed
process are recognisable (``remove_stale_temporaries``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from typing import Callable, Iterator

from mami_jax.runtime.local_paths import refuse_url

#: Part of every temporary name made here; what ``remove_stale_temporaries`` looks for.
TEMP_MARK = ".mami-tmp-"


def current_umask() -> int:
    """The process umask, read from /proc/self/status where the kernel shows it. Reading
    it with ``os.umask`` means setting it for an instant: a file another thread (the
    checkpointer's) made in that instant got 0644 under a umask of 077; that is the way
    left only where /proc does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``os.mkdir`` gives a new folder: 0777 minus the umask."""
    return 0o777 & ~current_umask()


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}{TEMP_MARK}"


def make_dirs(path: str) -> str:
    """``os.makedirs(path, exist_ok=True)``; returns the absolute path. An OSError says
    which folder could not be made, and why, in one line (the OS's own message named only
    the first missing part, e.g. ``[Errno 2] ...: '/proc/nope'``). A URL (``gs://...``) is
    refused: it would become a local folder named ``gs:`` (``local_paths``)."""
    refuse_url(path, "folder")
    path = os.path.abspath(os.fspath(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        error = type(e)(f"cannot make the folder {path}: {e.strerror or e}")
        error.errno = e.errno
        raise error from None
    return path


def sync_file(path: str) -> None:
    """Flushes ``path``'s data to the disk. Without it a rename can reach the disk before
    the data does, and a power cut leaves an empty file under the final name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str) -> None:
    """Flushes a folder's entries (a rename into it) to the disk, where the platform allows
    it (POSIX; Windows opens no folders)."""
    with contextlib.suppress(OSError):
        sync_file(path)


def write_atomic(path: str, write: Callable[[str], None]) -> str:
    """Calls ``write(tmp_path)`` and renames the result to ``path`` (umask permissions).

    The temporary lies in ``path``'s folder (same file system, so the rename is atomic)
    and keeps ``path``'s extension, for writers that pick a format by it (matplotlib,
    numpy). It is flushed to the disk before the rename and the folder after it, so
    ``path`` holds either the old or the whole new content also after a power cut. On
    any error the temporary is removed and ``path`` is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):         # the rename would fail naming the temporary
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", path)
    directory = make_dirs(os.path.dirname(path))
    ext = os.path.splitext(path)[1]
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=ext)
    except OSError as e:     # named by the file asked for, not by a temporary's random name
        raise type(e)(e.errno, e.strerror, path) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        sync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    sync_dir(directory)
    return path


def write_text_atomic(path: str, text: str) -> str:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomic(path, write)


def write_bytes_atomic(path: str, data: bytes) -> str:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write_atomic(path, write)


@contextlib.contextmanager
def staging_dir(final: str) -> Iterator[str]:
    """A temporary folder beside ``final`` to fill; removed if the block raises.

    The caller renames it into place (``os.rename``, atomic within one file system)
    once complete. Its mode is already the umask's.
    """
    final = os.path.abspath(os.fspath(final))
    parent = make_dirs(os.path.dirname(final))
    tmp = tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(final))
    os.chmod(tmp, dir_mode())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_tree(root: str) -> None:
    """Readies a staged tree for its rename into place: gives every folder and file under
    ``root`` the umask's modes (libraries create private temporaries of their own) and
    flushes each to the disk (``sync_file``: the rename must not arrive before the data)."""
    dmode, fmode = dir_mode(), file_mode()
    os.chmod(root, dmode)
    for here, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(here, d), dmode)
        for f in files:
            os.chmod(os.path.join(here, f), fmode)
            sync_file(os.path.join(here, f))
        sync_dir(here)


def publish_dir(tmp: str, final: str) -> None:
    """Moves a filled ``staging_dir`` into place as ``final``, replacing an earlier folder
    of that name (the same command's own earlier output; ``replace_dir``), with the
    umask's modes, its content flushed to the disk before the rename (``write_atomic``)."""
    finish_tree(tmp)
    replace_dir(tmp, final)
    sync_dir(os.path.dirname(os.path.abspath(final)))


#: The mark of a folder kept aside while its replacement is renamed into place
#: (``replace_dir``); not a temporary (``is_temporary``): until the new folder is in place it
#: is the only copy.
ASIDE_MARK = ".mami-replaced"


def aside_path(final: str) -> str:
    """Where ``replace_dir`` keeps the folder ``final`` while its replacement moves in."""
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), f".{os.path.basename(final)}{ASIDE_MARK}")


def replace_dir(tmp: str, final: str) -> None:
    """Renames the filled staging folder ``tmp`` to ``final``. An existing ``final`` is kept
    aside (``aside_path``) until the new one is in place, then removed; a failed rename puts
    it back, and a process killed between the two renames leaves it for
    ``finish_replacement``, which a later call makes first (deleting it first would leave
    nothing in between)."""
    finish_replacement(final)
    if not os.path.exists(final):
        os.rename(tmp, final)
        return
    aside = aside_path(final)
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    _remove_aside(aside)


def _remove_aside(aside: str) -> None:
    """Deletes what ``replace_dir`` kept aside. A link (``final`` was a link to a folder) is
    unlinked, its target left alone: ``shutil.rmtree`` refuses a link, and with
    ``ignore_errors`` said nothing, so the link stayed and the next replacement's rename
    onto it failed with a bare ``[Errno 20] Not a directory``."""
    if os.path.islink(aside):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def finish_replacement(final: str) -> bool:
    """After a ``replace_dir`` killed between its renames: the old folder (or the link to
    it that ``final`` was) back in place as ``final`` when no new one got there (True), or
    removed when one did."""
    aside = aside_path(final)
    if not (os.path.isdir(aside) or os.path.islink(aside)):
        return False
    if os.path.exists(final):
        _remove_aside(aside)
        return False
    os.rename(aside, final)
    return True


def is_temporary(name: str) -> bool:
    """Whether the file name ``name`` is one of this module's temporaries."""
    return name.startswith(".") and TEMP_MARK in name


def remove_stale_temporaries(directory: str) -> list[str]:
    """Removes temporaries that a killed writer left in ``directory``; returns their paths.

    Only names made by this module (a leading ``.`` and ``TEMP_MARK``) are touched. Call
    it at start-up, before anything is written there, never while another writer runs.
    """
    if not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        if not is_temporary(name):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed.append(path)
    return removed
