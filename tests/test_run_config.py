"""WORKDIR/config.json (``train/run_config``, the ``.json`` branch of
``config_files.load_config`` and of main's ``--config`` flag) and which experiment config a
command reads a model with (``experiment_config``)."""

import json
import os
import subprocess
import sys

import pytest

from mami_jax.config_files import (JSON_CONFIG_FILE, REPO_ROOT, flag_config_from_anywhere,
                                   load_config, run_config_path, trained_config_path)
from mami_jax.experiment_config import RunConfigMissing, experiment_spec, load_experiment
from mami_jax.train.run_config import with_the_runs_config, write_run_config


def _types(value):
    """The value with every container's type spelled out, so a list where the config
    file wrote a tuple (or an int where it wrote a float) compares unequal."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_types(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.parametrize("spec", ["configs/all.py", "configs/all.py:runlocal",
                                  "configs/pathology.py", "configs/all.py:runlocal,align"])
def test_a_stored_config_reads_back_as_the_config_file_wrote_it(tmp_path, spec):
    config = load_config(spec)
    write_run_config(str(tmp_path), config)
    back = load_config(run_config_path(str(tmp_path)))
    assert _types(back.to_dict()) == _types(config.to_dict())


def test_a_config_that_is_not_one_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"config file '{path}': not valid JSON"):
        load_config(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object of config values, got list"):
        load_config(str(path))
    path.write_text("{}")
    with pytest.raises(ValueError, match="a JSON config takes no ARG"):
        load_config(f"{path}:runlocal")


def _run(folder, stored=True):
    """A folder shaped like a trained run (model config, a checkpoint step, and its
    config.json unless ``stored`` is False)."""
    os.makedirs(os.path.join(folder, "checkpoints", "2"))
    open(os.path.join(folder, "model_config.json"), "w").write("{}")
    if stored:
        write_run_config(str(folder), load_config("configs/all.py:runlocal"))
    return str(folder)


def test_the_spec_is_the_given_one_else_the_runs_own(tmp_path, monkeypatch):
    run = _run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)         # a relative spec names the repository's file
    repo_all = os.path.join(REPO_ROOT, "configs", "all.py")
    assert experiment_spec(run, "configs/all.py:runlocal") == repo_all + ":runlocal"
    own = os.path.join(run, "config.json")
    assert experiment_spec(run) == own
    assert experiment_spec(run + "@2") == own
    assert experiment_spec("run") == os.path.abspath("run/config.json")


def test_a_converter_folder_is_read_with_the_papers_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    converted = tmp_path / "converted"
    os.makedirs(converted / "params")
    (converted / "model_config.json").write_text("{}")
    repo_all = os.path.join(REPO_ROOT, "configs", "all.py")
    assert experiment_spec(str(converted)) == repo_all
    assert experiment_spec(str(tmp_path / "missing")) == repo_all   # the loader names it


def test_an_export_of_a_run_carries_its_config(tmp_path, monkeypatch, capsys):
    """export-torch of a trained run puts its config.json into the file (.pth and
    .safetensors), and the file is then read with it, as is the converter folder
    import-official makes of it; an export of a folder without one carries none and is
    read with the paper's config."""
    pytest.importorskip("torch")
    from mami_jax.convert.__main__ import main as convert
    from mami_jax.convert.checkpoint_dir import load_params, save_params
    from tests.history_workdir import make_workdir, write_config
    run = make_workdir(str(tmp_path / "run"), load_config(write_config(str(tmp_path))))
    own = _types(load_config(os.path.join(run, "config.json")).to_dict())
    shift = "--allow-non-released-shift"     # the tiny model's shift_input is not the authors'
    for name in ("model.pth", "model.safetensors"):
        out = str(tmp_path / name)
        assert convert(["export-torch", "--checkpoint", run, "--out", out, shift]) == 0
        assert (f"experiment config: {run}/config.json, carried in the file"
                in capsys.readouterr().out)
        assert experiment_spec(out) == out
        assert _types(load_experiment(out).to_dict()) == own
        # main --model=FILE without --config reads the file with the config it carries,
        # through the flag's Python loader, overrides after it
        argv = with_the_runs_config([f"--model={out}", f"--workdir={tmp_path / 'ev'}",
                                     "--config.eval.batch_size=4"])
        assert argv[0] == f"--config={out}" and argv[1:] == [
            f"--model={out}", f"--workdir={tmp_path / 'ev'}", "--config.eval.batch_size=4"]
        assert flag_config_from_anywhere(argv)[0] == f"--config={JSON_CONFIG_FILE}:{out}"
        assert _types(load_config(f"{JSON_CONFIG_FILE}:{out}").to_dict()) == own
    # import-official of an export keeps its config beside the folder's params, and an
    # export of that folder carries it again.
    kept = str(tmp_path / "imported")
    assert convert(["import-official", "--pth", str(tmp_path / "model.pth"), "--out", kept,
                    shift]) == 0
    assert "experiment config: the one the file carries" in capsys.readouterr().out
    assert experiment_spec(kept) == os.path.join(kept, "config.json")
    assert _types(load_experiment(experiment_spec(kept)).to_dict()) == own
    again = str(tmp_path / "again.safetensors")
    assert convert(["export-torch", "--checkpoint", kept, "--out", again, shift]) == 0
    assert _types(load_experiment(experiment_spec(again)).to_dict()) == own
    folder = save_params(str(tmp_path / "converted"), *load_params(run))
    bare = str(tmp_path / "bare.pth")
    assert convert(["export-torch", "--checkpoint", folder, "--out", bare, shift]) == 0
    assert "experiment config: none beside the checkpoint" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert experiment_spec(bare) == os.path.join(REPO_ROOT, "configs", "all.py")
    with pytest.raises(ValueError, match=f"{bare} carries no experiment config"):
        load_experiment(bare)
    table = tmp_path / "rows.csv"          # a slip: a manifest given as the config
    table.write_text("image_id,patient_id\nA,P\n")
    with pytest.raises(ValueError) as e:
        load_experiment(str(table))
    assert str(e.value).startswith(
        f"{table}: neither an experiment config (a .py file, a run's config.json) nor a model "
        f"file exported from a run; read as a model file: {table} is not a weights-only")


