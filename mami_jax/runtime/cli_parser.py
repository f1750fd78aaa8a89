"""The argument parser of every ``python -m mami_jax...`` command.

argparse answers a bad argument with its usage block and a last line that starts with the
program's name; the package's commands answer every bad input with one ``error:`` line
instead (status 2 for usage, as argparse), so a wrapper script or a notebook cell shows
the one thing that is wrong. Ctrl-C is one line too (``say_interrupted``), saying what
running the same command again does.
"""

from __future__ import annotations

import argparse
import sys

#: The exit status of a command ended by Ctrl-C (128 + SIGINT, as the shell reports it).
INTERRUPTED = 130


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error: PROG: MESSAGE (see --help)`` line, status
    2. Subcommands: ``add_subparsers(..., parser_class=OneLineErrorParser)``."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def say_interrupted(again: str = "") -> int:
    """One ``interrupted`` line on stderr for Ctrl-C, instead of a KeyboardInterrupt
    traceback; ``again``: what running the same command again does (empty: nothing to
    say). Returns the exit status, ``INTERRUPTED``."""
    print(f"\ninterrupted{'; ' + again if again else ''}", file=sys.stderr, flush=True)
    return INTERRUPTED
