"""benchmarks/accelerator_check.sh: its steps are chosen by STEPS, their logs land in OUT
(relative to where it is called from), a failing step fails the script, and an OUT that
cannot be made is one error line. The GPU steps themselves run only on a GPU lease."""

import os
import subprocess

from tests.test_train import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "accelerator_check.sh")


def _run(tmp_path, out, steps, python="python"):
    env = dict(os.environ, STEPS=steps, PYTHON=python)
    return subprocess.run(["bash", SCRIPT, out], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_chosen_step_logs_into_a_relative_out(tmp_path):
    proc = _run(tmp_path, "results", "input", python="false")    # a step that fails at once
    assert proc.returncode == 1, proc.stderr
    out = tmp_path / "results"
    assert sorted(os.listdir(out)) == ["env.log", "input.log"]
    assert "=== input: status 1 after" in proc.stdout
    assert "=== parity" not in proc.stdout and "=== mfu" not in proc.stdout


def test_no_steps_only_describes_the_machine(tmp_path):
    proc = _run(tmp_path, "results", "")
    assert proc.returncode == 0, proc.stderr
    assert "jax " in (tmp_path / "results" / "env.log").read_text()


def test_an_out_that_cannot_be_made_is_one_error_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = _run(tmp_path, "file/results", "")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: cannot make output folder file/results"]
