"""What is resumed is what was saved: refusals before anything is written, damaged
checkpoints named by directory and item, cleanup of killed saves, file permissions,
and the one-line ``error:`` of ``python -m mami_jax.main``.

One tiny run (2 steps, one checkpoint) is trained once per module; every test works on
its own copy of that workdir.
"""

import csv
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mami_jax.config_files import load_config
from mami_jax.data.loading import load_rows
from mami_jax.data.manifest import COLUMNS
from mami_jax.data.sampler import train_label_map
from mami_jax.inference import Embedder
from mami_jax.run_checkpoint import run
from mami_jax.runtime import sharding
from mami_jax.runtime.folder_lock import LOCK_FILE
from mami_jax.train import checkpointing, run_config
from mami_jax.train.checkpointing import CheckpointError
from mami_jax.train.trainer import train_and_evaluate
from tests.test_train import REPO, _main, tiny_config


def _cfg(root, manifest="", **model):
    """The tiny run on the X-ray phantoms under ``root`` (one modality: one compiled step
    shape), or on ``manifest``; ``model`` overrides model keys."""
    cfg = tiny_config(os.path.join(root, "phantoms"), total_steps=2, checkpoint_every=2,
                      eval_at_start=False, eval_at_end=False)
    with cfg.unlocked():
        cfg.model.update(model)
        cfg.data.manifest = manifest
        cfg.data.only_modalities = ("xray",)
        for block in cfg.data.modalities.values():  # weights of the absent modalities
            block.source_weight = None
    return cfg


def _write_manifest(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([getattr(r, c) for c in COLUMNS])
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, root of the phantoms) of a finished 2-step run, trained under umask 0o022."""
    root = str(tmp_path_factory.mktemp("resume"))
    workdir = os.path.join(root, "run")
    old = os.umask(0o022)
    try:
        train_and_evaluate(_cfg(root), workdir)
    finally:
        os.umask(old)
    return workdir, root


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained workdir: (workdir, root of the phantoms, step directory)."""
    workdir, root = trained
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return copy, root, os.path.join(copy, "checkpoints", "2")


def _snapshot(root):
    """Every path under ``root`` with its size, modification time and mode; the lock file
    aside (it says which run held the workdir last: a refused run held it too)."""
    out = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            if name == LOCK_FILE:
                continue
            path = os.path.join(here, name)
            st = os.stat(path)
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def _eval_restore(cfg, workdir):
    model = Embedder.from_workdir(str(workdir), cfg, sharding.make_mesh(), "evaluate")
    return model.step, model.params


# ---------------------------------------------------------------- model config


def test_changed_model_config_is_refused_before_anything_is_written(run_copy):
    workdir, root, _ = run_copy
    before = _snapshot(workdir)
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(_cfg(root, leaky_slope=0.2, rank=2), workdir)
    message = str(err.value)
    assert message.startswith("refusing to resume training")
    assert os.path.join(workdir, "model_config.json") in message
    assert "model.leaky_slope: 0.1 -> 0.2; model.rank: 4 -> 2." in message
    assert _snapshot(workdir) == before
    # The saved model is still the one evaluation accepts ...
    step, _ = _eval_restore(_cfg(root), workdir)
    assert step == 2
    # ... and evaluation refuses the changed one with the same comparison.
    with pytest.raises(CheckpointError, match=r"refusing to evaluate: .*model\.leaky_slope: "
                                              r"0\.1 -> 0\.2"):
        _eval_restore(_cfg(root, leaky_slope=0.2), workdir)


