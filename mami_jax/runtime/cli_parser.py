"""The argument parser of every ``python -m mami_jax...`` command.

argparse answers a bad argument with its usage block and a last line that starts with the
program's name; the package's commands answer every bad input with one ``error:`` line
instead (status 2 for usage, as argparse), so a wrapper script or a notebook cell shows
the one thing that is wrong (Ctrl-C is one line too: ``runtime.interrupts``).
"""

from __future__ import annotations

import argparse
import os
import sys

from mami_jax.runtime.local_paths import MOUNT_IT, is_url, url_hint


#: The options that name what a command writes (a folder, a file, a picture, a JSON report).
OUTPUT_FLAGS = ("--out", "--preview", "--png", "--json")


def whole_at_least(low: int):
    """An argparse ``type``: a whole number >= ``low``; anything else is a usage error
    (status 2) naming the flag, as a count below 1 is everywhere (docs/running.md)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got "
                                             f"{text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value
    convert.__name__ = f"whole number >= {low}"
    return convert


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with usage errors as one ``error: PROG: MESSAGE (see --help)`` line, status
    2. Subcommands: ``add_subparsers(..., parser_class=OneLineErrorParser)``."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, with a long option in either spelling (``--read_threads`` or
        ``--read-threads``: ``in_this_parsers_spelling``), and an output (``OUTPUT_FLAGS``)
        that is a URL refused: written as a local path it became a folder named ``gs:``
        (``local_paths``)."""
        args = in_this_parsers_spelling(
            sys.argv[1:] if args is None else list(args),
            [s for a in self._actions for s in a.option_strings if s.startswith("--")])
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            flag = next((f for f in action.option_strings if f in OUTPUT_FLAGS), None)
            if flag and isinstance(value, str) and is_url(value):
                self.error(f"{flag} {value}: a URL, not a local path; {MOUNT_IT}")
        return namespace, extras


def in_this_parsers_spelling(args: list[str], options: list[str]) -> list[str]:
    """``args`` with each long option the parser does not know as written, but knows with
    ``_`` and ``-`` swapped, in the parser's spelling. The commands spell options with
    ``-`` (``--image-size``) and absl's ``main`` with ``_`` (``--config.data.num_workers``);
    a user used to one wrote the other and got "unrecognized arguments". A prefix of a
    known option (argparse's abbreviations) counts as known; after ``--`` nothing is an
    option."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if name.startswith("--") and not _known(name, options):
            body = name[2:]
            for other in ("--" + body.replace("_", "-"), "--" + body.replace("-", "_")):
                if other != name and _known(other, options):
                    arg = other + eq + value
                    break
        out.append(arg)
    return out


def _known(name: str, options: list[str]) -> bool:
    return len(name) > 2 and any(o.startswith(name) for o in options)


def require_file(flag: str, path: str) -> None:
    """An input file argument that names no file: FileNotFoundError, or IsADirectoryError
    for a folder (a manifest's folder given for the manifest), naming the flag and path."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path}: no such file{url_hint(path)}")
