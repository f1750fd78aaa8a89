"""The trainer: reads top to bottom like big_vision's train.py.

rows -> mesh -> input pipeline -> shapes by ``jax.eval_shape`` -> sharded init
(or resume from the latest checkpoint) -> donated jitted step -> loop with
logging, checkpoints, NaN guard and evaluations -> final evaluation.

Everything the run writes lives under WORKDIR: checkpoints/<step>/{params,train,data,labels},
model_config.json, config.json (the whole config, which the applications read the run
with: ``run_config``), tb/ (TensorBoard), curves.png, eval/step_<N>/{metrics.json,cmc.png}.
One run at a time holds the workdir (``folder_lock``); SIGTERM saves the step reached and
ends the run (``stop_signal``).

A resume is checked before anything is written (``mami_jax/train/checkpointing.py``):
the model config against model_config.json, the training patients against the saved
identity-label map, the step directory's items; a mismatch or a damaged item is a
``CheckpointError``. Unfinished saves of a killed run are removed at start-up.

Resume tests kill the process right after a checkpoint: ``KILL_AFTER_STEP_ENV`` (read
in ``_kill_after_step`` only) names the step; it is not a config key because no
experiment should ever set it.
"""

from __future__ import annotations

import math
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from mami_jax.runtime import folder_lock, sharding
from mami_jax.runtime.atomic_files import make_dirs, remove_stale_temporaries
from mami_jax.runtime.local_paths import refuse_url
from mami_jax.train import checkpointing, run_config, training_batches
from mami_jax.data import teacher_join
from mami_jax.data.loading import load_rows, manifest_path
from mami_jax.data.missing_files import check_images_on_disk
from mami_jax.data.pipeline import make_train_loader
from mami_jax.evaluate.evaluator import EvaluationStopped, embed_split_by, evaluate
from mami_jax.evaluate.split_check import check_split_evaluable
from mami_jax.runtime.metric_writer import MetricWriter
from mami_jax.models.embed import make_embed_fn
from mami_jax.runtime.distributed import maybe_initialize_distributed
from mami_jax.runtime.idle_accelerator import warn_if_accelerator_idle
from mami_jax.runtime.stop_signal import StopRequests, StoppedBySignal
from mami_jax.train.optim import learning_rate_schedule, make_optimizer
from mami_jax.train.pretrained import load_pretrained
from mami_jax.train.settings_check import check_training_settings
from mami_jax.train.objective import TrainModel, example_batch
from mami_jax.train.curves_figure import CURVES_FILE, write_curves
from mami_jax.train.step import TrainState, make_train_step
from mami_jax.train.throughput import Throughput

#: Test-only: SIGKILL the trainer right after the checkpoint of this step is written.
KILL_AFTER_STEP_ENV = "_MAMI_JAX_TEST_KILL_AFTER_STEP"


def _kill_after_step() -> int:
    """The step after whose checkpoint a resume test wants the process killed; -1: never."""
    value = os.environ.get(KILL_AFTER_STEP_ENV, "").strip()
    if not value:
        return -1
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{KILL_AFTER_STEP_ENV}={value!r}: expected a step number") from None


def total_steps_of(config, loader) -> int:
    if config.train.total_steps > 0:
        return int(config.train.total_steps)
    images = sum(s.num_images for s in loader.sources)
    steps_per_epoch = max(1, math.ceil(images / loader.global_batch_size))
    return int(config.train.num_epochs) * steps_per_epoch


def make_init_state(config, model, optimizer):
    """rng -> a fresh TrainState (step 0, random parameters, optimiser state, step RNG)."""
    def init_state(rng):
        params = model.init(rng, example_batch(config))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params),
                          rng=jax.random.key_data(jax.random.fold_in(rng, 1)))
    return init_state


class NonFiniteLossError(FloatingPointError):
    pass


def _check_finite(step: int, metrics: dict, ckpt) -> None:
    if not bool(metrics["finite"]):
        raise NonFiniteLossError(
            f"non-finite loss or gradient at step {step}: loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}. The update was not applied; the last "
            f"good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}.")


def build_model_and_state_fns(config, num_classes: int, total_steps: int):
    """(train model, optimiser, init_state) for ``config``: what every training loop needs
    before it decides how to place and restore the state."""
    model = TrainModel(config, num_classes)
    abstract_params = jax.eval_shape(lambda r: model.init(r, example_batch(config))["params"],
                                     jax.random.key(config.seed))
    optimizer = make_optimizer(config.optim, abstract_params, total_steps)
    return model, optimizer, make_init_state(config, model, optimizer)


