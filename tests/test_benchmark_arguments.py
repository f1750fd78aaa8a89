"""The benchmarks' arguments and child processes: a count or size out of range is a usage
error naming its flag (status 2) before any work, where it used to reach JAX or torch as
a traceback, or fail after every file had been generated; a failed child process ends
the parent with the child's own reason on one ``error:`` line, not a
``CalledProcessError`` traceback; eval_scale's "peak - base" is the evaluation's memory,
not the JAX runtime's start-up; accelerator_check.sh refuses a step it does not know."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys

import pytest

from mami_jax.runtime.error_line import exit_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(REPO, "benchmarks", "accelerator_check.sh")


@pytest.mark.parametrize("name,argv,flag", [
    ("malloc_speed", ["--size", "33"], "--size 33: not a multiple of 8, the patch size"),
    ("eval_scale", ["--chunk-size", "64", "0"], "--chunk-size"),
    ("eval_scale", ["--queries", "0"], "--queries"),
    ("eval_scale", ["--gallery", "-1"], "--gallery"),
    ("eval_scale", ["--dim", "0"], "--dim"),
    ("eval_scale", ["--patients", "0"], "--patients"),
    ("eval_scale", ["--studies", "0"], "--studies"),
    ("input_speed", ["--batches", "0"], "--batches"),
    ("input_speed", ["--repeats", "0"], "--repeats"),
    ("input_speed", ["--per-patient", "0"], "--per-patient"),
    ("input_speed", ["--depth", "0"], "--depth"),
    ("input_speed", ["--read-threads", "0"], "--read-threads"),
    ("input_speed", ["--model-batch", "-1"], "--model-batch"),
    ("input_speed", ["--workers", "x"], "--workers"),
    ("input_speed", ["--workers", "0,-2"], "--workers: expected a comma list of whole numbers"),
    ("input_speed", ["--workers", "0,,2"], "--workers"),
    ("input_speed", ["--workers", ","], "--workers"),
    ("speed_vs_torch", ["--series-slices", "-1"], "--series-slices"),
    ("speed_vs_torch", ["--size", "-4"], "--size"),
    ("speed_vs_torch", ["--threads", "-1"], "--threads"),
    ("mfu", ["--size", "-16"], "--size"),
    ("step_profile", ["--size", "-16"], "--size"),
    ("execution_parity", ["--size", "-16"], "--size"),
    ("model_speed", ["--size", "0"], "--size"),
])
def test_a_count_or_size_out_of_range_is_a_usage_line_before_any_work(name, argv, flag,
                                                                      monkeypatch, capsys):
    module = importlib.import_module(f"benchmarks.{name}")

    def work(*args, **kwargs):
        raise AssertionError("the work started")
    monkeypatch.setattr(module, "run", work)
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and flag in err[0], err


def test_zero_keeps_its_meaning_where_it_has_one():
    from benchmarks import speed_vs_torch

    args = speed_vs_torch.parse_args(["--size", "0", "--series-slices", "0", "--threads", "0"])
    assert (args.size, args.series_slices, args.threads) == (0, 0, 0)


def test_a_failed_child_is_the_childs_reason_on_one_line(capsys):
    from benchmarks import child_report as child_report_module

    cmd = [sys.executable, "-c", "import sys; print('a warning', file=sys.stderr); "
                                 "sys.exit('error: the reason')"]
    assert exit_status(lambda: child_report_module.child_report(cmd, "the x child")) == 1
    assert capsys.readouterr().err == "error: the x child failed (exit status 1): the reason\n"

    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(ChildProcessError, match=r"^the y child failed \(killed by SIGKILL\): "
                                                r"it printed nothing on stderr$"):
        child_report_module.child_report(killed, "the y child")


def test_malloc_speeds_failed_child_names_its_reason(capsys):
    from benchmarks import malloc_speed

    args = argparse.Namespace(size=33, steps=1)
    assert exit_status(lambda: malloc_speed.run_child("system", "", args)) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: the system child (--size 33 --steps 1) failed (exit status 2): "
        "malloc_speed.py: --size 33: not a multiple of 8, the patch size"), err


def test_eval_scales_failed_child_names_its_reason(capsys):
    from benchmarks import eval_scale

    args = argparse.Namespace(queries=[10], chunk_size=[0], gallery=10, dim=4, patients=2,
                              studies=1, metric="cosine", seed=0, repeats=1)
    assert exit_status(lambda: eval_scale.run(args)) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: the child of --queries 10 --chunk-size 0 failed (exit status 2): "
        "eval_scale.py: argument --chunk-size: expected a whole number >= 1, got 0"), err


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="the peak is reset through Linux's /proc/self/clear_refs")
def test_eval_scales_peak_is_the_evaluations_not_the_runtimes_start_up(capsys):
    """A tiny problem adds almost nothing; the JAX runtime's start-up (tens of MB) was
    counted in "peak - base" before the child warmed up and reset its peak."""
    from benchmarks import eval_scale

    assert eval_scale.main(["--queries", "200", "--gallery", "300", "--dim", "8",
                            "--patients", "20", "--chunk-size", "64"]) == 0
    out = capsys.readouterr().out
    row = json.loads(next(line for line in out.splitlines()
                          if line.startswith("# repeat 0: ")).split(": ", 1)[1])
    assert 0 <= row["peak_rss_mb"] - row["base_rss_mb"] < 20, row


def test_input_speed_writes_its_medians_to_json(tmp_path, monkeypatch, capsys):
    from benchmarks import input_speed

    rates = iter([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0])
    monkeypatch.setattr(input_speed, "make_xrays", lambda *a: [])
    monkeypatch.setattr(input_speed, "make_volumes", lambda *a: [])
    monkeypatch.setattr(input_speed, "measure", lambda rows, cfg, batches:
                        (next(rates), (64, 8, 224, 224, 3)))
    out = tmp_path / "speed.json"
    assert input_speed.main(["--repeats", "3", "--workers", "0,2", "--batches", "1",
                             "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["workers"] == [0, 2] and report["settings"]["repeats"] == 3
    assert report["model"] is None
    rows = {(r["workload"].split()[0], r["num_workers"]): r for r in report["results"]}
    assert sorted(rows) == [("volume", 0), ("volume", 2), ("xray", 0), ("xray", 2)]
    for row in rows.values():
        assert len(row["runs"]) == 3 and row["images_per_s"] == sorted(row["runs"])[1]
        assert row["slices_per_s"] == row["images_per_s"] * row["batch_shape"][1]
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["speed.json"]


def _check(tmp_path, steps, python):
    env = dict(os.environ, STEPS=steps, PYTHON=python)
    return subprocess.run(["bash", CHECK, "results"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("steps", ["bogus", "parity  inputs", "parity *"])
def test_accelerator_check_refuses_an_unknown_step_before_any_work(steps, tmp_path):
    proc = _check(tmp_path, steps, python="false")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    unknown = steps.split()[-1]
    assert proc.stderr.splitlines() == [f"error: STEPS: unknown step '{unknown}' "
                                        f"(known: parity mfu speed main input)"]
    assert proc.stdout == "" and os.listdir(tmp_path) == []


def test_accelerator_check_leaves_input_speeds_json_in_out(tmp_path):
    proc = _check(tmp_path, "input", python="echo")      # prints the command it was given
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "results" / "input.log").read_text()
    assert log.startswith("benchmarks/input_speed.py ") and \
        f"--json {tmp_path / 'results' / 'input_speed.json'}" in log, log
