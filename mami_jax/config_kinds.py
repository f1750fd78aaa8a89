"""The three kinds of config file, and a refusal naming a file of the wrong kind.

mami_jax reads three kinds of config: the experiment's (model, data, training,
evaluation), the history application's and the privacy application's. Their flags
overlap: ``--config`` is the experiment in ``mami_jax.main`` and in the history
application, but the privacy settings in the privacy application (whose experiment is
``--experiment``, a flag the history application takes too), and the history settings
are ``--app-config``. A file of the wrong kind loaded without complaint and failed at the
first key the command read, as an ``AttributeError: "'cues'"`` traceback. Each kind is
told by top-level keys the others lack; ``require_kind`` names the file, the kind it
should be, and the flag that reads the kind it is.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str                  # "an experiment config"
    keys: tuple[str, ...]      # top-level keys every config of the kind has
    read_by: str               # the flags that take it


KINDS = {
    "experiment": Kind("an experiment config", ("model", "data", "train", "eval"),
                       "python -m mami_jax.main --config and the applications' --experiment "
                       "(history's --config)"),
    "history": Kind("a history app config", ("classifier", "calibration", "target_far"),
                    "python -m mami_jax.apps.history --app-config (and privacy evaluate "
                    "--history-config)"),
    "privacy": Kind("a privacy app config", ("method", "perturb", "cues"),
                    "python -m mami_jax.apps.privacy --config"),
}


def missing_keys(config, kind: str) -> list[str]:
    """The top-level keys of ``kind`` that ``config`` (a ConfigDict or dict) lacks."""
    return [k for k in KINDS[kind].keys if k not in config]


def kind_problem(config, kind: str) -> str | None:
    """What makes ``config`` not of ``kind`` (keys it lacks, and the kind it is, if one),
    or None."""
    missing = missing_keys(config, kind)
    if not missing:
        return None
    other = next((k for k, v in KINDS.items()
                  if k != kind and all(key in config for key in v.keys)), None)
    said = (f"; it is {KINDS[other].name}, which {KINDS[other].read_by} reads"
            if other else "")
    return (f"not {KINDS[kind].name} (it has no {', '.join(missing)}){said}")


def require_kind(config, kind: str, source: str) -> None:
    """ValueError naming ``source`` (the file) when ``config`` is not of ``kind``."""
    problem = kind_problem(config, kind)
    if problem:
        raise ValueError(f"config {source}: {problem}")
