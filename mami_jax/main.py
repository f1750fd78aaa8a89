"""Train, evaluate or embed with MaMI (all-in-one medical image re-identification).

    python -m mami_jax.main --config=configs/all.py --workdir=DIR            # train + evaluate
    python -m mami_jax.main --config=configs/all.py:runlocal --workdir=DIR   # small CPU variant
    python -m mami_jax.main --workdir=DIR                 # resume DIR with the config it stored
    python -m mami_jax.main --workdir=DIR --mode=eval     # evaluate DIR's latest checkpoint
    python -m mami_jax.main --workdir=DIR --mode=embed    # embeddings of every manifest row
    python -m mami_jax.main --config=configs/xray.py --workdir=DIR \\
        --config.data.manifest=/data/manifest.csv --config.train.total_steps=1000

--config names an experiment file of configs/ (ARG after ":" picks a variant) and any of
its values can be overridden as --config.KEY=VALUE; a trained --workdir keeps its config
(DIR/config.json) and is read with it when --config is left out. Without
config.data.manifest the embedded synthetic phantoms are generated into DIR and used.
What is written: DIR/checkpoints/, DIR/eval/step_N/ (metrics.json, figures), DIR/tb/
(TensorBoard), DIR/embeddings/ (--mode=embed). Running the same command again goes on
from the last checkpoint; Ctrl-C and SIGTERM stop with one line saying where.
Bad input ends the run with one "error:" line naming the file, row or key
(--verbosity=1 shows the traceback).
"""

import glob
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mami_jax import config_files, config_renames, flag_parsing
from mami_jax.runtime import malloc_preload
from mami_jax.runtime.interrupts import (end_process, redeliver_swallowed_interrupts,
                                         stop_on_sigterm_like_ctrl_c,
                                         say_interrupted)
from mami_jax.runtime.local_paths import refuse_url
from mami_jax.runtime.log_filters import quiet_library_info
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.no_space import NoSpaceError, is_no_space
from mami_jax.runtime.output_guard import refuse_empty
from mami_jax.runtime.orbax_noise import quiet_orbax_failure_noise
from mami_jax.runtime.stop_signal import StoppedBySignal, say_stopped
from mami_jax.train import run_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/all.py[:runlocal], or a run's config.json; "
    "left out, --workdir's own config.json (the config it was trained with)",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "embed"],
                          "train: train then evaluate; eval: evaluate the latest checkpoint; "
                          "embed: embed every row of the manifest.")
