"""Loading a config file from any working directory: ``FILE[:ARG]``, a Python file with
``get_config(arg)``, or a ``config.json`` a training run wrote (``train/run_config``: the
whole config it was started with, so a trained run is read as it was trained;
``run_config_path``).

The repository's configs import each other as a package (``from configs import
common_runlocal``), which Python finds only when the folder above ``configs/`` is on
``sys.path``; ``python -m`` puts only the working directory there, so a command started
elsewhere with ``--config=/path/to/configs/all.py`` failed on that import. Every loader
(``mami_jax.main``'s flag, the applications' ``load_config``) therefore first makes the
folder above the file's own folder importable. A relative FILE that does not exist from
the working directory is looked up in the repository (``configs/all.py`` names the
repository's file wherever the command runs).

A spec's FILE may hold ':' of its own (a run folder named ``run_12:00``): ``split_spec``
takes a spec that names an existing file as FILE alone, and otherwise cuts it at the ':'
that follows a ``.py`` or ``.json`` name, not at the first ':', which split such a path and
named a file that does not exist.

A run resumed with other settings keeps the config its earlier steps were trained with as
``config.until_step_<N>.json`` beside ``config.json`` (``train/run_config``);
``trained_config_path`` is the one that trained a given checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback
from typing import Sequence

import ml_collections

from mami_jax.config_kinds import require_kind
from mami_jax.runtime.json_object import parse_json_object

#: The repository root (where ``configs/`` lives), for relative config paths.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Where a training run keeps its whole config (``train/run_config`` writes it).
RUN_CONFIG_FILE = "config.json"


def run_config_path(workdir: str) -> str:
    return os.path.join(workdir, RUN_CONFIG_FILE)


#: The config that trained a run's steps up to N, kept when it was resumed at step N with
#: other settings (``train/run_config.note_changed_settings``).
_UNTIL_STEP = re.compile(r"config\.until_step_(\d+)\.json")


def until_step_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, f"config.until_step_{int(step)}.json")


def until_step_files(workdir: str) -> dict[int, str]:
    """{N: path} of the workdir's ``config.until_step_<N>.json`` files."""
    try:
        names = os.listdir(workdir)
    except OSError:
        return {}
    found = {}
    for name in names:
        match = _UNTIL_STEP.fullmatch(name)
        if match:
            found[int(match.group(1))] = os.path.join(workdir, name)
    return found


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the finished checkpoints in ``WORKDIR/checkpoints``, sorted (a save in
    progress is a folder ``<step>.orbax-checkpoint-tmp-...``, left out); read without
    orbax, so that a command can choose a config before it imports JAX."""
    folder = os.path.join(workdir, "checkpoints")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(folder, n)))


def trained_config_path(workdir: str, step: int | None = None) -> str:
    """The file holding the config that trained the checkpoint of ``step`` (None: the
    latest): ``config.until_step_<N>.json`` of the least N >= ``step`` where there is one,
    else ``config.json``. A resumed run replaces ``config.json`` before its first new
    checkpoint is saved, and only after it kept the config that trained the earlier steps
    as ``config.until_step_<resumed step>.json``; so ``config.json`` alone could name the
    settings of a run that was stopped (or killed while saving) before it saved anything,
    or of steps past an earlier checkpoint a command reads (``WORKDIR@STEP``)."""
    if step is None:
        steps = checkpoint_steps(workdir)
        if not steps:
            return run_config_path(workdir)
        step = steps[-1]
    covering = [n for n in until_step_files(workdir) if n >= step]
    return until_step_path(workdir, min(covering)) if covering else run_config_path(workdir)


def resolve(path: str) -> str:
    """``path`` itself where it exists (or is absolute), else the repository's file of that
    name where there is one; else ``path``, so a missing file is named as it was given."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    return in_repo if os.path.exists(in_repo) else path


#: The names after which a spec's ':' starts ARG (``configs/all.py:runlocal``).
SPEC_FILE_SUFFIXES = (".py", ".json")


