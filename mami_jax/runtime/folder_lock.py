"""One writer per output folder: a second command into a folder that another is still
writing is refused, naming the one at work.

A training run started again while the first still ran (a second terminal, a ``nohup``
run forgotten) resumed from the same checkpoint and wrote the same steps beside it; at its
start it also removed the first run's checkpoint save in progress as "unfinished", and the
two overwrote each other's checkpoints and metric logs. The lock is an ``flock`` on a file
in the folder, held while the command runs: the system releases it when the process ends,
however it ends, so a killed run never leaves the folder locked. The file also says who
holds it (process id, host, start time, command), for the refusal's message.

Where the file system has no locks (some network mounts), the command goes on unlocked
with a warning rather than refusing to run.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from typing import Iterator

#: The lock file's name inside the folder (a dot file: listings of results leave it out).
LOCK_FILE = ".mami-in-use.lock"


class FolderInUseError(ValueError):
    """The folder is held by another command still running."""


def _holder(fd: int) -> str:
    """What the lock file says of the command holding it, as words."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16).decode("utf-8"))
        return (f"process {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say which"


def _describe_self(fd: int) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), started=now,
                           command=" ".join(sys.argv)))
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode("utf-8"), 0)


@contextlib.contextmanager
def held(folder: str, role: str, what: str, take: bool = True,
         in_file: bool = True) -> Iterator[None]:
    """Holds ``folder`` (which must exist) for the block; FolderInUseError when another
    process holds it. ``role`` names the folder in the message (``--workdir /runs/a``),
    ``what`` the kind of command (``training run``). ``take=False`` (the other processes
    of a multi-host run, whose process 0 holds it) holds nothing. ``in_file=False`` locks
    the folder itself and writes nothing in it, so who holds it goes unsaid: for the parent
    of a folder that is replaced whole when saved (a lock file inside would go with it)."""
    if not take:
        yield
        return
    fd = (os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666) if in_file
          else os.open(folder, os.O_RDONLY))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                logging.warning("%s: cannot be locked (%s): nothing stops a second %s from "
                                "writing into it at the same time", role, e.strerror, what)
                yield
                return
            holder = f" ({_holder(fd)})" if in_file else ""
            raise FolderInUseError(
                f"{role} is in use by another {what}{holder}; two at once overwrite "
                f"each other's files: wait for it to end, or stop it, then run this again"
            ) from None
        if in_file:
            _describe_self(fd)
        yield
    finally:
        os.close(fd)    # releases the lock


@contextlib.contextmanager
def output_held(folder: str, role: str, what: str) -> Iterator[None]:
    """``held`` for a command's output folder, made here when it is new; a run that ends
    before writing anything there (a refused setting, an unreadable image) removes the
    folder it made, leaving no empty output behind."""
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    with held(folder, role, what):
        try:
            yield
        finally:        # still held: no other run can have taken the folder meanwhile
            if made and os.listdir(folder) == [LOCK_FILE]:
                os.remove(os.path.join(folder, LOCK_FILE))
                os.rmdir(folder)
