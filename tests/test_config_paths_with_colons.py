"""A config path whose folder holds ':' (a run named ``run_12:00``): every loader cut the
spec ``FILE[:ARG]`` at its first ':', so such a run could not be resumed or evaluated with
its own config.json ("--config .../run_12: no such file"), nor read by the applications
("config file '.../run_12' not found"). ``config_files.split_spec`` takes a spec naming an
existing file whole, and otherwise cuts after the ``.py``/``.json`` name."""

import os
import subprocess
import sys

import pytest

from mami_jax.config_files import (JSON_CONFIG_FILE, flag_config_from_anywhere, load_config,
                                   resolve_spec, split_spec)
from mami_jax.experiment_config import experiment_spec, load_experiment
from mami_jax.train.run_config import write_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: An experiment config file of the tests' own: the paper's runlocal, seed = ARG.
CONFIG_FILE = """from mami_jax.config_files import load_config


def get_config(arg):
    config = load_config("configs/all.py:runlocal")
    config.seed = int(arg or 0)
    return config
"""


@pytest.fixture
def colon_run(tmp_path):
    """A folder shaped like a trained run, named with ':' (config.json, a checkpoint step),
    holding a Python config file too."""
    run = tmp_path / "run_12:00"
    os.makedirs(run / "checkpoints" / "2")
    (run / "model_config.json").write_text("{}")
    write_run_config(str(run), load_config("configs/all.py:runlocal"))
    (run / "seeded.py").write_text(CONFIG_FILE)
    return str(run)


def test_a_spec_is_cut_after_its_file_name(colon_run):
    own = os.path.join(colon_run, "config.json")
    assert split_spec(own) == (own, "", "")
    py = os.path.join(colon_run, "seeded.py")
    assert split_spec(py + ":7") == (py, ":", "7")
    assert split_spec(py + ":a:b.py") == (py, ":", "a:b.py")       # an ARG holding ':'
    assert split_spec("configs/all.py:runlocal") == ("configs/all.py", ":", "runlocal")
    missing = os.path.join(colon_run, "missing.json")
    assert split_spec(missing) == (missing, "", "")                 # named whole
    assert split_spec(f"{missing}:x") == (missing, ":", "x")
    assert resolve_spec(py + ":7") == py + ":7"


def test_a_run_named_with_a_colon_is_read_with_its_own_config(colon_run):
    own = os.path.join(colon_run, "config.json")
    runlocal = load_config("configs/all.py:runlocal").to_dict()
    assert load_config(own).to_dict() == runlocal
    assert experiment_spec(colon_run) == own
    assert load_experiment(experiment_spec(colon_run + "@2")).to_dict() == runlocal
    with pytest.raises(ValueError, match="a JSON config takes no ARG"):
        load_config(own + ":x")
    py = os.path.join(colon_run, "seeded.py")
    assert load_config(py + ":7").seed == 7


def test_the_flag_of_a_config_in_such_a_folder_reaches_the_file(colon_run):
    """ml_collections cuts the --config value at its first ':': a JSON config goes through
    the package's loader file as before, and so does a Python one whose path holds ':'."""
    own = os.path.join(colon_run, "config.json")
    assert flag_config_from_anywhere([f"--config={own}"]) == [f"--config={JSON_CONFIG_FILE}:{own}"]
    py = os.path.join(colon_run, "seeded.py")
    assert flag_config_from_anywhere(["--config", py + ":7"]) == [
        "--config", f"{JSON_CONFIG_FILE}:{py}:7"]
    assert load_config(f"{JSON_CONFIG_FILE}:{py}:7").seed == 7
    assert load_config(f"{JSON_CONFIG_FILE}:{own}").to_dict() == load_config(own).to_dict()


@pytest.mark.parametrize("flags", [[], ["--config={run}/config.json"],
                                   ["--config={run}/seeded.py:3"]])
def test_main_reads_the_config_of_a_run_named_with_a_colon(colon_run, tmp_path, flags):
    """The config is read (its own, named, or a Python file there): the run goes on to the
    evaluation settings, whose refusal (exit 1, naming the key) proves it."""
    proc = subprocess.run(
        [sys.executable, "-m", "mami_jax.main", f"--workdir={colon_run}", "--mode=eval"]
        + [f.format(run=colon_run) for f in flags] + ["--config.eval.batch_size=0"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
        env={**os.environ, "MAMI_JAX_MALLOC": "system"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: eval.batch_size=0: expected a whole number >= 1"), proc.stderr[-2000:]
