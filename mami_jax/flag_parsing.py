"""absl flag parsing for ``mami_jax.main`` where bad input is one ``error:`` line.

absl prints a parsing failure as a "FATAL Flags parsing error" block, with the config
file's whole traceback when ``get_config`` refuses its argument, and an override of a key
the config lacks (``--config.trian.total_steps=5``) escapes the parser as a bare
``AttributeError: "'trian'"`` traceback; a missing config file surfaces only later, as an
``OSError`` traceback. ``parse_flags`` turns each into one line naming the flag and what is
wrong, exit status 2 (usage), as the applications' commands do.

A Python config file that cannot be loaded is named with what is wrong in it, as one line
too: one that is not Python source (a syntax error, null bytes, not UTF-8:
``error: configs/bad.py: line 3: '(' was never closed``), one whose code raises
(``FILE: line N: RuntimeError: ...``, N the innermost line of the file in the
traceback), one whose ``get_config`` returns something other than a ``ConfigDict`` (it
only failed later, at the first key the run read), one of another kind (the history or
privacy application's: ``config_kinds``). ``config_files.config_file_problem`` is the
source check, which ``config_files.load_config`` makes too.

``--config.KEY=None`` sets None where the key may be None (a placeholder, such as
``data.modalities.<m>.value_window`` or ``source_weight``, or a key whose value is None):
ml_collections read it as the tuple ``(None,)`` or failed to make a float of it
(``none_overrides``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Sequence

import ml_collections
from absl import flags
from ml_collections.config_dict import FieldReference

from mami_jax import config_files
from mami_jax.config_kinds import kind_problem
from mami_jax.config_renames import overridden_keys


def config_value(argv: Sequence[str]) -> str | None:
    """The value of the last ``--config`` in ``argv`` (the one absl takes)."""
    found = config_files.flag_values(argv)
    return found[-1][1] if found else None


def unknown_override(argv: Sequence[str], spec: str) -> str | None:
    """The first ``--config.KEY`` of ``argv`` that the config of ``spec`` does not have."""
    cfg = config_files.load_config(spec)
    for key in overridden_keys(argv):
        if _holder(cfg, key) is None:
            return key
    return None


def _holder(config, key: str):
    """(the ConfigDict holding the dotted ``key`` of ``config``, its last name), or None
    when ``config`` has no such key."""
    *parents, name = key.split(".")
    node = config
    for part in parents:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        return None
    return node, name


#: An override as ``-config.KEY=VALUE``, ``--config.KEY=VALUE`` or ``--config.KEY VALUE``.
_OVERRIDE = re.compile(r"--?config\.([^=\s]+)(?:=(.*))?", re.DOTALL)


def may_be_none(config, key: str) -> bool:
    """Whether the dotted ``key`` of ``config`` exists and may be set to None: a
    placeholder (``config_dict.placeholder``, whatever value it holds now) or a key whose
    value is None. Any other key keeps its type (ml_collections would let None replace a
    number, and the run fail where it reads it)."""
    held = _holder(config, key)
    if held is None:
        return False
    node, name = held
    return node[name] is None or isinstance(node._fields.get(name), FieldReference)


def none_overrides(argv: list[str], spec: str | None) -> tuple[list[str], list[str]]:
    """(``argv`` without the overrides that set a key to None, those keys): each key
    whose last override (absl takes the last) is the literal ``None`` and that
    ``may_be_none`` in the config of ``spec``, which the caller sets after parsing. absl
    would read ``None`` by the key's type: ``(None,)`` for a tuple placeholder
    (``value_window``), an error for a float one (``source_weight``), and a key of value
    None refuses any override. Other overrides stay (a config that cannot be
    loaded, a key it lacks: the parser names them)."""
    found: dict[str, list[tuple[list[int], str | None]]] = {}
    for i, arg in enumerate(argv):
        if arg == "--":             # absl: everything after is positional
            break
        match = _OVERRIDE.fullmatch(arg)
        if not match:
            continue
        key, value = match.group(1), match.group(2)
        at = [i]
        if value is None and i + 1 < len(argv) and argv[i + 1] == "None":
            value, at = "None", [i, i + 1]
        found.setdefault(key, []).append((at, value))
    wanted = [key for key, given in found.items() if given[-1][1] == "None"]
    if not wanted or not spec:
        return argv, []
    try:
        config = config_files.load_config(spec)
    except Exception:  # noqa: BLE001 - the parser below names what is wrong with it
        return argv, []
    keys = [key for key in wanted if may_be_none(config, key)]
    dropped = {i for key in keys for at, _ in found[key] for i in at}
    return [a for i, a in enumerate(argv) if i not in dropped], keys


def set_to_none(config, keys) -> None:
    """Sets each dotted key of ``keys`` (``none_overrides``) to None on ``config``."""
    for key in keys:
        node, name = _holder(config, key)
        node[name] = None


def _config_value_problem(path: str) -> str | None:
    """What is wrong with the ``--config`` value loaded from the file ``path`` (what its
    ``get_config`` returned), or None."""
    if "config" not in flags.FLAGS:
        return None
    value = flags.FLAGS["config"].value
    if value is None or isinstance(value, ml_collections.ConfigDict):
        return None         # None: --config not given; absl reports the missing flag
    failed = getattr(type(value), "_ReportError", None) and vars(value).get("_error")
    if failed is not None:  # ml_collections keeps an OSError of loading for later
        line = config_files.raised_in(failed, path)
        return f"{'' if line is None else f'line {line}: '}{type(failed).__name__}: {failed}"
    return (f"get_config() returned {type(value).__name__}, not an "
            "ml_collections.ConfigDict")


class _DropNoneConfigWarning(logging.Filter):
    """Drops ml_collections' warning that ``get_config`` returned None: ``parse_flags``
    reports that as the error it is, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "get_config() returned None" not in record.getMessage()


