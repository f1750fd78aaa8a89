"""The trainer: sharding equivalence, exact resume after a kill, NaN guard, accumulation,
freezing, and an end-to-end run of ``python -m mami_jax.main`` on tiny phantoms."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from mami_jax.runtime import sharding
from configs.all import get_config as all_config
from mami_jax.train.optim import make_optimizer
from mami_jax.train.trainer import (KILL_AFTER_STEP_ENV, NonFiniteLossError, _check_finite,
                                     make_init_state)
from mami_jax.train.objective import TrainModel, example_batch, make_loss_fn
from mami_jax.train.step import loss_and_grads, make_train_step
from tests.one_device import without_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = dict(width=32, depth=2, num_heads=4, patch_size=8, image_size=32, rank=4,
                  num_codes=4, generator_hidden=(24, 16), qkv_groups=4, mlp_groups=8,
                  adapter_width=8)


def tiny_config(cache_dir="", **train):
    cfg = all_config("runlocal")
    with cfg.unlocked():
        cfg.model.update(TINY_MODEL)
        cfg.data.update(dict(patients_per_batch=4, images_per_patient=2))
        cfg.eval.batch_size = 8
        cfg.phantoms.update(dict(patients=20, visits=3, image_size=48, slices=4,
                                 cache_dir=cache_dir))
        cfg.train.update(dict(total_steps=4, log_every=1, checkpoint_every=2))
        cfg.train.update(train)
    return cfg


def _batch(seed=0, n=8, t=1):
    rng = np.random.default_rng(seed)
    return {"images": rng.normal(size=(n, t, 32, 32, 3)).astype(np.float32),
            "label": np.repeat(np.arange(n // 2), 2).astype(np.int32),
            "mask": np.ones(n, bool)}


def _setup(cfg, num_classes=6):
    model = TrainModel(cfg, num_classes)
    rng = jax.random.key(0)
    abstract = jax.eval_shape(lambda r: model.init(r, example_batch(cfg))["params"], rng)
    opt = make_optimizer(cfg.optim, abstract, 10)
    init_state = make_init_state(cfg, model, opt)
    return model, opt, init_state, rng


def test_one_step_same_on_one_device_and_a_4x2_mesh():
    cfg = tiny_config()
    model, opt, init_state, rng = _setup(cfg)
    state = init_state(rng)
    # Make the low-rank path active so that its sharded kernels matter.
    state = state.replace(params=jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), state.params))
    loss_fn = make_loss_fn(model, cfg.loss)
    batch = _batch()
    results = []
    for mesh in (sharding.make_mesh(1, 1, jax.devices()[:1]), sharding.make_mesh(4, 2)):
        shardings = sharding.tree_shardings(state.params, cfg.partition_rules, mesh)
        params = jax.device_put(state.params, shardings)
        fn = jax.jit(lambda p, b: loss_and_grads(loss_fn, p, b)[::2],
                     in_shardings=(shardings, sharding.batch_sharding(mesh)))
        results.append(jax.device_get(fn(params, sharding.global_batch(batch, mesh))))
        if mesh.size == 8:
            qkv = params["mami"]["block_0"]["attn"]["qkv"]["kernel"]
            assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    (loss1, grads1), (loss8, grads8) = results
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    # Leaves that are analytically zero (the embedding bias: the neck and the triplet are
    # blind to a shared shift) hold only rounding noise: absolute tolerance from the
    # largest gradient anywhere.
    scale = max(np.abs(a).max() for a in jax.tree_util.tree_leaves(grads1))
    for a, b in zip(jax.tree_util.tree_leaves(grads1), jax.tree_util.tree_leaves(grads8)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=max(1e-6 * scale, 1e-5 * np.abs(a).max()))


def test_neck_standardizes_the_classifier_input_only():
    cfg = tiny_config()
    assert cfg.loss.id_neck == "batch_standardize"  # runlocal trains from scratch with it
    model, _, init_state, rng = _setup(cfg)
    params = init_state(rng).params
    batch = _batch()
    batch["mask"] = np.asarray([True] * 6 + [False] * 2)
    outputs = model.apply({"params": params}, batch)
    logits = outputs["classifier"]["logits"]
    emb = np.asarray(outputs["mami"].embedding, np.float64)
    mean, std = emb[:6].mean(0), emb[:6].std(0)
    expected = ((emb - mean) / np.sqrt(std ** 2 + 1e-5)) @ np.asarray(params["classifier"]["kernel"])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-6)
    with cfg.unlocked():
        cfg.loss.id_neck = "none"
    plain_logits = TrainModel(cfg, 6).apply({"params": params}, batch)["classifier"]["logits"]
    np.testing.assert_allclose(plain_logits, emb @ np.asarray(params["classifier"]["kernel"]),
                               rtol=1e-4, atol=1e-6)
    with cfg.unlocked():
        cfg.loss.id_neck = "bn"
    with pytest.raises(ValueError, match="loss.id_neck='bn'"):
        TrainModel(cfg, 6).init(rng, batch)


def test_gradient_accumulation_averages_microbatches():
    cfg = tiny_config()
    model, opt, init_state, rng = _setup(cfg)
    params = init_state(rng).params
    loss_fn = make_loss_fn(model, cfg.loss)
    batch = _batch()
    loss2, _, grads2 = jax.jit(lambda p, b: loss_and_grads(loss_fn, p, b, accum_steps=2))(
        params, batch)
    halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 4), slice(4, 8))]
    whole = jax.jit(lambda p, b: loss_and_grads(loss_fn, p, b))
    parts = [whole(params, h) for h in halves]
    np.testing.assert_allclose(loss2, (parts[0][0] + parts[1][0]) / 2, rtol=1e-5)
    scale = max(np.abs(g).max() for g in jax.tree_util.tree_leaves(grads2))
    for g, a, b in zip(*(jax.tree_util.tree_leaves(x) for x in
                         (grads2, parts[0][2], parts[1][2]))):
        np.testing.assert_allclose(g, (a + b) / 2, rtol=1e-4, atol=1e-6 * scale)


def test_non_finite_step_is_not_applied_and_stops_naming_the_step():
    cfg = tiny_config()
    model, opt, init_state, rng = _setup(cfg)
    state = init_state(rng)
    step = jax.jit(make_train_step(model, opt, cfg.loss))
    batch = _batch()
    batch["images"][0, 0, 0, 0, 0] = np.nan
    new_state, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    assert int(new_state.step) == 0
    for a, b in zip(jax.tree_util.tree_leaves((state.params, state.opt_state)),
                    jax.tree_util.tree_leaves((new_state.params, new_state.opt_state))):
        np.testing.assert_array_equal(a, b)

    class FakeCkpt:
        directory = "/x/checkpoints"

        def latest_step(self):
            return 6
    with pytest.raises(NonFiniteLossError, match="step 7.*last good checkpoint is step 6"):
        _check_finite(7, jax.device_get(metrics), FakeCkpt())


def test_donated_step_updates_the_state_in_place_without_copying_it():
    """With the state donated, the NaN guard must not make XLA copy the parameters or
    the optimiser moments (a select of new and old values did: one copy per buffer)."""
    import re
    cfg = tiny_config()
    model, opt, init_state, rng = _setup(cfg)
    state = init_state(rng)
    step = jax.jit(make_train_step(model, opt, cfg.loss), donate_argnums=(0,))
    text = step.lower(state, _batch()).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    copied = re.findall(r"= \S+ copy\(%(state_\w+)", entry)
    assert not [name for name in copied if "params" in name or "opt_state" in name], copied
    new_state, metrics = step(state, _batch())
    assert bool(metrics["finite"]) and int(new_state.step) == 1


def test_freeze_regex_keeps_parameters_fixed_and_others_train():
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.optim.freeze = (r"mami/block_0/.*", r"mami/patch_embed/.*")
        cfg.optim.warmup_steps = 0  # a warmup starts at learning rate 0
    model, opt, init_state, rng = _setup(cfg)
    state = init_state(rng)
    new_state, _ = jax.jit(make_train_step(model, opt, cfg.loss))(state, _batch())
    old, new = state.params["mami"], new_state.params["mami"]
    for path in (("block_0", "attn", "qkv", "kernel"), ("patch_embed", "kernel")):
        a, b = old, new
        for p in path:
            a, b = a[p], b[p]
        np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(new["block_1"]["attn"]["qkv"]["kernel"])
                  - np.asarray(old["block_1"]["attn"]["qkv"]["kernel"])).max() > 0


def test_frozen_gradients_stay_out_of_the_clipping_norm():
    """The norm that clips the update (and is logged) is the trained parameters' alone:
    with the frozen leaves in it, freezing a part shrank the step of the rest."""
    from mami_jax.train.objective import make_loss_fn
    from mami_jax.train.optim import zero_frozen
    from mami_jax.train.step import loss_and_grads
    cfg = tiny_config()
    freeze = (r"mami/block_0/.*", r"mami/patch_embed/.*")
    with cfg.unlocked():
        cfg.optim.freeze = freeze
    model, opt, init_state, rng = _setup(cfg)
    state = init_state(rng)
    _, _, grads = jax.jit(lambda p, b: loss_and_grads(make_loss_fn(model, cfg.loss), p, b))(
        state.params, _batch())
    kept = zero_frozen(grads, freeze)
    assert np.all(np.asarray(kept["mami"]["patch_embed"]["kernel"]) == 0)
    trained = float(optax.global_norm(kept))
    assert 0 < trained < float(optax.global_norm(grads))
    _, metrics = jax.jit(make_train_step(model, opt, cfg.loss, freeze=freeze))(state, _batch())
    assert float(metrics["grad_norm"]) == pytest.approx(trained, rel=1e-4)


def test_a_freeze_pattern_that_matches_nothing_is_refused():
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.optim.freeze = (r"block_0/.*",)
    with pytest.raises(ValueError, match=r"^optim.freeze: 'block_0/\.\*' matches no "
                                         r"parameter \(matched from the start of the path, "
                                         r"e.g. 'mami/"):
        _setup(cfg)


def test_partition_rule_that_does_not_divide_names_the_parameter():
    mesh = sharding.make_mesh(4, 2)
    with pytest.raises(ValueError, match="mami/x/kernel.*not divisible"):
        sharding.tree_shardings({"mami": {"x": {"kernel": np.zeros((3, 5))}}},
                                ((r".*kernel", (None, "model")),), mesh)


def _main_command(workdir, cache, *flags, **changed) -> list[str]:
    """The tiny end-to-end training command (``changed``: other values of its overrides)."""
    cmd = [sys.executable, "-m", "mami_jax.main", "--config=configs/all.py:runlocal",
           f"--workdir={workdir}"]
    overrides = {
        **{f"model.{k}": v for k, v in TINY_MODEL.items()},
        "data.patients_per_batch": 4, "data.images_per_patient": 2, "eval.batch_size": 8,
        "phantoms.patients": 20, "phantoms.visits": 3, "phantoms.image_size": 48,
        "phantoms.slices": 4, "phantoms.cache_dir": cache, "train.total_steps": 4,
        "train.checkpoint_every": 2, "train.log_every": 1,
    }
    for k, v in {**overrides, **{k.replace("__", "."): v for k, v in changed.items()}}.items():
        v = f"({','.join(map(str, v))},)" if isinstance(v, tuple) else v
        cmd.append(f"--config.{k}={v}")
    return cmd + list(flags)


def _main(workdir, cache, *flags, check=True, env=None):
    cmd = _main_command(workdir, cache, *flags)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return proc


def _final_params(workdir):
    from mami_jax.inference import Embedder
    model = Embedder.from_workdir(str(workdir), tiny_config())
    return model.step, jax.device_get(model.params)


#: The end-to-end runs' devices: a sharded mesh (state, batches and checkpoints split over
#: two devices) at a quarter of conftest.py's eight, whose partitioning cost dominates these
#: tiny runs; the eight-device mesh is the in-process tests' above.
TWO_DEVICES = {"XLA_FLAGS": without_device_count(os.environ.get("XLA_FLAGS", "")) +
               " --xla_force_host_platform_device_count=2"}


def test_main_end_to_end_and_resume_after_kill_is_exact(tmp_path):
    cache = str(tmp_path / "phantoms")
    # Every run shares a compilation cache (every program stored, however fast it compiled);
    # the processes hash strings differently (two seeds under which a set of the parameter
    # groups iterates in different orders), and the resumed run must still find the
    # initialisation and training steps the first one compiled.
    compiled = tmp_path / "compiled"
    flag = f"--config.compilation_cache_dir={compiled}"
    cached = {**TWO_DEVICES, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    straight = tmp_path / "straight"
    log = _main(straight, cache, "--config.train.eval_at_start=False", flag,
                env={**cached, "PYTHONHASHSEED": "1"}).stderr
    # orbax's INFO lines are filtered out of the log (mami_jax/runtime/log_filters.py); ours stay.
    assert "step 2: train/" in log and "Saving checkpoint at step" not in log, log[-3000:]
    assert "over 2 devices" in log          # the trainer's mesh line
    # Everything the run promises is on disk.
    metrics = json.load(open(straight / "eval" / "step_4" / "metrics.json"))
    assert {"phantoms/xray/reid", "phantoms/ct/history"} <= set(metrics)
    assert 0.0 <= metrics["phantoms/xray/reid"]["rank1"] <= 1.0
    assert (straight / "eval" / "step_4" / "cmc.png").exists()
    assert (straight / "curves.png").exists()
    assert (straight / "training_batches.png").exists()      # what it was trained on
    assert any(f.startswith("events") for f in os.listdir(straight / "tb"))
    from mami_jax.train.logged_scalars import read_scalars
    scalars = read_scalars(str(straight))   # 8 images a step over 2 devices, logged each step
    assert scalars["train/images_seen"][1].tolist() == [8, 16, 24, 32]
    steps, rates = scalars["train/images_per_second"]
    assert steps.tolist() == [2, 3, 4] and (rates > 0).all()     # step 1 held the compilation
    np.testing.assert_allclose(scalars["train/images_per_second_per_device"][1], rates / 2)
    np.testing.assert_allclose(scalars["train/step_seconds"][1], 8 / rates, rtol=1e-5)
    assert sorted(os.listdir(straight / "checkpoints")) == ["2", "4"]
    def training_programs():
        return sorted(n for n in os.listdir(compiled) if n.endswith("-cache")
                      and n.startswith(("jit_init_state-", "jit_step-")))
    programs = training_programs()
    assert len(programs) >= 3, programs   # the initialisation and a step per batch shape

    resumed = tmp_path / "resumed"
    other_hashing = {**cached, "PYTHONHASHSEED": "2"}
    killed = _main(resumed, cache, "--config.train.eval_at_start=False", flag, check=False,
                   env={**other_hashing, KILL_AFTER_STEP_ENV: "2"})  # test-only switch
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(os.listdir(resumed / "checkpoints")) == ["2"]
    # with a data worker process now (the killed run decoded in its own): the batches are
    # the sampler's of each step, not the grain iterator's state of a number of workers
    again = _main(resumed, cache, "--config.train.eval_at_start=False",
                  "--config.train.eval_at_end=False", "--config.data.num_workers=1", flag,
                  env=other_hashing)
    assert "resumed from" in again.stderr
    assert training_programs() == programs   # no step or initialisation compiled anew
    (s1, p1), (s2, p2) = _final_params(straight), _final_params(resumed)
    assert s1 == s2 == 4
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(a, b)


#: The signal tests' data: the X-rays alone, one batch shape and so one training step to
#: compile (the phantoms' series are a second); what they check is how a run stops.
ONE_BATCH_SHAPE = {"data__only_modalities": "xray"}


def _signal_at_step_3(tmp_path, signum, **changed) -> tuple[int, str]:
    """(exit status, stderr) of a long training run sent ``signum`` once step 3 is logged
    (step 2's checkpoint begun, with the default ``checkpoint_every`` of 2)."""
    return _signal_on_line(tmp_path, signum, "step 3: train/", **changed)


def _signal_on_line(tmp_path, signum, marker: str, **changed) -> tuple[int, str]:
    """(exit status, stderr) of a long training run sent ``signum`` once a line of its
    log holds ``marker``."""
    cmd = _main_command(tmp_path / "run", str(tmp_path / "phantoms"),
                        "--config.train.eval_at_start=False", train__total_steps=10_000,
                        **{**ONE_BATCH_SHAPE, **changed})
    proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env={**os.environ, **TWO_DEVICES})
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                proc.send_signal(signum)
                break
        rest = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()
    return proc.returncode, "".join(seen) + rest


