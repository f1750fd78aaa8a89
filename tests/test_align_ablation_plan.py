"""``benchmarks/align_ablation.py``'s plan: the documented ablation of 14 runs failed at its
fifth, the first ``efficientnet`` run, because every arm shared one feature store that the
first alignment run had filled with ``anatomy`` alone; and a weight sweep (``--align-weight``
0.01, then 1.0) reused the first weight's finished runs under the second's label."""

from __future__ import annotations

import importlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ablation():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        return importlib.import_module("align_ablation")
    finally:
        sys.path.pop(0)


def _flag(cmd, name):
    [value] = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--config.{name}=")]
    return value


def test_each_teacher_set_has_its_own_store_and_each_weight_its_own_runs(tmp_path, capsys):
    ablation = _ablation()
    out = str(tmp_path / "abl")
    stores, workdirs = {}, {}
    for weight in (None, 0.01, 1.0):
        argv = ["--out", out, "--steps", "3", "--seeds", "0", "--dry-run"]
        if weight is not None:
            argv += ["--align-weight", str(weight)]
        assert ablation.main(argv) == 0
        for line in capsys.readouterr().out.splitlines():
            cmd = line.split()
            arm_run = _flag(cmd, "data.teacher_features.dir") if any(
                a.startswith("--config.data.teacher_features.dir=") for a in cmd) else ""
            workdir = [a.split("=", 1)[1] for a in cmd if a.startswith("--workdir=")][0]
            words = [a for a in cmd if a.startswith("--config=")][0]
            stores.setdefault(words, set()).add(arm_run)
            workdirs[(weight, workdir)] = cmd
    teachers = os.path.join(out, "teachers")
    assert stores == {
        "--config=configs/all.py:runlocal": {""},
        "--config=configs/all.py:runlocal,align=anatomy": {os.path.join(teachers, "anatomy")},
        "--config=configs/all.py:runlocal,align=efficientnet_lite0":
            {os.path.join(teachers, "efficientnet_lite0")},
        "--config=configs/all.py:runlocal,align=anatomy+efficientnet_lite0":
            {os.path.join(teachers, "anatomy+efficientnet_lite0")}}
    names = {}
    for (weight, workdir) in workdirs:
        names.setdefault(os.path.basename(workdir), set()).add(weight)
    assert names["none-s0"] == {None, 0.01, 1.0}        # no alignment: one run for all
    assert names["difference-anatomy-s0"] == {None}
    assert names["difference-anatomy-w0.01-s0"] == {0.01}
    assert names["difference-anatomy-w1-s0"] == {1.0}
    assert len(names) == 1 + 6 * 3


def test_a_given_store_serves_every_arm(tmp_path, capsys):
    ablation = _ablation()
    store = str(tmp_path / "all_teachers")
    assert ablation.main(["--out", str(tmp_path / "abl"), "--steps", "3", "--seeds", "0",
                          "--teachers-dir", store, "--dry-run"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    used = {_flag(cmd, "data.teacher_features.dir") for cmd in lines
            if any(a.startswith("--config.data.teacher_features.dir=") for a in cmd)}
    assert used == {store}
