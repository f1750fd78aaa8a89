"""``WORKDIR/config.json``: the whole experiment config a run's latest checkpoint was
trained with, and ``config.until_step_<N>.json``: the one its steps up to N were trained
with, where it was resumed at step N with other settings.

``model_config.json`` holds only what the checkpoints' parameters need. A command that
reads a trained run also needs its preprocessing (image sizes, slices, normalisation per
modality), its mesh and its batch sizes; without them stored, every application command
had to be told the config file and its words again (``--config configs/all.py:runlocal``),
and a wrong guess was refused only where it changed the model config. The file is the
config after every ``--config.KEY`` override, so it also travels with the run to a machine
whose checkout holds other config files. ``config_files.load_config`` reads it back (a
``.json`` spec), the applications choose it by themselves (``experiment_config``), and
``python -m mami_jax.main --workdir=RUN`` without ``--config`` reads it
(``with_the_runs_config``).

A new run writes it as it starts (a run stopped before its first checkpoint is started
again with it); a resumed run writes it just before it saves its first new checkpoint,
after it kept the config that trained the resumed checkpoint, when that differs, as
``config.until_step_<N>.json``, which nothing overwrites. A resume written at its start
made a run stopped before it trained a step record settings that trained nothing: the
next resume compared itself with those, replaced the true ``until_step`` record with them,
and ``--mode=eval`` read the saved checkpoint with them. Readers take the file that
covers the checkpoint they read (``config_files.trained_config_path``), so even a run
killed between writing ``config.json`` and finishing that save is read right.
"""

from __future__ import annotations

import json
import os
import sys

from absl import logging

from mami_jax.config_files import (flag_values, run_config_path, trained_config_path,
                                   until_step_files, until_step_path)
from mami_jax.config_kinds import missing_keys
from mami_jax.runtime.atomic_files import write_text_atomic


def refuse_a_foreign_config_file(workdir: str) -> None:
    """ValueError when ``WORKDIR/config.json`` exists and is not a training run's config
    (a dataset's or another tool's file of that common name, in a folder given as
    ``--workdir``): training would replace it. Called before anything is written."""
    path = run_config_path(workdir)
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as f:
            values = json.loads(f.read())
        missing = missing_keys(values, "experiment") if isinstance(values, dict) else None
        problem = (f"a JSON {type(values).__name__}, not an object" if missing is None else
                   f"it has no {', '.join(missing)}" if missing else "")
    except (ValueError, UnicodeDecodeError) as e:
        problem = f"not JSON: {e}"
    if problem:
        raise ValueError(f"--workdir {workdir}: {path} is not a training run's config "
                         f"({problem}); training writes its own config.json there and would "
                         "replace it: give another --workdir, or move the file")


def write_run_config(workdir: str, config) -> None:
    """Atomic write (process 0) of ``config`` as JSON; a config value JSON cannot hold is
    a TypeError here, at the start of training, not when the run is read."""
    import jax
    if jax.process_index() != 0:
        return
    write_text_atomic(run_config_path(workdir), config.to_json(indent=2) + "\n")


def _flat(tree, prefix: str = "") -> dict:
    """{"a.b.c": value} of a nested JSON object."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(stored_json: str, config) -> dict[str, tuple]:
    """Dotted key -> (stored, now) for every setting of ``config`` other than the stored
    config's (a run's ``config.json`` text) ("<absent>" for a key one side lacks)."""
    stored = _flat(json.loads(stored_json))
    now = _flat(json.loads(config.to_json()))
    return {key: (stored.get(key, "<absent>"), now.get(key, "<absent>"))
            for key in sorted(set(stored) | set(now))
            if stored.get(key, "<absent>") != now.get(key, "<absent>")}


def note_changed_settings(workdir: str, config, step: int) -> None:
    """A run resumed at ``step`` with settings other than those that trained it (an
    override given the first time and forgotten the second, a config file edited in
    between) went on silently under the new ones. Now a warning names each change against
    the config that trained the checkpoint of ``step`` (``trained_config_path``: not
    ``config.json`` when an earlier resume was stopped before it saved), and that config is
    kept as ``config.until_step_<step>.json`` (process 0). An existing one is never
    replaced: it already is that config, the record of what trained steps 1..``step``."""
    import jax
    path = trained_config_path(workdir, step)
    if jax.process_index() != 0 or not os.path.isfile(path):
        return
    with open(path) as f:
        stored = f.read()
    changed = changed_settings(stored, config)
    if not changed:
        return
    kept = until_step_path(workdir, step)
    if not os.path.exists(kept):
        write_text_atomic(kept, stored)
    logging.warning("resuming from step %d with %d setting(s) other than the run's: %s; "
                    "the steps up to %d were trained with %s", step, len(changed),
                    "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()),
                    step, kept)


def forget_configs_past(workdir: str, step: int) -> None:
    """Removes (process 0, with a warning) each ``config.until_step_<N>.json`` of N past
    ``step``, the step training starts from (0: a new run): it described checkpoints that
    are gone (deleted by hand, the whole ``checkpoints/`` for a new start), and the new
    checkpoints of those steps would otherwise be read with it."""
    import jax
    if jax.process_index() != 0:
        return
    for n, path in sorted(until_step_files(workdir).items()):
        if n > step:
            os.remove(path)
            logging.warning("removed %s: the checkpoints up to step %d it described are gone "
                            "(training starts from step %d)", path, n, step)


def with_the_runs_config(argv: list[str]) -> list[str]:
    """``python -m mami_jax.main``'s ``argv`` with ``--config`` added when it names none:
    the config a ``--model`` carries (a file exported from a run, a run or a converter
    folder holding ``config.json``: ``experiment_config.carried_config``), else the
    ``--workdir``'s own, the config that trained its latest checkpoint
    (``config_files.trained_config_path``), so a trained model is evaluated, embedded or
    resumed as it was trained. It goes first, before any ``--config.KEY=VALUE`` override,
    which the flags parser reads only after the config. Without either, one error line
    says what to name (absl would say only that ``--config`` must not be None)."""
    if flag_values(argv, "--config") or any(a.startswith("--help") for a in argv):
        return list(argv)
    from mami_jax.experiment_config import carried_config
    models, workdirs = flag_values(argv, "--model"), flag_values(argv, "--workdir")
    carried = carried_config(models[-1][1]) if models else None
    if carried is not None:
        print(f"--config: the one --model carries, {carried}", file=sys.stderr, flush=True)
        return [f"--config={carried}"] + list(argv)
    stored = run_config_path(workdirs[-1][1]) if workdirs else ""
    if not stored:
        return list(argv)
    if not os.path.isfile(stored):
        workdir = workdirs[-1][1]
        what = ("holds no config.json (a run stores one when it starts training)"
                if os.path.isdir(workdir) else "is no run yet")
        print(f"error: --config is needed: --workdir {workdir} {what}"
              f"{', and --model carries none' if models else ''}; name the experiment "
              "config, e.g. --config=configs/all.py:runlocal", file=sys.stderr)
        sys.exit(2)         # a usage error, as absl's flag errors
    stored = trained_config_path(workdirs[-1][1])
    print(f"--config: the run's own, {stored}", file=sys.stderr, flush=True)
    return [f"--config={stored}"] + list(argv)
