"""Our side of the interchange: orbax checkpoint directories of a params tree + config.

Two layouts are read; one is written.

Converter layout (written by ``save_params``)::

    CKPT_DIR/
      params/              orbax StandardCheckpointer checkpoint of the params pytree
      model_config.json    cfg.to_json() of the model (mami_jax.models.config)

Trainer layout (written by the trainer with an orbax ``CheckpointManager``)::

    WORKDIR/
      model_config.json
      checkpoints/<step>/params/   item "params": the params pytree
      checkpoints/<step>/...       other items (optimizer state, ...), ignored here

``load_params`` accepts ``CKPT_DIR``, a trainer step directory
``WORKDIR/checkpoints/<step>`` (config read from ``WORKDIR/model_config.json``), or
``WORKDIR`` itself (its highest finished step). Arrays are restored as host numpy
arrays whatever sharding they were saved with, so a checkpoint written on a TPU
pod can be converted on a laptop.

``save_params`` is atomic: everything is written into a temporary sibling
directory that is renamed to ``CKPT_DIR`` at the end; an existing ``CKPT_DIR`` is
an error unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Mapping

import numpy as np

from mami_jax.models.config import default_config, validate_config

CONFIG_FILE = "model_config.json"
PARAMS_ITEM = "params"


def config_from_json(text: str, source: str):
    """JSON written by ``cfg.to_json()`` -> locked config; unknown keys are errors."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a JSON object of model config values")
    cfg = default_config()
    try:
        cfg.update(values)
    except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{source}: not a MaMI model config: {e}") from e
    validate_config(cfg)
    return cfg


def load_config_file(path: str):
    with open(path) as f:
        return config_from_json(f.read(), path)


def _write_text_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".model_config.", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_params(directory: str, params: Mapping, cfg, *, overwrite: bool = False) -> str:
    """Writes ``params`` and ``cfg`` to ``directory`` (converter layout), atomically."""
    import orbax.checkpoint as ocp

    validate_config(cfg)
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory} exists; choose a new directory or pass "
                              "overwrite=True (CLI: --overwrite)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".partial-", dir=parent)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(staging, PARAMS_ITEM), _to_host(params))
        checkpointer.wait_until_finished()
        _write_text_atomic(os.path.join(staging, CONFIG_FILE), cfg.to_json(indent=2))
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _finished_steps(checkpoints: str) -> list[int]:
    steps = []
    for name in os.listdir(checkpoints):
        if name.isdigit() and os.path.isdir(os.path.join(checkpoints, name, PARAMS_ITEM)):
            steps.append(int(name))
    return sorted(steps)


def resolve(directory: str) -> tuple[str, str, str]:
    """-> (params item directory, config file, layout name) for either layout."""
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    own_config = os.path.join(directory, CONFIG_FILE)
    params_dir = os.path.join(directory, PARAMS_ITEM)
    if os.path.isdir(params_dir) and os.path.isfile(own_config):
        return params_dir, own_config, "converter"
    if os.path.isdir(params_dir):
        parent = os.path.dirname(directory)
        if os.path.basename(parent) == "checkpoints":
            config = os.path.join(os.path.dirname(parent), CONFIG_FILE)
            if os.path.isfile(config):
                return params_dir, config, "trainer step"
            raise FileNotFoundError(
                f"{directory} looks like a trainer step directory but {config} is missing")
        raise FileNotFoundError(f"{directory} has a '{PARAMS_ITEM}' item but no {CONFIG_FILE}")
    checkpoints = os.path.join(directory, "checkpoints")
    if os.path.isdir(checkpoints) and os.path.isfile(own_config):
        steps = _finished_steps(checkpoints)
        if not steps:
            raise FileNotFoundError(f"{checkpoints} holds no step directory with a "
                                    f"'{PARAMS_ITEM}' item")
        return (os.path.join(checkpoints, str(steps[-1]), PARAMS_ITEM), own_config,
                f"trainer workdir (step {steps[-1]})")
    raise FileNotFoundError(
        f"{directory} is not a checkpoint: expected {PARAMS_ITEM}/ + {CONFIG_FILE} "
        f"(converter layout), a trainer step directory WORKDIR/checkpoints/<step>/, or a "
        f"trainer WORKDIR with {CONFIG_FILE} and checkpoints/")


def load_params(directory: str, *, return_layout: bool = False):
    """-> (params as nested dict of numpy arrays, cfg) from either layout."""
    import jax
    import orbax.checkpoint as ocp

    params_dir, config_file, layout = resolve(directory)
    cfg = load_config_file(config_file)
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(params_dir)
    tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
    if tree is None:
        tree = metadata
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          tree)
    params = checkpointer.restore(params_dir,
                                  args=ocp.args.PyTreeRestore(restore_args=restore_args))
    params = _to_host(params)
    if return_layout:
        return params, cfg, layout
    return params, cfg


def _to_host(tree):
    """Nested mapping of arrays -> nested dict of host numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: _to_host(v) for k, v in tree.items()}
    return np.asarray(tree)