def test_execution_only_keys_may_differ_on_resume(run_copy, monkeypatch):
    """... and every changed setting is named, the earlier config kept: a resume with an
    override forgotten went on silently under other settings."""
    workdir, root, _ = run_copy
    warned = []
    monkeypatch.setattr(run_config.logging, "warning", lambda *a: warned.append(a[0] % a[1:]))
    train_and_evaluate(_cfg(root, dtype="bfloat16", remat=True, init="released"), workdir)
    saved = checkpointing.read_model_config(workdir)
    assert (saved["dtype"], saved["remat"], saved["init"]) == ("bfloat16", True, "released")
    # Nothing was trained with the new settings (the run was at its last step):
    # config.json still holds the config that trained the checkpoint the applications read.
    kept = load_config(os.path.join(workdir, "config.json"))
    assert kept.to_dict() == _cfg(root).to_dict()
    earlier = os.path.join(workdir, "config.until_step_2.json")
    assert load_config(earlier).to_dict() == _cfg(root).to_dict()
    assert [w for w in warned if not w.startswith("optim.warmup_steps")] == [   # tiny run
        "resuming from step 2 with 3 setting(s) other than the run's: model.dtype: 'float32' "
        "-> 'bfloat16'; model.init: 'default' -> 'released'; model.remat: False -> True; the "
        f"steps up to 2 were trained with {earlier}"]


def _with_lr(root, rate, total_steps=2):
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.optim.learning_rate = rate
        cfg.train.total_steps = total_steps
    return cfg


def test_a_resume_stopped_before_it_saved_keeps_the_record_of_what_trained(run_copy,
                                                                           monkeypatch):
    """Run A trained steps 1-2; B resumed it with another learning rate and was stopped
    before step 3; C resumed it again. B had already made config.json its own (so
    ``--mode=eval`` read A's checkpoint with B's settings), and C compared itself with B,
    replaced config.until_step_2.json (A's, the record of steps 1-2) with B's and warned
    that steps 1-2 were trained with it. Now config.json changes only when a new
    checkpoint is saved, the until_step record is never replaced, and readers take the
    file that covers the checkpoint they read."""
    from mami_jax import experiment_config
    from mami_jax.train import trainer

    workdir, root, _ = run_copy
    a = _cfg(root)
    own, until_2 = os.path.join(workdir, "config.json"), os.path.join(
        workdir, "config.until_step_2.json")
    a_text = open(own).read()
    assert load_config(own).to_dict() == a.to_dict()

    def stopped_before_step_3(*args, **kwargs):    # SIGTERM before a step: as Ctrl-C
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "tqdm", stopped_before_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(_with_lr(root, 0.5, total_steps=3), workdir)      # B
    monkeypatch.undo()
    assert checkpointing.latest_step(workdir) == 2
    assert open(own).read() == a_text                   # B trained nothing
    assert open(until_2).read() == a_text
    for model in (workdir, workdir + "@2"):             # what eval and the apps read
        spec = experiment_config.experiment_spec(model)
        assert experiment_config.load_experiment(spec).to_dict() == a.to_dict(), spec
    chosen = run_config.with_the_runs_config([f"--workdir={workdir}"])[0]   # main's
    assert load_config(chosen.split("=", 1)[1]).to_dict() == a.to_dict()

    warned = []
    monkeypatch.setattr(run_config.logging, "warning", lambda *x: warned.append(x[0] % x[1:]))
    c = _with_lr(root, 0.002, total_steps=3)
    train_and_evaluate(c, workdir)                      # C trains step 3
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
    assert open(until_2).read() == a_text               # still A's: steps 1-2 were A's
    changes = [w for w in warned if w.startswith("resuming from step 2")]
    assert len(changes) == 1 and "optim.learning_rate: 0.001 -> 0.002" in changes[0], warned
    assert "0.5" not in changes[0] and changes[0].endswith(
        f"the steps up to 2 were trained with {until_2}")
    assert load_config(own).to_dict() == c.to_dict()    # the config of checkpoint 3
    assert experiment_config.experiment_spec(workdir) == own
    assert experiment_config.experiment_spec(workdir + "@2") == until_2


def test_the_run_keeps_the_whole_config_it_was_trained_with(trained):
    """WORKDIR/config.json reads back as the config (tuples, None, nested blocks), so the
    applications read a run as it was trained without being told its config file."""
    workdir, root = trained
    kept = load_config(os.path.join(workdir, "config.json"))
    assert kept.to_dict() == _cfg(root).to_dict()
    assert kept.data.only_modalities == ("xray",) and kept.data.modalities.ct.source_weight is None