def test_a_run_from_before_stored_configs_must_be_named(tmp_path):
    run = _run(tmp_path / "old", stored=False)
    with pytest.raises(RunConfigMissing) as e:
        experiment_spec(run + "@2", how="--config FILE[:ARG]")
    assert str(e.value) == (f"{run}@2: the run has no config.json (it was trained before runs "
                            "kept their config); name the experiment config it was trained "
                            "with: --config FILE[:ARG]")


def test_a_folder_that_is_no_run_is_named_as_such(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(ValueError) as e:
        experiment_spec(str(folder))
    assert not isinstance(e.value, RunConfigMissing)
    assert str(e.value) == (f"{folder}: not a trained run (no checkpoints/ and no "
                            "config.json), nor a converter folder or model file")


def test_main_without_config_reads_the_workdirs_own(tmp_path, capsys):
    run = _run(tmp_path / "run")
    own = os.path.join(run, "config.json")
    # first: absl reads a --config.KEY override only after the config
    assert with_the_runs_config([f"--workdir={run}", "--mode=eval", "--config.seed=3"]) == [
        f"--config={own}", f"--workdir={run}", "--mode=eval", "--config.seed=3"]
    assert f"--config: the run's own, {own}" in capsys.readouterr().err
    other = _run(tmp_path / "other")          # --model's own config before the workdir's
    assert with_the_runs_config([f"--workdir={run}", f"--model={other}@2"]) == [
        f"--config={other}/config.json", f"--workdir={run}", f"--model={other}@2"]
    assert with_the_runs_config([f"--workdir={run}", "--model=/no/such.pth"])[0] == (
        f"--config={own}")
    named = ["--config", "configs/all.py", "--workdir", run]
    assert with_the_runs_config(named) == named
    fresh = [f"--workdir={tmp_path / 'fresh'}"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        with_the_runs_config(fresh)
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"error: --config is needed: --workdir {tmp_path / 'fresh'} is no run yet; name the "
        "experiment config, e.g. --config=configs/all.py:runlocal\n")
    assert with_the_runs_config(fresh + ["--help"]) == fresh + ["--help"]
    assert with_the_runs_config(["--mode=eval"]) == ["--mode=eval"]


def test_a_json_config_flag_becomes_the_file_that_loads_it(tmp_path, monkeypatch):
    run = _run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert flag_config_from_anywhere(["--config=run/config.json", "--mode=eval"]) == [
        f"--config={JSON_CONFIG_FILE}:{run}/config.json", "--mode=eval"]
    assert flag_config_from_anywhere(["--config", "missing.json"]) == ["--config", "missing.json"]
    spec = f"{JSON_CONFIG_FILE}:{run}/config.json"
    assert load_config(spec).to_dict() == load_config("configs/all.py:runlocal").to_dict()


def test_main_refuses_a_stored_config_that_is_not_the_experiment_configs(tmp_path):
    """A run's config.json with a key of the wrong type or unknown is refused before any
    work, with one error line naming the file and the keys (config_types.check_run_config;
    before: ``int('many')`` naming no key, and a misspelt key accepted)."""
    run = _run(tmp_path / "run")
    own = os.path.join(run, "config.json")
    with open(own) as f:
        values = json.load(f)
    del values["eval"]["num_negatives"]
    values["eval"]["batch_size"] = "many"
    values["bogus_key"] = 1
    with open(own, "w") as f:
        json.dump(values, f)
    for flags in ([], [f"--config={own}"]):
        proc = subprocess.run([sys.executable, "-m", "mami_jax.main", f"--workdir={run}",
                               "--mode=eval"] + flags, cwd=str(tmp_path), capture_output=True,
                              text=True, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert errors[0].startswith("error: ") and "Traceback" not in proc.stderr
        assert errors[0].endswith(
            f"config file '{own}' does not have the experiment config's keys and types "
            "(mami_jax/config.py): unknown key: bogus_key; "
            'wrong type: eval.batch_size="many" (expects an integer)'), errors[0]
        assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "model_config.json"]


@pytest.mark.parametrize("text,why", [
    ('{"name": "my dataset", "version": 3}', "it has no model, data, train, eval"),
    ("[1, 2]", "a JSON list, not an object"),
    ("model: vit", "not JSON: Expecting value: line 1 column 1 (char 0)"),
])
def test_a_workdir_holding_another_config_json_is_refused_before_it_is_replaced(
        tmp_path, text, why):
    """Before: training into a folder that held a config.json of something else (a
    dataset's, another tool's) replaced it with the run's."""
    from mami_jax.config import base_config
    from mami_jax.train.trainer import train_and_evaluate
    (tmp_path / "config.json").write_text(text)
    config = base_config()
    with config.unlocked():     # (no CLIP file here: a new run would be refused for that)
        config.init.clip_checkpoint, config.init.require_pretrained = "", False
    with pytest.raises(ValueError) as e:
        train_and_evaluate(config, str(tmp_path))
    assert str(e.value) == (
        f"--workdir {tmp_path}: {tmp_path / 'config.json'} is not a training run's config "
        f"({why}); training writes its own config.json there and would replace it: give "
        "another --workdir, or move the file")
    assert os.listdir(tmp_path) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == text


def _config_with(seed):
    config = load_config("configs/all.py:runlocal")
    with config.unlocked():
        config.seed = seed
    return config


def test_a_checkpoint_is_read_with_the_config_that_trained_it(tmp_path, capsys):
    """A resume at step 2 with other settings keeps the config of steps 1-2 as
    config.until_step_2.json and replaces config.json just before it saves its first
    checkpoint: killed between the two, config.json holds settings that trained nothing,
    and the latest checkpoint (2) is still read with config.until_step_2.json; once a
    checkpoint past 2 exists, config.json is its config, and WORKDIR@2 the earlier one."""
    run = _run(tmp_path / "run")
    own = os.path.join(run, "config.json")
    write_run_config(run, _config_with(1))          # the settings that trained steps 1-2
    until_2 = os.path.join(run, "config.until_step_2.json")
    with open(own) as f, open(until_2, "w") as g:
        g.write(f.read())
    write_run_config(run, _config_with(2))          # the resume's, written before its save
    assert trained_config_path(run) == until_2
    for model in (run, run + "@2", run + "@1"):
        assert experiment_spec(model) == until_2
        assert load_experiment(experiment_spec(model)).seed == 1
    assert with_the_runs_config([f"--workdir={run}"])[0] == f"--config={until_2}"
    assert f"--config: the run's own, {until_2}" in capsys.readouterr().err
    os.makedirs(os.path.join(run, "checkpoints", "4"))                 # the resume's save
    os.makedirs(os.path.join(run, "checkpoints", "6.orbax-checkpoint-tmp-12"))  # unfinished
    assert experiment_spec(run) == own and experiment_spec(run + "@4") == own
    assert experiment_spec(run + "@2") == until_2
    assert with_the_runs_config([f"--workdir={run}"])[0] == f"--config={own}"


def test_an_until_step_record_is_never_replaced(tmp_path, monkeypatch):
    """A second resume at the same step (the first stopped before it saved) compares
    itself with the config that trained the step, and keeps its record."""
    from mami_jax.train import run_config
    run = _run(tmp_path / "run")
    write_run_config(run, _config_with(1))
    until_2 = os.path.join(run, "config.until_step_2.json")
    warned = []
    monkeypatch.setattr(run_config.logging, "warning", lambda *a: warned.append(a[0] % a[1:]))
    run_config.note_changed_settings(run, _config_with(2), 2)           # B
    record = open(until_2).read()
    assert json.loads(record)["seed"] == 1
    write_run_config(run, _config_with(2))          # B was killed as it saved step 3
    run_config.note_changed_settings(run, _config_with(3), 2)           # C
    assert open(until_2).read() == record
    assert warned[-1].startswith("resuming from step 2 with 1 setting(s) other than the "
                                 "run's: seed: 1 -> 3; the steps up to 2")
    run_config.note_changed_settings(run, _config_with(1), 2)           # A again: no change
    assert len(warned) == 2 and open(until_2).read() == record


def test_records_of_checkpoints_that_are_gone_are_removed(tmp_path, monkeypatch):
    """A run whose checkpoints past step N were deleted, or a new run in the folder of one
    whose checkpoints/ was, trains those steps again: a config.until_step record of them
    would be read with the new checkpoints."""
    from mami_jax.train import run_config
    monkeypatch.setattr(run_config.logging, "warning", lambda *a: None)
    for n in (2, 4, 6):
        open(os.path.join(tmp_path, f"config.until_step_{n}.json"), "w").write("{}")
    run_config.forget_configs_past(str(tmp_path), 4)
    assert sorted(os.listdir(tmp_path)) == ["config.until_step_2.json",
                                           "config.until_step_4.json"]
    run_config.forget_configs_past(str(tmp_path), 0)
    assert os.listdir(tmp_path) == []
