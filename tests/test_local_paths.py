"""A URL (``gs://bucket/...``) where a path is expected (``mami_jax.runtime.local_paths``).

``--workdir=gs://bucket/run``, as big_vision takes it on a Cloud TPU VM, became the local
folder ``./gs:/bucket/run``: the run trained and left its checkpoints on the VM's disk.
Every command's output flags did the same (the phantoms, cue maps, protected images, a
history archive, an export); a URL input was "no such file", with nothing on why.
"""

import importlib
import os
import subprocess
import sys

import pytest

from mami_jax.data.manifest import read_manifest
from mami_jax.runtime.atomic_files import make_dirs
from mami_jax.runtime.local_paths import MOUNT_IT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_refuses_a_bucket_workdir_before_writing_anything(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mami_jax.main",
                           f"--config={REPO}/configs/all.py:runlocal",
                           "--workdir=gs://bucket/run"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --workdir gs://bucket/run: a URL, not a folder; {MOUNT_IT}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module, argv", [
    ("mami_jax.phantoms.__main__", ["--out", "gs://b/ph"]),
    ("mami_jax.phantoms.__main__", ["--preview", "gs://b/p.png"]),
    ("mami_jax.data.build_manifest", ["--dataset", "folders", "--modality", "xray", "--root",
                                      ".", "--out", "gs://b/m.csv"]),
    ("mami_jax.apps.privacy.__main__", ["cues", "--workdir", "run", "--manifest", "m.csv",
                                        "--out", "s3://b/cues"]),
    ("mami_jax.apps.history.__main__", ["index", "--workdir", "run", "--manifest", "m.csv",
                                        "--out", "gs://b/idx"]),
    ("mami_jax.apps.history.__main__", ["query", "--index", "i", "--image", "x.png",
                                        "--png", "gs://b/q.png"]),
    ("mami_jax.convert.__main__", ["export-torch", "--checkpoint", "run", "--out",
                                   "gs://b/m.pth"]),
])
def test_every_output_flag_refuses_a_url_and_writes_nothing(module, argv, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    flag = next(a for a in argv if a in ("--out", "--preview", "--png"))
    url = argv[argv.index(flag) + 1]
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f": {flag} {url}: a URL, not a local path; "
                                             f"{MOUNT_IT} (see --help)"), err
    assert os.listdir(tmp_path) == []


def test_a_folder_made_for_a_url_is_refused_and_a_url_input_says_why_it_is_missing(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^folder gs://b/x: a URL, not a folder; mami_jax "):
        make_dirs("gs://b/x")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError) as e:
        read_manifest("gs://b/manifest.csv")
    assert str(e.value) == f"manifest gs://b/manifest.csv: no such file (a URL: {MOUNT_IT})"