def split_spec(spec: str) -> tuple[str, str, str]:
    """``FILE[:ARG]`` as (FILE, ":" or "", ARG), where FILE may hold ':' of its own (a
    workdir named ``run_12:00``): the whole spec when it names an existing file; else cut
    at a ':' that follows a ``.py`` or ``.json`` name, the last one whose FILE exists, else
    the last one (a missing file is named whole); a spec with no such ':' is cut at its
    first ':' only when what precedes it is an existing file, else it is all FILE."""
    if os.path.isfile(resolve(spec)):
        return spec, "", ""
    cuts = [i for i, c in enumerate(spec) if c == ":" and spec[:i].endswith(SPEC_FILE_SUFFIXES)]
    for i in reversed(cuts):
        if os.path.isfile(resolve(spec[:i])):
            return spec[:i], ":", spec[i + 1:]
    if cuts:
        return spec[:cuts[-1]], ":", spec[cuts[-1] + 1:]
    path, sep, arg = spec.partition(":")
    if sep and os.path.isfile(resolve(path)):
        return path, sep, arg
    return spec, "", ""


def resolve_spec(spec: str) -> str:
    """``FILE[:ARG]`` with FILE resolved as ``load_config`` resolves it (for loaders that
    only read paths relative to the working directory)."""
    path, sep, arg = split_spec(spec)
    return resolve(path) + sep + arg


