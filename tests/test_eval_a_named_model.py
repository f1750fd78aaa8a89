"""``--mode=eval`` / ``--mode=embed`` with ``--model``: a released or exported file (or
WORKDIR@STEP) is evaluated and embedded exactly as the run it came from, its results go
under the workdir named after it, and the workdir's own results are left alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mami_jax import run_checkpoint
from mami_jax.config_files import load_config
from tests.history_workdir import make_workdir, write_config, write_xray_archive
from tests.one_device import without_device_count

SPLITS = {f"P{i}": s for i, s in enumerate(["train"] * 3 + ["test"] * 5)}


@pytest.fixture()
def setup(tmp_path):
    manifest = write_xray_archive(str(tmp_path / "xr"), SPLITS)
    config_file = write_config(str(tmp_path))
    config = load_config(config_file)
    with config.unlocked():
        config.data.manifest = manifest
    run = make_workdir(str(tmp_path / "run"), config, seed=3, step=7)
    return dict(tmp=tmp_path, config=config, config_file=config_file, run=run,
                manifest=manifest)


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)


def test_a_released_file_is_evaluated_and_embedded_as_its_run(setup):
    pytest.importorskip("torch")
    from mami_jax.convert.checkpoint_dir import load_params
    from mami_jax.convert.official import export_official
    s = setup
    pth = str(s["tmp"] / "released model.pth")
    export_official(pth, *load_params(s["run"]), allow_non_released_shift=True)
    out = str(s["tmp"] / "results")

    run_checkpoint.run("eval", s["config"], s["run"])
    run_checkpoint.run("eval", s["config"], out, model_name=pth)
    run_checkpoint.run("eval", s["config"], out, model_name=f"{s['run']}@7")
    own = _metrics(os.path.join(s["run"], "eval", "step_7"))
    assert own and _metrics(os.path.join(out, "eval", "model_released_model.pth")) == own
    assert _metrics(os.path.join(out, "eval", "model_run_step_7")) == own
    assert sorted(os.listdir(out)) == ["eval"]            # no checkpoint made, nothing else

    theirs = run_checkpoint.run("embed", s["config"], out, model_name=pth)
    mine = run_checkpoint.run("embed", s["config"], s["run"])
    np.testing.assert_array_equal(theirs, mine)
    saved = np.load(os.path.join(out, "embeddings", "model_released_model.pth.npz"))
    np.testing.assert_array_equal(saved["embedding"], mine)


def test_result_names():
    assert run_checkpoint.result_name("", 12) == "step_12"
    assert run_checkpoint.result_name("/w/mami.pth", None) == "model_mami.pth"
    assert run_checkpoint.result_name("/w/run@500", 500) == "model_run_step_500"
    assert run_checkpoint.result_name("/w/imported/", None) == "model_imported"


def test_another_split_is_evaluated_beside_the_runs_own_report(tmp_path):
    """--mode=eval of the validation split wrote eval/step_N/, replacing the test report
    training wrote there (its metrics.json records no split)."""
    import json
    workdir = str(tmp_path)
    assert run_checkpoint.eval_folder(workdir, "step_4", "test") == f"{workdir}/eval/step_4"
    assert run_checkpoint.eval_folder(workdir, "step_4", "val") == f"{workdir}/eval/step_4_val"
    (tmp_path / "config.json").write_text(json.dumps({"eval": {"split": "val"}}))
    assert run_checkpoint.eval_folder(workdir, "step_4", "val") == f"{workdir}/eval/step_4"
    assert run_checkpoint.eval_folder(workdir, "step_4", "test") == f"{workdir}/eval/step_4_test"


def test_the_flag_refuses_training_and_a_missing_model(setup):
    s = setup
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=without_device_count(os.environ.get("XLA_FLAGS", "")))
    base = [sys.executable, "-m", "mami_jax.main", f"--config={s['config_file']}",
            f"--workdir={s['tmp'] / 'w'}", f"--config.data.manifest={s['manifest']}"]
    for extra, message in (
            (["--mode=embed", "--model=/nowhere.pth"], "error: --model '/nowhere.pth': no re-ID"),
            (["--mode=eval", "--model=/nowhere.pth"], "error: --model '/nowhere.pth': no re-ID"),
            (["--mode=train", "--model=" + s["run"]], "error: --model is for --mode=eval")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, env=env,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith(message), \
            proc.stderr[-2000:]
    assert not os.path.exists(s["tmp"] / "w" / "eval")


def test_the_runs_own_split_is_that_of_the_config_that_trained_the_step(tmp_path):
    """A run trained to step 4 evaluating val, then resumed evaluating test: step 4's own
    report is the val one, read from ``config.until_step_4.json``."""
    import json
    workdir = str(tmp_path)
    (tmp_path / "config.until_step_4.json").write_text(json.dumps({"eval": {"split": "val"}}))
    (tmp_path / "config.json").write_text(json.dumps({"eval": {"split": "test"}}))
    assert run_checkpoint.eval_folder(workdir, "step_4", "val", 4) == f"{workdir}/eval/step_4"
    assert run_checkpoint.eval_folder(workdir, "step_8", "test", 8) == f"{workdir}/eval/step_8"
    assert (run_checkpoint.eval_folder(workdir, "step_4", "test", 4)
            == f"{workdir}/eval/step_4_test")
