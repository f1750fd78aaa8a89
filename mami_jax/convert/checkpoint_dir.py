"""Our side of the interchange: orbax checkpoint directories of a params tree + config.

Two layouts are read; one is written.

Converter layout (written by ``save_params``)::

    CKPT_DIR/
      params/              orbax StandardCheckpointer checkpoint of the params pytree
      model_config.json    cfg.to_json() of the model (mami_jax.models.config)
      config.json          the training run's whole config, when the imported file
                           carried one (an export of a run)

Trainer layout (written by the trainer with an orbax ``CheckpointManager``)::

    WORKDIR/
      model_config.json
      config.json                  the run's whole config (train/run_config)
      checkpoints/<step>/params/   item "params": the params pytree
      checkpoints/<step>/...       other items (optimizer state, ...), ignored here

``load_params`` accepts ``CKPT_DIR``, a trainer step directory
``WORKDIR/checkpoints/<step>`` (config read from ``WORKDIR/model_config.json``), or
``WORKDIR`` itself (its highest finished step). Arrays are restored as host numpy
arrays whatever sharding they were saved with, so a checkpoint written on a TPU
pod can be converted on a laptop. Params holding NaN or inf are refused, naming
the parameter. A ``model_config.json`` must state ``shift_input`` (see
``models.config.REQUIRED_SAVED_KEYS``): a file without it is refused rather than
given today's default.

``save_params`` never leaves a half-written or lost checkpoint:

- everything is written into a staging folder beside ``CKPT_DIR``
  (``runtime.atomic_files.staging_dir``), then renamed to ``CKPT_DIR``; files and
  folders get the umask's modes (orbax's own private temporaries included);
- with ``overwrite=True`` the old checkpoint is first renamed aside, restored if
  publishing the new one fails, and deleted only after it succeeded; a folder that
  is not a converter checkpoint is never replaced;
- a staging folder holds an ``flock``-ed lock file while its save runs; the next
  save into the same parent removes staging folders whose lock is free (their
  writer was killed) and finishes an interrupted replacement (the old checkpoint
  is put back if the new one never arrived, deleted if it did).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from typing import Mapping

import numpy as np

from mami_jax.config_files import run_config_path
from mami_jax.convert.mapping import check_finite, flatten_params
from mami_jax.models.config import REQUIRED_SAVED_KEYS, default_config, validate_config
from mami_jax.runtime.atomic_files import (TEMP_MARK, finish_replacement, finish_tree,
                                           replace_dir, staging_dir, write_text_atomic)
from mami_jax.runtime.json_object import parse_json_object

CONFIG_FILE = "model_config.json"
PARAMS_ITEM = "params"
#: Held (flock) inside a staging folder while its save runs.
LOCK_FILE = ".mami-convert-save.lock"


class CorruptParamsError(ValueError):
    """A params item that orbax cannot read (truncated, damaged or not a checkpoint)."""


def config_from_json(text: str, source: str):
    """JSON written by ``cfg.to_json()`` -> locked, validated config.

    Unknown keys, keys of ``REQUIRED_SAVED_KEYS`` that are absent (``shift_input``)
    and invalid values are errors naming ``source`` and the key.
    """
    values = parse_json_object(text, source, "model config values")
    cfg = default_config()
    try:
        cfg.update(values)
    except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"{source}: not a MaMI model config: {e}") from e
    absent = [k for k in REQUIRED_SAVED_KEYS if k not in values]
    if absent:
        raise ValueError(
            f"{source}: model config lacks {', '.join(repr(k) for k in absent)}; refusing "
            f"to guess it (its default changed, and the weights compute a different "
            f"function with the other value). Add e.g. \"shift_input\": \"router\" for "
            f"weights of the released architecture, \"patch_mean\" for models trained "
            f"with that setting.")
    try:
        validate_config(cfg)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    return cfg


def load_config_file(path: str):
    with open(path) as f:
        return config_from_json(f.read(), path)


def is_converter_checkpoint(directory: str) -> bool:
    return (os.path.isdir(os.path.join(directory, PARAMS_ITEM))
            and os.path.isfile(os.path.join(directory, CONFIG_FILE)))


def _lock_is_free(lock_path: str) -> bool:
    """True when no running process holds ``lock_path`` (its writer is gone)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock if we took it
    return True


def remove_killed_saves(parent: str) -> list[str]:
    """Removes staging folders of killed ``save_params`` calls in ``parent``; -> their paths.

    Only folders with the temporary mark whose lock file is present and free are
    touched: a save still running holds its lock, and temporaries of other writers
    have no such lock file.
    """
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not (name.startswith(".") and TEMP_MARK in name and os.path.isdir(path)):
            continue
        if _lock_is_free(os.path.join(path, LOCK_FILE)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def _held_lock(staging: str):
    fd = os.open(os.path.join(staging, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def save_params(directory: str, params: Mapping, cfg, *, overwrite: bool = False,
                experiment: str | None = None) -> str:
    """Writes ``params`` and ``cfg`` to ``directory`` (converter layout), all-or-nothing;
    ``experiment``, the JSON of the training run's whole config a file carried, as
    ``config.json`` beside them (the applications read the folder with it).

    An existing ``directory`` is an error unless ``overwrite=True``, and even then one
    that is not a converter checkpoint (``params/`` + ``model_config.json``) is
    refused. The old checkpoint is kept until the new one is in place. A link to a folder
    counts as the folder: its target is written (replaced), the link kept (renaming the link
    aside instead left the target's old weights in place and the link beside it).
    """
    import orbax.checkpoint as ocp

    validate_config(cfg)
    directory = os.path.realpath(os.fspath(directory))
    parent = os.path.dirname(directory)
    remove_killed_saves(parent)
    finish_replacement(directory)      # an old checkpoint a killed save left aside
    if os.path.lexists(directory):
        if not overwrite:
            raise FileExistsError(f"{directory} exists; choose a new directory or pass "
                                  "overwrite=True (CLI: --overwrite)")
        if not is_converter_checkpoint(directory):
            raise FileExistsError(
                f"{directory} exists and is not a converter checkpoint (no {PARAMS_ITEM}/ and "
                f"{CONFIG_FILE}); refusing to replace it even with overwrite=True")
    with staging_dir(directory) as staging:
        with _held_lock(staging):
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(os.path.join(staging, PARAMS_ITEM), _to_host(params))
            checkpointer.wait_until_finished()
            write_text_atomic(os.path.join(staging, CONFIG_FILE), cfg.to_json(indent=2))
            if experiment is not None:
                write_text_atomic(run_config_path(staging), experiment)
            finish_tree(staging)
            replace_dir(staging, directory)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, LOCK_FILE))
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
    if os.path.isfile(directory):
        raise NotADirectoryError(f"{directory}: a file, not a checkpoint folder (a training "
                                 "workdir or a converter folder; a .pth or .safetensors file "
                                 "is already in PyTorch's layout: import-official reads it)")
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
    try:
        metadata = checkpointer.metadata(params_dir)
        tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
        if tree is None:
            tree = metadata
        restore_args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        params = checkpointer.restore(params_dir,
                                      args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except (PermissionError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for bad data
        raise CorruptParamsError(
            f"{params_dir}: cannot read the orbax params item ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from e
    params = _to_host(params)
    check_finite(flatten_params(params), params_dir)
    if return_layout:
        return params, cfg, layout
    return params, cfg


def _to_host(tree):
    """Nested mapping of arrays -> nested dict of host numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: _to_host(v) for k, v in tree.items()}
    return np.asarray(tree)