_MODEL = flags.DEFINE_string(
    "model", "", "eval/embed: the model to use instead of the workdir's latest checkpoint: "
    "WORKDIR@STEP, a released or exported .pth/.safetensors file (e.g. the MaMI authors' "
    "weights) or a converter folder; the results still go under --workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def user_errors() -> tuple:
    """Exception types that describe bad input or a refused request, not a bug."""
    from mami_jax.convert.mapping import ConversionError
    from mami_jax.convert.torch_io import CheckpointFileError
    from mami_jax.data.datasets.common import DatasetLayoutError
    from mami_jax.data.decode import DecodeError
    from mami_jax.data.manifest import ManifestError
    from mami_jax.data.example_reader import DataError
    from mami_jax.data.teacher_features import TeacherFeatureError
    from mami_jax.train.checkpointing import CheckpointError
    from mami_jax.train.trainer import NonFiniteLossError
    return (CheckpointError, ManifestError, DataError, DecodeError, DatasetLayoutError,
            CheckpointFileError, ConversionError, NonFiniteLossError, FileNotFoundError,
            IsADirectoryError, NotADirectoryError, PermissionError,   # a path given wrong
            TeacherFeatureError, NoSpaceError, ValueError)


def main(argv):
    """Hands off to training (and evaluation), ``--mode=eval`` or ``--mode=embed``; a run
    started as a script first restarted itself with jemalloc preloaded when installed
    (``runtime/malloc_preload.py``), and a ``--workdir`` without ``--config`` was given the
    config it stored (``train/run_config``).

    A refusal (``user_errors()``: the project's error types for bad input or state, and
    ``ValueError``, which every config check raises naming the key; each message names the
    file, row, key or checkpoint item) ends the run with one ``error: <message>`` line on
    stderr and exit status 1. Any other exception is a bug and keeps its traceback;
    ``--verbosity=1`` shows the traceback of a refusal too; a ``--workdir`` that is a file
    (``check_workdir``) is such a refusal. Bad flags (a missing config file, one that
    cannot be loaded, an argument ``get_config`` refuses, an override of a key the config
    lacks) are one ``error:`` line too, exit status 2 (``flag_parsing``)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_info()  # orbax's per-save INFO lines; --v=1 shows them
    malloc_preload.log_allocator()
    try:
        _hand_off()
    except user_errors() as e:
        if logging.get_verbosity() >= 1:
            raise
        _exit_with_error(e)
    except OSError as e:            # (FileNotFoundError and NoSpaceError are said above)
        if not is_no_space(e) or logging.get_verbosity() >= 1:
            raise
        _exit_with_error(e)
    except KeyboardInterrupt:       # the trainer's finally has finished the checkpoints
        end_process(say_interrupted(_after_interrupt()))
    except StoppedBySignal as stopped:  # SIGTERM: the step reached is saved
        end_process(say_stopped(stopped))


def _exit_with_error(error: BaseException) -> None:
    print_error(error, where=_WORKDIR.value)
    sys.exit(1)


def _after_interrupt() -> str:
    """What running the stopped command again does: training goes on from its last
    checkpoint, ``--mode=embed`` and ``--mode=eval`` from the chunks of the pass they kept."""
    if _MODE.value in ("embed", "eval"):
        from mami_jax.runtime.chunk_store import SUFFIX, what_is_kept
        folder = "embeddings" if _MODE.value == "embed" else "eval"
        return what_is_kept(glob.glob(os.path.join(glob.escape(_WORKDIR.value), folder,
                                                   f".*{SUFFIX}")))
    from mami_jax.train.checkpointing import latest_step
    try:
        step = latest_step(_WORKDIR.value)
    except Exception:  # noqa: BLE001 - a half-written checkpoint must not hide the line
        step = None
    if step is None:
        return "no checkpoint was written yet: running the same command again starts over"
    return f"run the same command again to go on from the checkpoint of step {step}"


def check_workdir(workdir: str) -> None:
    """ValueError naming ``--workdir`` when it, or the nearest of its folders that exists,
    is a file: every mode writes under it, and the OS error of that write came as a
    traceback, after the config and the data had been read. A URL (``gs://``) is refused too
    (``local_paths``)."""
    refuse_url(workdir, "--workdir")
    refuse_empty(workdir, "--workdir", "the run's folder")
    path = os.path.abspath(workdir)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(workdir) else f"{path} "
        raise ValueError(f"--workdir {workdir}: {where}is a file, not a folder")


def _hand_off():
    from mami_jax.models import validate_config
    check_workdir(_WORKDIR.value)
    from mami_jax.runtime import compilation_cache
    compilation_cache.enable(_CONFIG.value.compilation_cache_dir,  # before any compilation
                             required=_MODE.value == "train")
    validate_config(_CONFIG.value.model)  # before any data is read or generated
    if _MODE.value == "train":
        if _MODEL.value:
            raise ValueError("--model is for --mode=eval and --mode=embed; to train from a "
                             "released or exported file use --config.init.official_checkpoint")
        from mami_jax.train.trainer import train_and_evaluate
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
        from mami_jax import run_checkpoint
        from mami_jax.train.settings_check import check_eval
        check_eval(_CONFIG.value.eval)   # embed too: its batch size (0 ended in range())
        run_checkpoint.run(_MODE.value, _CONFIG.value, _WORKDIR.value, _MODEL.value)


if __name__ == "__main__":
    config_renames.exit_on_renamed_overrides(sys.argv[1:])  # before the flags parse them
    malloc_preload.reexec_with_preload()    # first: what follows prints once, not per process
    sys.argv[1:] = run_config.with_the_runs_config(sys.argv[1:])  # no --config: the run's
    sys.argv[1:] = config_files.flag_config_from_anywhere(sys.argv[1:])  # from any folder
    quiet_orbax_failure_noise()     # a damaged checkpoint: one error line, no more
    redeliver_swallowed_interrupts()    # Ctrl-C during a garbage-collection callback
    stop_on_sigterm_like_ctrl_c()       # until training's steps begin (stop_signal)
    app.run(main, flags_parser=flag_parsing.parse_flags)