def make_importable(path: str) -> None:
    """Puts the folder above ``path``'s folder on ``sys.path`` (last, so it shadows no
    installed package), so that the config file can import its siblings as a package."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.append(root)


def flag_values(argv: Sequence[str], flag: str = "--config") -> list[tuple[int, str]]:
    """(position in ``argv``, value) of every ``--config=VALUE`` / ``--config VALUE``, in
    order (absl takes the last)."""
    found = []
    for i, item in enumerate(argv):
        if item.startswith(flag + "="):
            found.append((i, item[len(flag) + 1:]))
        elif item == flag and i + 1 < len(argv):
            found.append((i + 1, argv[i + 1]))
    return found


#: Model files that may carry their run's config (``--config=FILE``, as ``--config=FILE.json``).
MODEL_FILES = (".pth", ".pt", ".safetensors")
#: The Python config file that loads a JSON one (``--config=FILE.json`` for the flags parser).
JSON_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "json_config_file.py")


def flag_config_from_anywhere(argv: Sequence[str], flag: str = "--config") -> list[str]:
    """``argv`` with the file of ``--config=FILE[:ARG]`` (or ``--config FILE``) resolved as
    ``load_config`` resolves it and made importable, before a flags parser
    (``ml_collections.config_flags``, which reads Python files only) loads it; an existing
    ``FILE.json`` (or model file carrying its run's config) becomes
    ``json_config_file.py:FILE``, and so does a Python ``FILE[:ARG]`` whose FILE holds ':'
    (``json_config_file.py:FILE:ARG``): ml_collections cuts its value at the first ':'."""
    out = list(argv)
    for at, value in flag_values(argv, flag):
        path, sep, arg = split_spec(value)
        full = resolve(path)
        if (full.endswith((".json",) + MODEL_FILES) and not sep
                and os.path.isfile(full)):
            full, sep, arg = JSON_CONFIG_FILE, ":", os.path.abspath(full)
        elif ":" in full and os.path.isfile(full):
            full, sep, arg = JSON_CONFIG_FILE, ":", os.path.abspath(full) + sep + arg
        make_importable(full)
        joined = out[at].startswith(flag + "=")
        out[at] = (f"{flag}=" if joined else "") + full + sep + arg
    return out


def _tuples(value):
    """JSON's lists back to the tuples every config file writes (nested dicts kept)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def json_config(text, source: str):
    """The ConfigDict of a JSON config (``ConfigDict.to_json``), with the tuples a config
    file writes (JSON only has lists); ValueError naming ``source`` when it is not a JSON
    object, or one with a key unknown or of the wrong type, which would otherwise fail only
    where it is read, or never; keys it lacks (a run of an older version) take their
    defaults, with a warning (``config_types.check_run_config``).

    The values go into the experiment config (``mami_jax.config.base_config``) rather than
    a ConfigDict built from JSON's types, so each key keeps its type and a
    ``--config.KEY=VALUE`` override reads as it does on the config file: a placeholder
    stored as null (``data.modalities.<m>.value_window``, ``source_weight``) was a key of
    type None, which ml_collections refuses to override, and a float stored as a whole
    number (a hand edit of ``"learning_rate": 1``) became an int key that refused 0.0005."""
    from mami_jax.config import base_config
    from mami_jax.config_types import check_run_config
    values = parse_json_object(text, source, "config values")
    config = base_config()
    _copy_values(config, _tuples(check_run_config(values, source)), "")
    config.unlock()     # as a ConfigDict built from the JSON was (ml_collections' flag locks it)
    return config


def _copy_values(node, values: dict, prefix: str) -> None:
    """Sets every value of ``values`` (checked by ``check_run_config``: the keys of
    ``node``) on the ConfigDict ``node``, recursing into blocks; a table of names
    (``config_types.FREE_FORM_TABLES``) is replaced whole, its values of the table's type
    (1 for 1.0 in a table of weights)."""
    from mami_jax.config_types import FREE_FORM_TABLES
    for key, value in values.items():
        path = prefix + key
        if path in FREE_FORM_TABLES:
            kind = FREE_FORM_TABLES[path]
            node[key] = ml_collections.ConfigDict(
                {name: kind(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                 else v for name, v in value.items()})
        elif isinstance(node[key], ml_collections.ConfigDict):
            _copy_values(node[key], value, path + ".")
        else:
            node[key] = value


def read_json_config(path: str):
    """``json_config`` of a file (a run's ``config.json``)."""
    with open(path, "rb") as f:
        return json_config(f.read(), f"config file {path!r}")


def config_file_problem(path: str) -> str | None:
    """Why the Python file ``path`` cannot be loaded as a config before any of it runs
    (``line N: message`` for a syntax error; unreadable, null bytes, not UTF-8), or None.
    Python's import of such a file ends in a traceback that names the file only deep inside
    it."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}" if e.lineno else f"not Python source ({e.msg})"
    except ValueError as e:       # null bytes, before Python 3.12
        return f"not Python source ({e})"
    return None


def raised_in(exc: BaseException, path: str) -> int | None:
    """The innermost line of file ``path`` in ``exc``'s traceback; None when the exception
    was not raised from code of that file."""
    target = os.path.realpath(path)
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.realpath(frame.f_code.co_filename) == target:
            line = lineno
    return line


def _named_by_line(run, spec: str, full: str):
    """``run()`` of a config file's code: a ValueError it raises (a bad word of ARG) is
    named by the spec, any other exception raised in the file's code by the file's line;
    others propagate."""
    try:
        return run()
    except ValueError as e:
        raise ValueError(f"config {spec!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the file's own code: named by its line
        line = raised_in(e, full)
        if line is None:
            raise
        raise ValueError(f"config file {split_spec(spec)[0]!r}: line {line}: "
                         f"{type(e).__name__}: {' '.join(str(e).split())}") from e


def load_config(spec: str, kind: str | None = None):
    """``get_config(ARG)`` of the Python file of ``FILE[:ARG]``, or the config a ``.json``
    FILE holds (no ARG); FileNotFoundError or ValueError naming the file when it is
    missing, has no ``get_config``, refuses ARG or is not a config, or (``kind``:
    "experiment", "history", "privacy") is a config of another kind (``config_kinds``)."""
    config = _load_config(spec)
    if kind is not None:
        require_kind(config, kind, spec)
    return config


def _load_config(spec: str):
    path, _, arg = split_spec(spec)
    full = resolve(path)
    if not os.path.isfile(full):
        raise FileNotFoundError(f"config file {path!r} not found")
    if full.endswith(".json"):
        if arg:
            raise ValueError(f"config {spec!r}: a JSON config takes no ARG")
        return read_json_config(full)
    problem = config_file_problem(full)
    if problem:
        raise ValueError(f"config file {path!r}: {problem}")
    make_importable(full)
    name = "config_file_" + os.path.splitext(os.path.basename(full))[0]
    module_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(module_spec)
    _named_by_line(lambda: module_spec.loader.exec_module(module), spec, full)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path!r} defines no get_config(arg)")
    config = _named_by_line(lambda: module.get_config(arg or None), spec, full)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path!r}: get_config() returned "
                         f"{type(config).__name__}, not an ml_collections.ConfigDict")
    return config
