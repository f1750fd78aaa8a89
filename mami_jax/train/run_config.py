"""``WORKDIR/config.json``: the whole experiment config a run was last started with, and
which config a command that reads a trained model should load (``experiment_spec``).

``model_config.json`` holds only what the checkpoints' parameters need. A command that
reads a trained run also needs its preprocessing (image sizes, slices, normalisation per
modality), its mesh and its batch sizes; without them stored, every application command
had to be told the config file and its words again (``--config configs/all.py:runlocal``),
and a wrong guess was refused only where it changed the model config. The file is the
config after every ``--config.KEY`` override, written at each start of training (a resumed
run with other settings records them), so it also travels with the run to a machine
whose checkout holds other config files. It is read back by ``config_files.load_config``
(a ``.json`` spec), so a user may also name it as ``--config RUN/config.json``, and
``python -m mami_jax.main --workdir=RUN`` without ``--config`` reads it
(``with_the_runs_config``).
"""

from __future__ import annotations

import os
import sys

from mami_jax.config_files import flag_values, resolve_spec
from mami_jax.runtime.atomic_files import write_text_atomic

CONFIG_FILE = "config.json"

#: The config a model file (``.pth``/``.safetensors``, a converter folder) that carries none
#: is read with when none is named: the paper's, which the MaMI authors' released weights
#: were trained with.
MODEL_FILE_EXPERIMENT = "configs/all.py"


def run_config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def write_run_config(workdir: str, config) -> None:
    """Atomic write (process 0) of ``config`` as JSON; a config value JSON cannot hold is
    a TypeError here, at the start of training, not when the run is read."""
    import jax
    if jax.process_index() != 0:
        return
    write_text_atomic(run_config_path(workdir), config.to_json(indent=2) + "\n")


class RunConfigMissing(ValueError):
    """A workdir that was trained before runs kept their config, named without one."""


def experiment_spec(model: str, given: str = "", how: str = "--config FILE[:ARG]") -> str:
    """The config spec to load ``model`` (a workdir, ``WORKDIR@STEP``, a model file or a
    converter folder) with: ``given`` when the user named one; else the run's own
    ``config.json`` (absolute, so reports name it from anywhere); a model file exported
    from a run carries that config (the file is then the spec); any other model file or
    converter folder is read with the paper's config. A workdir without ``config.json``
    is a ``RunConfigMissing`` saying to name its config (``how``: the flag or setting
    that does)."""
    if given:
        return resolve_spec(given)
    from mami_jax.convert.checkpoint_dir import is_converter_checkpoint
    if os.path.isfile(model):
        from mami_jax.convert.official import embedded_experiment
        return (os.path.abspath(model) if embedded_experiment(model) is not None
                else resolve_spec(MODEL_FILE_EXPERIMENT))
    workdir = model.partition("@")[0]
    if is_converter_checkpoint(model) or not os.path.isdir(workdir):
        return resolve_spec(MODEL_FILE_EXPERIMENT)    # (a missing path: the loader names it)
    stored = run_config_path(workdir)
    if os.path.isfile(stored):
        return os.path.abspath(stored)
    raise RunConfigMissing(
        f"{model}: the run has no {CONFIG_FILE} (it was trained before runs kept their "
        f"config); name the experiment config it was trained with: {how}")


def with_the_runs_config(argv: list[str]) -> list[str]:
    """``python -m mami_jax.main``'s ``argv`` with ``--config=WORKDIR/config.json`` added
    when it names no ``--config`` and its ``--workdir`` holds one, so a trained run is
    evaluated, embedded or resumed as it was trained (overrides still apply on top)."""
    if flag_values(argv, "--config"):
        return list(argv)
    workdirs = flag_values(argv, "--workdir")
    stored = run_config_path(workdirs[-1][1]) if workdirs else ""
    if not os.path.isfile(stored):
        return list(argv)
    print(f"--config: the run's own, {stored}", file=sys.stderr, flush=True)
    return list(argv) + [f"--config={stored}"]