def test_a_total_below_the_resumed_step_is_refused(run_copy):
    """A 2-step checkpoint resumed with total_steps=1 wrote eval/step_1 holding the step-2
    weights."""
    workdir, root, _ = run_copy
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.train.total_steps = 1
    with pytest.raises(ValueError, match=rf"^train.total_steps=1: {workdir} holds a checkpoint "
                                         r"of step 2, past it"):
        train_and_evaluate(cfg, workdir)
    assert not os.path.exists(os.path.join(workdir, "eval", "step_1"))


@pytest.mark.parametrize("setting, value", [("grad_clip_norm", 0.0),
                                            ("freeze", ("mami/block_0/.*",))])
def test_other_optimizer_settings_on_resume_are_named_not_called_damage(run_copy, setting, value):
    """Clipping off (its state gone from the optimizer's chain) or a part frozen now was
    'checkpoint ... is damaged: item train cannot be read'; the checkpoint is fine."""
    workdir, root, step_dir = run_copy
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.optim[setting] = value
    with pytest.raises(CheckpointError, match=rf"^checkpoint {step_dir} holds the optimizer "
                                              r"state (and heads )?of other training settings"):
        train_and_evaluate(cfg, workdir)


def test_model_config_differences():
    saved = {"generator_hidden": [24, 16], "rank": 4, "dtype": "float32", "old": 1}
    requested = {"generator_hidden": (24, 16), "rank": 8, "dtype": "bfloat16", "new": 2}
    assert checkpointing.model_config_differences(saved, requested) == {
        "new": ("<absent>", 2), "old": (1, "<absent>"), "rank": (4, 8)}


@pytest.mark.parametrize("text,problem", [("{not json", ": not valid JSON"),
                                          ("[1, 2]", ": expected a JSON object"),
                                          (None, " is missing")])
def test_unreadable_model_config_is_named(run_copy, text, problem):
    workdir, root, _ = run_copy
    path = os.path.join(workdir, "model_config.json")
    os.remove(path)
    if text is not None:
        with open(path, "w") as f:
            f.write(text)
    for attempt in (lambda: train_and_evaluate(_cfg(root), workdir),
                    lambda: _eval_restore(_cfg(root), workdir)):
        with pytest.raises(CheckpointError, match=f"{path}{problem}"):
            attempt()
    assert (open(path).read() if text is not None else os.path.exists(path)) == (text or False)


# ---------------------------------------------------------------- identity labels


def test_label_map_is_saved_with_the_checkpoint(run_copy):
    workdir, root, step_dir = run_copy
    rows = load_rows(_cfg(root), workdir)
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        assert ckpt.saved_label_map(2) == train_label_map(rows)
    finally:
        ckpt.close()
    assert len(train_label_map(rows)) > 5
    assert {"data", "labels", "params", "train"} <= set(os.listdir(step_dir))


def test_other_training_patients_of_the_same_count_are_refused(run_copy, tmp_path):
    workdir, root, step_dir = run_copy
    rows = load_rows(_cfg(root), workdir)
    keys = sorted(train_label_map(rows))
    first = rows[[r.patient_key for r in rows].index(keys[0])]
    renamed = [dataclasses.replace(r, patient_id="zz_new") if r.patient_key == keys[0] else r
               for r in rows]
    cfg = _cfg(root, _write_manifest(renamed, tmp_path / "renamed.csv"))
    before = _snapshot(workdir)
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(cfg, workdir)
    message = str(err.value)
    # The first patient leaves and a new one sorts last: every other row moves up by one.
    assert f"of {step_dir} was trained with ({len(keys)} saved, {len(keys)} now)" in message
    assert f"1 added (e.g. {first.dataset}/zz_new)" in message
    assert f"1 removed (e.g. {keys[0]})" in message
    assert f"{len(keys) - 1} moved to another classifier row (e.g. {keys[1]}: row 1 -> 0" in message
    assert _snapshot(workdir) == before