#: How to train without evaluating, offered when the evaluation split cannot be scored.
NO_EVALUATION = ("train without evaluating: --config.train.eval_at_start=False "
                 "--config.train.eval_at_end=False --config.train.eval_every=0")


def _evaluates(config) -> bool:
    t = config.train
    return bool(t.eval_at_start or t.eval_at_end or t.eval_every)


def _rows_read(rows, config) -> list:
    """The rows a run reads images of: the training split, and the evaluation split when
    it evaluates at all."""
    splits = {"train", config.eval.split} if _evaluates(config) else {"train"}
    return [r for r in rows if r.split in splits]


def _draw_curves(workdir: str, step: int) -> None:
    """``WORKDIR/curves.png`` (process 0); a picture that cannot be drawn is a warning,
    never the end of a run."""
    if jax.process_index() != 0:
        return
    try:
        write_curves(workdir, title=f"{workdir}, step {step}")
    except Exception as e:  # noqa: BLE001 - the run and its checkpoints matter more
        logging.warning("%s not drawn: %s: %s", CURVES_FILE, type(e).__name__, e)


def _draw_training_batches(workdir: str, loader) -> None:
    """``WORKDIR/training_batches.png`` (process 0), once per workdir; like the curves, a
    picture that cannot be drawn is a warning (an unreadable image stops the run where
    training reads it, with its own message)."""
    path = os.path.join(workdir, training_batches.FILE)
    if jax.process_index() != 0 or os.path.exists(path):
        return
    try:
        training_batches.draw_training_batches(path, loader)
    except Exception as e:  # noqa: BLE001 - the run matters more than its picture
        logging.warning("%s not drawn: %s: %s", training_batches.FILE, type(e).__name__, e)