def _one_line(text: str) -> str:
    """A flags error as one line: with a traceback inside, its flag and last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}"
    return " ".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """``flags.FLAGS(argv)`` (what ``app.run`` passes on), or one ``error:`` line and exit 2."""
    spec = config_value(argv[1:])
    path = config_files.split_spec(spec)[0] if spec else None
    if spec and spec.startswith(config_files.JSON_CONFIG_FILE + ":"):
        path = config_files.JSON_CONFIG_FILE    # its ARG may end in a .py of its own
    if path is not None and not os.path.isfile(path):
        _exit(f"--config {spec}: no such file")
    problem = config_files.config_file_problem(path) if path else None   # any name: it is run
    if problem:
        _exit(f"{path}: {problem}")
    kept, nulls = none_overrides(argv[1:], spec)
    saved_argv = sys.argv
    if nulls:
        argv = argv[:1] + kept
        sys.argv = argv     # ml_collections reads the overrides from sys.argv, not argv
    quiet = _DropNoneConfigWarning()
    logging.getLogger("absl").addFilter(quiet)
    try:
        parsed = flags.FLAGS(argv)
    except flags.Error as e:
        if spec and "config" in flags.FLAGS and flags.FLAGS["config"].present \
                and flags.FLAGS["config"].value is None:
            _exit(f"{path}: get_config() returned None, not an ml_collections.ConfigDict")
        _exit(_one_line(str(e)))
    except Exception as e:  # noqa: BLE001 - named below, or re-raised
        line = config_files.raised_in(e, path) if path else None
        if line is not None:                    # the config file's own code raised
            _exit(f"{path}: line {line}: {type(e).__name__}: {_one_line(str(e))}")
        if not isinstance(e, (AttributeError, KeyError)):
            raise
        try:
            key = unknown_override(argv[1:], spec) if spec else None   # a key the config lacks
        except ValueError as no_config:     # not a config at all (no get_config)
            _exit(str(no_config))
        _exit(f"--config.{key}: {spec} has no key {key!r}" if key else str(e))
    finally:
        sys.argv = saved_argv
        logging.getLogger("absl").removeFilter(quiet)
    problem = _config_value_problem(path) if path else None
    if problem is None and path and isinstance(flags.FLAGS["config"].value,
                                               ml_collections.ConfigDict):
        problem = kind_problem(flags.FLAGS["config"].value, "experiment")
    if problem:
        _exit(f"{path}: {problem}")
    if nulls:
        set_to_none(flags.FLAGS["config"].value, nulls)
    if len(parsed) > 1:        # absl would print the whole usage text above the complaint
        _exit(f"unexpected arguments: {' '.join(parsed[1:])} (every setting is a flag: "
              "--config.KEY=VALUE; see --help)")
    return parsed


def _exit(message: str) -> None:
    # a JSON config (a run's config.json, a model file's) is loaded through the package's
    # own loader file: the user gave, and should read, their file's name alone
    message = message.replace(config_files.JSON_CONFIG_FILE + ":", "")
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