def test_ctrl_c_while_training_names_the_checkpoint_to_go_on_from(tmp_path):
    """Ctrl-C (SIGINT) while training: the checkpointer finishes what it was writing, and
    the run ends with status 130 and one line naming the checkpoint a run of the same
    command goes on from; no KeyboardInterrupt traceback, and no crash of the interpreter's
    teardown after it (it segfaulted, now and then, with the input pipeline's threads)."""
    import re
    import signal
    returncode, err = _signal_at_step_3(tmp_path, signal.SIGINT)
    assert returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(r"interrupted; run the same command again to go on from the "
                         r"checkpoint of step (\d+)", last)
    assert match, err[-3000:]
    step = match.group(1)
    assert int(step) >= 2 and step in os.listdir(tmp_path / "run" / "checkpoints")


def test_sigterm_while_a_run_starts_stops_it_at_once(tmp_path):
    """SIGTERM while the run read its data, built its model and compiled its step (minutes
    for ViT-B, longer than a preempted VM's notice; a user's ``kill`` of a run started
    with the wrong settings) was only noted: the run compiled, trained a step and saved
    it before it stopped. Nothing trained is lost by stopping at once, as Ctrl-C does."""
    import signal
    # " mesh {": the run has begun, in the workdir it holds
    returncode, err = _signal_on_line(tmp_path, signal.SIGTERM, " mesh {")
    assert returncode == 143, err[-3000:]
    assert "Traceback" not in err and "step 1: train/" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == ("stopped by SIGTERM; no checkpoint was written "
                                            "yet: running the same command again starts over")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not checkpoints.exists() or os.listdir(checkpoints) == []


