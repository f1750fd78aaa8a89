"""The argument parser of every ``python -m mami_jax...`` command.

argparse answers a bad argument with its usage block and a last line that starts with the
program's name; the package's commands answer every bad input with one ``error:`` line
instead (status 2 for usage, as argparse), so a wrapper script or a notebook cell shows
the one thing that is wrong (Ctrl-C is one line too: ``runtime.interrupts``).
"""

from __future__ import annotations

import argparse
import os


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error: PROG: MESSAGE (see --help)`` line, status
    2. Subcommands: ``add_subparsers(..., parser_class=OneLineErrorParser)``."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def require_file(flag: str, path: str) -> None:
    """An input file argument that names no file: FileNotFoundError, or IsADirectoryError
    for a folder (a manifest's folder given for the manifest), naming the flag and path."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file")