def _resume_step(config, workdir: str):
    """The step training goes on from (None: a new run); a workdir holding checkpoints of
    another model config is refused."""
    step = checkpointing.latest_step(workdir)
    if step is not None:
        checkpointing.check_model_config(workdir, config.model, "resume training")
    return step


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming if it holds checkpoints); returns the
    final evaluation metrics per group."""
    maybe_initialize_distributed()
    warn_if_accelerator_idle()
    refuse_url(workdir, "workdir")      # abspath would make it a local folder "gs:"
    workdir = os.path.abspath(workdir)
    kill_after = _kill_after_step()
    check_training_settings(config, workdir)  # a bad setting stops before anything is written
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    _check_mesh_and_batches(config, mesh)
    _check_state_placement(config, mesh)
    _resume_step(config, workdir)       # a run of another model: before anything is written
    run_config.refuse_a_foreign_config_file(workdir)
    rows = load_rows(config, workdir)   # a bad manifest leaves no empty workdir behind
    if _evaluates(config):  # found at the final evaluation, it cost the whole run
        check_split_evaluable(rows, config.eval.split, otherwise=NO_EVALUATION,
                              protocols=tuple(config.eval.protocols))
    check_images_on_disk(_rows_read(rows, config), config.data.skip_bad_images, "training")
    make_dirs(workdir)
    with folder_lock.held(workdir, f"--workdir {workdir}", "training run",
                          take=jax.process_index() == 0), StopRequests() as stop:
        return _train(config, workdir, rows, mesh, kill_after, stop)


def _check_mesh_and_batches(config, mesh) -> None:
    """The training batch and, when the run evaluates, the evaluation batch split evenly
    over the data axis: an evaluation batch that did not was found at the first evaluation,
    after all the steps when that is the final one. The partition rules name the mesh's
    axes, and no model group spans processes (``sharding.model_groups_span_processes``)."""
    sharding.check_partition_rules(config.partition_rules, mesh)
    sharding.refuse_model_groups_across_processes(mesh)
    p, k = int(config.data.patients_per_batch), int(config.data.images_per_patient)
    sharding.check_data_axis_divides(f"global batch data.patients_per_batch x "
                                     f"data.images_per_patient = {p} x {k} = {p * k}", p * k, mesh)
    if _evaluates(config):
        batch = int(config.eval.batch_size)
        sharding.check_data_axis_divides(f"eval.batch_size={batch}", batch, mesh)


def _check_state_placement(config, mesh) -> None:
    """The training state's shapes against ``optim.freeze`` (its patterns are matched
    against the parameters) and the partition rules (each sharded dimension divisible by
    its mesh axis), before the data is read and the workdir made: a rule that did not
    divide a parameter was found after both. The identity classifier's rows, one per
    training patient, are not known yet; they are given the mesh's size here, which every
    axis divides, so only the real count can fail, where it is known. Skipped (tracing
    the model costs seconds at full size) when nothing is frozen and every axis the rules
    name has size 1, where nothing is split."""
    split_axes = {axis for _, axes in config.partition_rules for axis in tuple(axes)
                  if axis is not None and mesh.shape[axis] > 1}
    if not tuple(config.optim.freeze) and not split_axes:
        return
    _, _, init_state = build_model_and_state_fns(config, num_classes=int(mesh.size),
                                                 total_steps=1)
    sharding.tree_shardings(jax.eval_shape(init_state, jax.random.key(0)),
                            config.partition_rules, mesh)


def _train(config, workdir: str, rows, mesh, kill_after, stop: StopRequests) -> dict:
    """The run itself, in a workdir this process holds (``folder_lock``); SIGTERM (``stop``)
    saves the step reached and raises StoppedBySignal once the first step has run (before,
    it stops the run as Ctrl-C does: there is nothing new to save)."""
    resume_step = _resume_step(config, workdir)   # again: the run that held it may have saved
    logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
                 jax.process_count())

    teachers = teacher_join.prepare(config, workdir, rows, manifest_path(config, workdir),
                                    jax.process_count())  # None unless "align" is configured
    # a resumed run's batches go on from the step it resumes (the sampler is a function of
    # seed and step), whatever its number of data workers or processes
    loader = make_train_loader(rows, config.data, seed=config.seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               start_step=resume_step or 0, teachers=teachers)
    logging.info("%s", loader.summary())
    _draw_training_batches(workdir, loader)
    total_steps = total_steps_of(config, loader)
    if resume_step is not None and resume_step > total_steps:
        raise ValueError(f"train.total_steps={total_steps}: {workdir} holds a checkpoint of step "
                         f"{resume_step}, past it (its evaluation would be labelled step "
                         f"{total_steps}); give a total of at least {resume_step}, or train in "
                         "a new workdir")
    if int(config.optim.warmup_steps) >= total_steps:
        logging.warning("optim.warmup_steps=%d is not below the run's %d steps: the warm-up "
                        "is cut to %d steps", int(config.optim.warmup_steps), total_steps,
                        max(total_steps - 1, 0))

    model, optimizer, init_state = build_model_and_state_fns(
        config, loader.num_classes, total_steps)
    rng = jax.random.key(config.seed)
    abstract_state = jax.eval_shape(init_state, rng)
    state_shardings = sharding.tree_shardings(abstract_state, config.partition_rules, mesh)

    ckpt = checkpointing.Checkpointer(workdir, keep=config.train.keep_checkpoints)
    data_iter = iter(loader)
    try:
        if resume_step is not None:
            checkpointing.check_label_map(ckpt.saved_label_map(resume_step), loader.label_map,
                                          ckpt.step_dir(resume_step))
            target = jax.tree_util.tree_map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                abstract_state, state_shardings)
            state = ckpt.restore(resume_step, target)
            logging.info("resumed from %s", ckpt.step_dir(resume_step))
        else:
            state = jax.jit(init_state, out_shardings=state_shardings)(rng)
            mami_params = load_pretrained(state.params["mami"], config)
            state = state.replace(params=dict(state.params, mami=mami_params))
            state = jax.device_put(state, state_shardings)
    except BaseException:  # a refusal or a damaged checkpoint: stop orbax's threads too
        getattr(data_iter, "close", lambda: None)()
        ckpt.close()
        raise
    if jax.process_index() == 0:
        ckpt.remove_unfinished_saves()
        for path in remove_stale_temporaries(workdir):
            logging.warning("removed the unfinished write %s", path)
    checkpointing.write_model_config(workdir, config.model)
    run_config.forget_configs_past(workdir, resume_step or 0)
    if resume_step is None:     # a run stopped before its first checkpoint restarts with it
        run_config.write_run_config(workdir, config)
    else:                       # config.json stays the resumed checkpoint's until a new one
        run_config.note_changed_settings(workdir, config, resume_step)
    config_recorded = resume_step is None

    def save_checkpoint() -> None:
        """``ckpt.save`` of the state reached; before a resumed run's first, its config
        becomes ``config.json`` (the earlier one is kept: ``run_config``)."""
        nonlocal config_recorded
        if not config_recorded:
            run_config.write_run_config(workdir, config)
            config_recorded = True
        ckpt.save(state, loader.label_map)

    step_fn = make_train_step(model, optimizer, config.loss,
                              accum_steps=int(config.optim.grad_accum_steps),
                              lr_schedule=learning_rate_schedule(config.optim, total_steps),
                              freeze=tuple(config.optim.freeze))
    train_step = jax.jit(step_fn,
                         in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                         out_shardings=(state_shardings, sharding.replicated(mesh)),
                         donate_argnums=(0,))
    embedder = make_embed_fn(config.model)
    writer = MetricWriter(os.path.join(workdir, "tb"))

    def run_eval(step: int) -> dict | None:
        """The evaluation of ``step``; None when SIGTERM came while it embedded the split
        (left unfinished, nothing written: the caller saves the step and stops)."""
        out_dir = os.path.join(workdir, "eval", f"step_{step}")
        try:
            results = evaluate(embed_split_by(embedder(state.params["mami"]), config, mesh,
                                              stop_asked=stop.heard),
                               rows, config, out_dir, title=f"step {step}")
        except EvaluationStopped as e:
            print(f"\nSIGTERM: the evaluation of step {step} {e}; saving the checkpoint of "
                  f"step {step}, then stopping", file=sys.stderr, flush=True)
            return None
        writer.write_scalars(step, {f"eval/{g}/{k}": v for g, m in results.items()
                                    for k, v in m.items() if np.ndim(v) == 0
                                    and isinstance(v, (int, float, np.number))})
        _draw_curves(workdir, step)
        return results

    start = int(jax.device_get(state.step))
    results, bar, pending, stopped_at, saved, trained = {}, None, None, None, resume_step, start
    speed = Throughput(loader.global_batch_size, mesh.size)
    try:
        if start == 0 and config.train.eval_at_start:
            results = run_eval(0)
            stopped_at = 0 if results is None else None
        bar = tqdm(total=total_steps * loader.global_batch_size, initial=start *
                   loader.global_batch_size, unit="img", dynamic_ncols=True,
                   disable=jax.process_index() != 0 or stopped_at is not None,
                   # a log file (no terminal) gets one line per 30 s, not one per batch
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)
        for step in range(start + 1, total_steps + 1):
            if stopped_at is not None:
                break
            batch = next(data_iter)
            state, metrics = train_step(state, sharding.global_batch(batch, mesh))
            stop.listen()   # compiled and trained: SIGTERM now saves the step reached
            trained = step
            if pending is not None:  # check the previous step while this one runs
                _check_finite(*pending, ckpt)
            pending = (step, metrics)
            bar.update(loader.global_batch_size)
            last = step == total_steps
            if step % config.train.log_every == 0 or last:
                values = jax.device_get(metrics)    # waits for the step: the clock is right
                _check_finite(step, values, ckpt)
                values = {**values, **speed.at(step)}
                writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
                bar.set_postfix(loss=f"{float(values['loss']):.4f}", step=step)
            if stop.reached(step):
                stopped_at = step
            if step % config.train.checkpoint_every == 0 or last or stopped_at is not None:
                _check_finite(step, jax.device_get(metrics), ckpt)
                save_checkpoint()
                saved = step
            if step == kill_after:
                ckpt.wait()
                os.kill(os.getpid(), signal.SIGKILL)
            if (stopped_at is None and config.train.eval_every
                    and step % config.train.eval_every == 0 and not last):
                stopped_at = step if run_eval(step) is None else None
                speed.restart()
        if pending is not None:
            _check_finite(*pending, ckpt)
        if stopped_at is None and config.train.eval_at_end and (start < total_steps
                                                                or not results):
            results = run_eval(total_steps)
            stopped_at = total_steps if results is None else None
        elif trained > start:
            _draw_curves(workdir, trained)
        if stopped_at is not None and stopped_at != saved:   # SIGTERM during an evaluation
            save_checkpoint()
    finally:
        if bar is not None:
            bar.close()
        getattr(data_iter, "close", lambda: None)()
        ckpt.wait()
        ckpt.close()
        writer.close()
        if loader.skipped_images:
            logging.warning("skipped %d unreadable training images (data.skip_bad_images)",
                            loader.skipped_images)
    if stopped_at is not None:
        raise StoppedBySignal(stopped_at, ckpt.step_dir(stopped_at))
    return results