def test_sigterm_while_training_saves_the_step_reached_and_the_run_goes_on_from_it(tmp_path):
    """SIGTERM (a preempted TPU or spot VM, Slurm's time limit, ``kill``) ended the run at
    once: every step since the last periodic checkpoint was lost (here all of them: the
    first periodic one is at step 10 000). Now the step reached is saved, the run ends with
    status 143 and one line, and the same command goes on from that step."""
    import re
    import signal
    returncode, err = _signal_at_step_3(tmp_path, signal.SIGTERM, train__checkpoint_every=10_000)
    assert returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(rf"stopped by SIGTERM after step (\d+), saved in {checkpoints}/(\d+); "
                         r"run the same command again to go on from it", last)
    assert match and match.group(1) == match.group(2), err[-3000:]
    step = int(match.group(1))
    assert step >= 3 and os.listdir(checkpoints) == [str(step)]
    again = subprocess.run(_main_command(tmp_path / "run", str(tmp_path / "phantoms"),
                                         "--config.train.eval_at_start=False",
                                         "--config.train.eval_at_end=False",
                                         train__total_steps=step + 1, **ONE_BATCH_SHAPE),
                           cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, **TWO_DEVICES})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {checkpoints}/{step}" in again.stderr
    assert f"step {step + 1}: train/" in again.stderr and "step 1: train/" not in again.stderr