def test_fewer_training_patients_are_refused_with_counts_not_a_shape_error(run_copy, tmp_path):
    workdir, root, step_dir = run_copy
    rows = load_rows(_cfg(root), workdir)
    keys = sorted(train_label_map(rows))
    dropped = [r for r in rows if r.patient_key != keys[-1]]
    cfg = _cfg(root, _write_manifest(dropped, tmp_path / "fewer.csv"))
    with pytest.raises(CheckpointError) as err:
        train_and_evaluate(cfg, workdir)
    message = str(err.value)
    assert f"({len(keys)} saved, {len(keys) - 1} now): 1 removed (e.g. {keys[-1]})." in message
    assert " added (" not in message and " moved to another" not in message


def test_label_map_differences():
    saved = {"d/a": 0, "d/b": 1, "d/c": 2}
    requested = {"d/b": 0, "d/c": 1, "d/e": 2, "d/f": 3}
    assert checkpointing.label_map_differences(saved, requested) == (
        ["d/e", "d/f"], ["d/a"], [("d/b", 1, 0), ("d/c", 2, 1)])
    checkpointing.check_label_map(saved, dict(saved), "x")  # same map: no error


def test_checkpoint_without_label_map_is_refused_for_training_only(run_copy):
    workdir, root, step_dir = run_copy
    shutil.rmtree(os.path.join(step_dir, "labels"))
    with pytest.raises(CheckpointError, match=f"checkpoint {step_dir} has no identity-label "
                                              r"map \(item 'labels'"):
        train_and_evaluate(_cfg(root), workdir)
    assert _eval_restore(_cfg(root), workdir)[0] == 2


# ---------------------------------------------------------------- damaged checkpoints


def _delete_train(step_dir):
    shutil.rmtree(os.path.join(step_dir, "train"))
    return r"item\(s\) \['train'\] missing"


def _truncate_params_data(step_dir):
    """Halves the data files of the ``params`` item's merged database (params/d/*: what a
    restore reads; the per-process files may hold superseded chunks nobody reads)."""
    data = os.path.join(step_dir, "params", "d")
    assert os.listdir(data)
    for name in os.listdir(data):
        path = os.path.join(data, name)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    return "item 'params' cannot be read"


def _empty(step_dir, item):
    for name in os.listdir(os.path.join(step_dir, item)):
        if name != "commit_success.txt":
            open(os.path.join(step_dir, item, name), "w").close()
    return f"item '{item}' cannot be read"


