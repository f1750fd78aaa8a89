"""Config files load from any working directory: the repository's configs import each
other as a package (``from configs import common_runlocal``), which failed with
ModuleNotFoundError when a command ran outside the repository."""

import os
import subprocess
import sys

import pytest

from mami_jax import config_files
from tests.one_device import without_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outside(tmp_path, args):
    """``args`` run from ``tmp_path`` with nothing of the repository on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=without_device_count(os.environ.get("XLA_FLAGS", "")))
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env,
                          cwd=str(tmp_path))


@pytest.mark.parametrize("config", [f"{REPO}/configs/all.py:runlocal", "configs/all.py:runlocal"])
def test_main_reads_a_config_from_another_folder(tmp_path, config):
    proc = _outside(tmp_path, ["-m", "mami_jax.main", f"--config={config}",
                               f"--workdir={tmp_path / 'w'}", "--mode=eval",
                               "--model=/nowhere.pth"])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    # the config loaded: the run went on to the model, which is missing
    assert proc.returncode == 1 and errors == [
        "error: --model '/nowhere.pth': no re-ID workdir, model file (.pth/.safetensors) or "
        "converter folder there"], proc.stderr[-2000:]


def test_the_apps_read_the_repository_configs_from_another_folder(tmp_path):
    code = ("from mami_jax.config_files import load_config;"
            "c = load_config('configs/privacy.py:runlocal');"
            "e = load_config(c.experiment);"
            "h = load_config('configs/history.py');"
            "print(c.experiment, e.model.patch_size, sorted(h)[0])")
    proc = _outside(tmp_path, ["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = config_files.load_config(config_files.load_config(
        "configs/privacy.py:runlocal").experiment).model.patch_size
    assert proc.stdout.split()[:2] == ["configs/all.py:runlocal", str(expected)]


def test_a_relative_path_is_looked_up_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_files.resolve("configs/all.py") == os.path.join(REPO, "configs", "all.py")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "all.py").write_text(
        "import ml_collections\n\ndef get_config(arg):\n"
        "    return ml_collections.ConfigDict({'arg': arg})\n")
    assert config_files.resolve("configs/all.py") == "configs/all.py"   # the folder's own first
    assert config_files.load_config("configs/all.py:x").arg == "x"
    with pytest.raises(FileNotFoundError, match="config file 'nowhere.py' not found"):
        config_files.load_config("nowhere.py")
    (tmp_path / "bare.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        config_files.load_config("bare.py")


def test_the_flag_value_is_found_in_either_spelling(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != REPO])
    monkeypatch.chdir(tmp_path)
    here = tmp_path / "configs"
    here.mkdir()
    (here / "a.py").write_text("")
    argv = ["--workdir=w", "--config=configs/a.py:x", "--config.seed=3"]
    assert config_files.flag_config_from_anywhere(argv) == argv    # found here: kept
    assert sys.path[-1] == str(tmp_path)
    repo_all = os.path.join(REPO, "configs", "all.py")
    assert config_files.flag_config_from_anywhere(["--config", "configs/all.py:runlocal"]) == [
        "--config", repo_all + ":runlocal"]                          # not here: the repository's
    assert sys.path[-1] == REPO
    assert config_files.flag_config_from_anywhere(["--config=nowhere.py"]) == ["--config=nowhere.py"]


@pytest.mark.parametrize("source, problem", [
    ("x = (\n", "line 1: '(' was never closed"),
    ("def get_config(arg=None):\n    raise RuntimeError('boom')\n", "line 2: RuntimeError: boom"),
    ("def get_config(arg=None):\n    return 5\n",
     "get_config() returned int, not an ml_collections.ConfigDict"),
    ("CONFIG = 1\n", None),
])
def test_a_config_file_that_cannot_be_loaded_is_named_with_its_line(tmp_path, source, problem):
    """The applications load config files with ``load_config``: a syntax error, a raise in
    the file's code and a get_config() that returns no ConfigDict were tracebacks (or, the
    last, an AttributeError at the first key read); each is one message naming the file."""
    path = tmp_path / "mine.py"
    path.write_text(source)
    with pytest.raises(ValueError) as e:
        config_files.load_config(str(path))
    expected = (f"config file '{path}': {problem}" if problem else
                f"config file '{path}' defines no get_config(arg)")
    assert str(e.value) == expected
