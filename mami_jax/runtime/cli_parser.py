"""The argument parser of every ``python -m mami_jax...`` command.

argparse answers a bad argument with its usage block and a last line that starts with the
program's name; the package's commands answer every bad input with one ``error:`` line
instead (status 2 for usage, as argparse), so a wrapper script or a notebook cell shows
the one thing that is wrong (Ctrl-C is one line too: ``runtime.interrupts``).
"""

from __future__ import annotations

import argparse
import os

from mami_jax.runtime.local_paths import MOUNT_IT, is_url, url_hint


#: The options that name what a command writes (a folder, a file, a picture).
OUTPUT_FLAGS = ("--out", "--preview", "--png")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error: PROG: MESSAGE (see --help)`` line, status
    2. Subcommands: ``add_subparsers(..., parser_class=OneLineErrorParser)``."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, and an output (``OUTPUT_FLAGS``) that is a URL refused: written as a
        local path it became a folder named ``gs:`` (``local_paths``)."""
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            flag = next((f for f in action.option_strings if f in OUTPUT_FLAGS), None)
            if flag and isinstance(value, str) and is_url(value):
                self.error(f"{flag} {value}: a URL, not a local path; {MOUNT_IT}")
        return namespace, extras


def require_file(flag: str, path: str) -> None:
    """An input file argument that names no file: FileNotFoundError, or IsADirectoryError
    for a folder (a manifest's folder given for the manifest), naming the flag and path."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file{url_hint(path)}")