DAMAGE = {
    "train item deleted": _delete_train,
    "params data truncated": _truncate_params_data,
    "labels emptied": lambda d: _empty(d, "labels"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_names_directory_and_item(run_copy, damage):
    workdir, root, step_dir = run_copy
    problem = DAMAGE[damage](step_dir)
    config_before = open(os.path.join(workdir, "model_config.json")).read()
    with pytest.raises(CheckpointError, match=f"checkpoint {step_dir} is damaged: {problem}"):
        train_and_evaluate(_cfg(root), workdir)
    assert open(os.path.join(workdir, "model_config.json")).read() == config_before
    if damage == "params data truncated":  # the only item evaluation reads
        with pytest.raises(CheckpointError, match=f"checkpoint {step_dir} is damaged: {problem}"):
            _eval_restore(_cfg(root), workdir)


# ---------------------------------------------------------------- leftovers, permissions


def test_unfinished_saves_and_writes_are_removed_at_start(run_copy):
    workdir, root, _ = run_copy
    unfinished = os.path.join(workdir, "checkpoints", "4.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(unfinished, "params"))
    stale = os.path.join(workdir, ".model_config.json.mami-tmp-abc123.json")
    open(stale, "w").close()
    train_and_evaluate(_cfg(root), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert not os.path.exists(stale)
    assert not glob.glob(os.path.join(workdir, "config.until_step_*"))   # nothing changed


def test_everything_written_gets_the_umask_permissions(trained, tmp_path):
    workdir, root = trained  # trained under umask 0o022
    modes = {}
    for here, dirs, files in os.walk(workdir):
        if os.path.relpath(here, workdir).startswith("phantoms"):
            continue
        for name in dirs:
            modes[os.path.join(here, name)] = os.stat(os.path.join(here, name)).st_mode & 0o777
        for name in files:
            modes[os.path.join(here, name)] = os.stat(os.path.join(here, name)).st_mode & 0o777
    config_file = os.path.join(workdir, "model_config.json")
    assert modes[config_file] == 0o644
    assert any("/checkpoints/2/params/" in p for p in modes)
    wrong = {p: oct(m) for p, m in modes.items()
             if m != (0o755 if os.path.isdir(p) else 0o644)}
    assert not wrong

    old = os.umask(0o022)
    try:
        emb = run("embed", _cfg(root), workdir)
    finally:
        os.umask(old)
    path = os.path.join(workdir, "embeddings", "step_2.npz")
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    with np.load(path) as data:
        assert data["embedding"].shape == emb.shape and set(data["modality"]) == {"xray"}


# ---------------------------------------------------------------- the command line


def test_main_reads_a_trained_run_with_the_config_it_stored(run_copy, tmp_path):
    """``--workdir`` alone (no ``--config``, from another folder): the run is embedded with
    the config it stored, exactly as with its config named; ``--config=RUN/config.json``
    takes overrides as a config file does."""
    workdir, root, _ = run_copy
    path = os.path.join(workdir, "embeddings", "step_2.npz")
    expected = run("embed", _cfg(root), workdir)
    os.remove(path)
    main = [sys.executable, "-m", "mami_jax.main", f"--workdir={workdir}"]
    proc = subprocess.run(main + ["--mode=embed"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # once: with jemalloc installed the process starts over preloaded, after this line it was
    assert proc.stderr.count(f"--config: the run's own, {workdir}/config.json") == 1
    with np.load(path) as data:
        np.testing.assert_array_equal(data["embedding"], expected)
    proc = subprocess.run(main + [f"--config={workdir}/config.json", "--mode=eval",
                                  "--config.model.leaky_slope=0.2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: refusing to evaluate: ") and "model.leaky_slope: 0.1 -> 0.2" in last


def test_main_prints_one_error_line_for_a_refusal(run_copy):
    """Both refusals come before any data is read, so the all-modality flags of _main do."""
    workdir, root, _ = run_copy
    cache = os.path.join(root, "phantoms")
    proc = _main(workdir, cache, "--config.model.leaky_slope=0.2", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: refusing to resume training: ")
    assert "model.leaky_slope: 0.1 -> 0.2" in last

    with open(os.path.join(workdir, "model_config.json"), "w") as f:
        f.write("[1, 2]")
    proc = _main(workdir, cache, "--mode=eval", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {workdir}/model_config.json: expected a JSON object of model config values, "
        "got list")


def test_main_refuses_an_invalid_model_config_in_one_line_before_any_data(tmp_path):
    """A zero size is a ValueError naming the key, shown as one line before phantoms exist."""
    workdir = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, "-m", "mami_jax.main", "--config=configs/all.py:runlocal",
         f"--workdir={workdir}", "--config.model.num_heads=0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MAMI_JAX_MALLOC": "system"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "num_heads" in last, last
    assert not (workdir / "phantoms").exists()


def _stored(mode, workdir):
    """What ``run(mode)`` wrote: the embeddings, or the metrics of the evaluation."""
    if mode == "embed":
        with np.load(os.path.join(workdir, "embeddings", "step_2.npz")) as data:
            return data["embedding"]
    with open(os.path.join(workdir, "eval", "step_2_train", "metrics.json")) as f:
        return json.load(f)     # (the train split: beside the run's own test report)


@pytest.mark.parametrize("mode,output", [("embed", "embeddings/step_2.npz"),
                                         ("eval", "eval/step_2_train")])
def test_an_interrupted_embed_or_eval_goes_on_where_it_stopped(run_copy, monkeypatch, capsys,
                                                               mode, output):
    """``--mode=embed`` and ``--mode=eval`` keep each finished chunk beside their output; the
    same command after Ctrl-C computes only the rest and writes what an uninterrupted run
    writes."""
    from types import SimpleNamespace

    from mami_jax import main as main_module
    from mami_jax.runtime.chunk_store import KEPT, KEY_FILE, beside
    from tests.embedding_chunks import count_chunks
    workdir, root, _ = run_copy
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.eval.batch_size = 8                               # one image per test device
        cfg.eval.split = "train"                              # the most images
    state = count_chunks(monkeypatch)                         # a chunk per batch
    path = os.path.join(workdir, output)
    run(mode, cfg, workdir)
    whole, chunks = _stored(mode, workdir), state["computed"]
    assert chunks >= 3 and not os.path.exists(beside(path))
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    monkeypatch.setattr(main_module, "_MODE", SimpleNamespace(value=mode))
    monkeypatch.setattr(main_module, "_WORKDIR", SimpleNamespace(value=workdir))
    state.update(computed=0, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        run(mode, cfg, workdir)
    assert not os.path.exists(path)
    assert sorted(os.listdir(beside(path))) == ["chunk_000000.npy", "chunk_000001.npy", KEY_FILE]
    assert main_module._after_interrupt() == KEPT

    state.update(computed=0, stop_at=None)
    capsys.readouterr()
    run(mode, cfg, workdir)
    assert state["computed"] == chunks - 2
    assert "16 of " in capsys.readouterr().out                # images' results read back
    if mode == "embed":
        np.testing.assert_array_equal(_stored(mode, workdir), whole)
    else:
        assert _stored(mode, workdir) == whole
    assert not os.path.exists(beside(path)) and main_module._after_interrupt() == ""


def test_sigterm_during_an_evaluation_saves_its_step_at_once(trained, tmp_path, monkeypatch):
    """SIGTERM while a training run evaluated (minutes on a large split, longer than a
    preempted VM's notice) let the evaluation finish and the next step train before the
    step was saved: the kill came first and every step since the last periodic checkpoint
    was lost. Now the evaluation is left after its batch and the step it evaluated saved;
    an interrupted final evaluation is made by the rerun."""
    import signal

    from mami_jax.evaluate import evaluator
    from mami_jax.runtime.stop_signal import StoppedBySignal

    _, root = trained
    workdir = str(tmp_path / "run")
    cfg = _cfg(root)
    with cfg.unlocked():
        cfg.train.update(total_steps=3, checkpoint_every=100, eval_every=1, eval_at_end=True)
    loader, evaluations = evaluator.make_eval_loader, []

    def sigterm_in_evaluation(number):
        def eval_loader(*args, **kwargs):
            evaluations.append(1)
            for k, batch in enumerate(loader(*args, **kwargs)):
                if k == 0 and len(evaluations) == number:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch
        monkeypatch.setattr(evaluator, "make_eval_loader", eval_loader)
        evaluations.clear()

    def steps_evaluated():
        return sorted(int(d.split("_")[1]) for d in os.listdir(os.path.join(workdir, "eval"))
                      if os.path.exists(os.path.join(workdir, "eval", d, "metrics.json")))

    sigterm_in_evaluation(1)          # the evaluation of step 1
    with pytest.raises(StoppedBySignal) as stopped:
        train_and_evaluate(cfg, workdir)
    assert stopped.value.step == 1
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
    assert not os.path.isdir(os.path.join(workdir, "eval")) or steps_evaluated() == []

    sigterm_in_evaluation(2)          # resumed at 1: step 2's, then the final one of step 3
    with pytest.raises(StoppedBySignal) as stopped:
        train_and_evaluate(cfg, workdir)
    assert stopped.value.step == 3 and len(evaluations) == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "3"]
    assert steps_evaluated() == [2]

    monkeypatch.setattr(evaluator, "make_eval_loader", loader)
    results = train_and_evaluate(cfg, workdir)      # nothing to train: the final evaluation
    assert results and steps_evaluated() == [2, 3]
