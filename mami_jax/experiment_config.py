"""Which experiment config a model is read with, and reading it: a run's own
(``WORKDIR/config.json``), the one a file exported from a run carries, or the paper's.

Every command that reads a re-ID model (the applications, the privacy benchmarks) needs
the experiment config it was trained with: its preprocessing, model config, mesh and
batch size. ``experiment_spec`` chooses it once, as a spec string the reports record, and
``load_experiment`` reads any such spec (a config file, a run's ``config.json``, or an
exported model file).
"""

from __future__ import annotations

import os

from mami_jax.config_files import (json_config, load_config, resolve_spec, run_config_path,
                                   split_spec, trained_config_path)
from mami_jax.model_name import workdir_and_step

#: The config a model file (``.pth``/``.safetensors``, a converter folder) that carries none
#: is read with when none is named: the paper's, which the MaMI authors' released weights
#: were trained with.
MODEL_FILE_EXPERIMENT = "configs/all.py"


class RunConfigMissing(ValueError):
    """A workdir that was trained before runs kept their config, named without one."""


def experiment_spec(model: str, given: str = "", how: str = "--config FILE[:ARG]") -> str:
    """The config spec to load ``model`` (a workdir, ``WORKDIR@STEP``, a model file or a
    converter folder) with: ``given`` when the user named one; else the run's own config
    that trained the checkpoint read (the latest, or STEP): ``config.json``, or the
    ``config.until_step_<N>.json`` a resume with other settings kept
    (``config_files.trained_config_path``), absolute, so reports name it from anywhere; a
    model file exported from a run carries that config (the file is then the spec), and a
    converter folder imported from such a file keeps it as ``config.json``; any other
    model file or converter folder is read with the paper's config. A folder that is none
    of these is a ValueError; a workdir with checkpoints but without ``config.json`` is a
    ``RunConfigMissing`` saying to name its config (``how``: the flag or setting that
    does)."""
    if given:
        return resolve_spec(given)
    from mami_jax.convert.checkpoint_dir import is_converter_checkpoint
    if os.path.isfile(model):
        from mami_jax.convert.official import embedded_experiment
        return (os.path.abspath(model) if embedded_experiment(model) is not None
                else resolve_spec(MODEL_FILE_EXPERIMENT))
    workdir, step = workdir_and_step(model)
    if not os.path.isdir(workdir):
        return resolve_spec(MODEL_FILE_EXPERIMENT)    # (a missing path: the loader names it)
    stored = run_config_path(workdir)
    if os.path.isfile(stored):
        step = int(step) if step is not None and step.strip().isdigit() else None
        return os.path.abspath(trained_config_path(workdir, step))
    if is_converter_checkpoint(model):
        return resolve_spec(MODEL_FILE_EXPERIMENT)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"{model}: not a trained run (no checkpoints/ and no "
                         f"{os.path.basename(stored)}), nor a converter folder or model file")
    raise RunConfigMissing(
        f"{model}: the run has no {os.path.basename(stored)} (it was trained before runs "
        f"kept their config); name the experiment config it was trained with: {how}")


def carried_config(model: str) -> str | None:
    """The experiment config ``model`` carries, as a spec ``load_experiment`` reads: its
    run's ``config.json`` (a workdir, ``WORKDIR@STEP``, a converter folder imported from an
    exported file) or the file itself when it was exported from a run; None for anything
    else (the authors' files, a run that stored none, a missing path)."""
    try:
        spec = experiment_spec(model)
    except ValueError:
        return None
    return None if spec == resolve_spec(MODEL_FILE_EXPERIMENT) else spec


def load_experiment(spec: str):
    """The config of an ``experiment_spec``: ``config_files.load_config`` of a config file
    or a run's ``config.json``, or the config a model file exported from a run carries
    (ValueError naming the file when it carries none)."""
    path = split_spec(spec)[0]
    if path.endswith((".py", ".json")) or not os.path.isfile(path):
        return load_config(spec, kind="experiment")
    from mami_jax.convert.official import embedded_experiment
    from mami_jax.convert.torch_io import CheckpointFileError
    try:
        text = embedded_experiment(path)
    except CheckpointFileError as e:   # a table, a note: say what was looked for
        raise ValueError(f"{path}: neither an experiment config (a .py file, a run's "
                         "config.json) nor a model file exported from a run; read as a "
                         f"model file: {e}") from None
    if text is None:
        raise ValueError(f"{path} carries no experiment config (a file exported from a "
                         "training run with python -m mami_jax.convert export-torch does)")
    return json_config(text, f"the experiment config in {path}")
