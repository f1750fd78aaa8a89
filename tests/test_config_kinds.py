"""A config file of the wrong kind is refused in one line that says which kind it is.

Three kinds of config (the experiment's, the history application's, the privacy
application's) are read by flags whose names overlap: ``--config`` is the experiment in
``mami_jax.main`` and ``history``, the privacy settings in ``privacy``. Before, each
command took any config file and failed at its first missing key with an
``AttributeError: "'cues'"`` (or ``'data'``, ``'classes'``, ``'compilation_cache_dir'``)
traceback.
"""

import os
import subprocess
import sys

import pytest

from mami_jax.apps.history.__main__ import main as history
from mami_jax.apps.privacy.__main__ import main as privacy
from mami_jax.config_files import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = {"experiment": "configs/all.py:runlocal", "history": "configs/history.py",
         "privacy": "configs/privacy.py"}
NAMES = {"experiment": "an experiment config", "history": "a history app config",
         "privacy": "a privacy app config"}


@pytest.mark.parametrize("kind", sorted(FILES))
@pytest.mark.parametrize("given", sorted(FILES))
def test_each_kind_is_told_from_the_others(kind, given):
    if kind == given:
        assert load_config(FILES[given], kind=kind) is not None
        return
    with pytest.raises(ValueError) as e:
        load_config(FILES[given], kind=kind)
    assert str(e.value).startswith(f"config {FILES[given]}: not {NAMES[kind]} (it has no ")
    assert f"; it is {NAMES[given]}, which python -m " in str(e.value)


@pytest.fixture
def paths(tmp_path):
    from PIL import Image
    (tmp_path / "run").mkdir()
    for i in range(2):
        Image.new("L", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text("image_id,patient_id,study_id,order,modality,dataset,"
                                    "view,path,split\n" + "".join(
                                        f"i{i},p{i},s{i},{i},xray,d,,{i}.png,test\n"
                                        for i in range(2)))
    return tmp_path


@pytest.mark.parametrize("command,argv,kind,given", [
    (privacy, ["cues", "--config", FILES["experiment"]], "privacy", "experiment"),
    (privacy, ["protect", "--config", FILES["history"]], "privacy", "history"),
    (history, ["index", "--config", FILES["privacy"]], "experiment", "privacy"),
    (history, ["train", "--app-config", FILES["experiment"]], "history", "experiment"),
    (privacy, ["protect", "--experiment", FILES["privacy"]], "experiment", "privacy"),
    (history, ["index", "--experiment", FILES["history"]], "experiment", "history"),
])
def test_the_applications_refuse_it_before_anything_is_written(paths, capsys, command, argv,
                                                               kind, given):
    out = paths / "out"
    code = command([*argv, "--workdir", str(paths / "run"), "--manifest", str(paths / "m.csv"),
                    "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and len(err) == 1, err
    assert err[0].startswith("error: ") and f"not {NAMES[kind]}" in err[0]
    assert f"it is {NAMES[given]}" in err[0] and not out.exists()


def test_the_main_job_refuses_it_before_the_workdir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mami_jax.main", "--config=configs/privacy.py",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: configs/privacy.py: not an experiment config (it has no model, data, train, "
        "eval); it is a privacy app config, which python -m mami_jax.apps.privacy --config "
        "reads")
    assert not (tmp_path / "run").exists()
