"""absl flag parsing for ``mami_jax.main`` where bad input is one ``error:`` line.

absl prints a parsing failure as a "FATAL Flags parsing error" block, with the config
file's whole traceback when ``get_config`` refuses its argument, and an override of a key
the config lacks (``--config.trian.total_steps=5``) escapes the parser as a bare
``AttributeError: "'trian'"`` traceback; a missing config file surfaces only later, as an
``OSError`` traceback. ``parse_flags`` turns each into one line naming the flag and what is
wrong, exit status 2 (usage), as the applications' commands do.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from mami_jax import config_files
from mami_jax.config_renames import overridden_keys


def config_value(argv: Sequence[str]) -> str | None:
    """The value of the last ``--config`` in ``argv`` (the one absl takes)."""
    found = config_files.flag_values(argv)
    return found[-1][1] if found else None


def unknown_override(argv: Sequence[str], spec: str) -> str | None:
    """The first ``--config.KEY`` of ``argv`` that the config of ``spec`` does not have."""
    cfg = config_files.load_config(spec)
    for key in overridden_keys(argv):
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                return key
            node = node[part]
    return None


def _one_line(text: str) -> str:
    """A flags error as one line: with a traceback inside, its flag and last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
    return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """``flags.FLAGS(argv)`` (what ``app.run`` passes on), or one ``error:`` line and exit 2."""
    spec = config_value(argv[1:])
    path = spec.partition(":")[0] if spec else None
    if path is not None and not os.path.isfile(path):
        _exit(f"--config {spec}: no such file")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _exit(_one_line(str(e)))
    except (AttributeError, KeyError) as e:     # an override of a key the config lacks
        key = unknown_override(argv[1:], spec) if spec else None
        _exit(f"--config.{key}: {spec} has no key {key!r}" if key else str(e))


def _exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
