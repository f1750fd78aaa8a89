"""One writer per output folder (``mami_jax.runtime.folder_lock``).

A training run started again while the first still ran resumed beside it: at its start it
removed the first run's checkpoint save in progress as "unfinished", and the two wrote the
same steps' checkpoints and metric logs.
"""

import json
import os
import subprocess
import sys

import pytest

from mami_jax.runtime import folder_lock
from mami_jax.runtime.folder_lock import LOCK_FILE, FolderInUseError
from tests.history_workdir import write_config, write_xray_archive
from tests.test_main_errors import main, only_error_line

HOLD = ("import sys, time\n"
        "from mami_jax.runtime import folder_lock\n"
        "with folder_lock.held(sys.argv[1], 'the folder', 'holder'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """A process holding ``tmp_path / "w"`` until the test ends (then killed)."""
    folder = tmp_path / "w"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "--some-flag"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_a_held_folder_is_refused_naming_its_holder_and_free_once_it_ends(holder):
    folder, proc = holder
    info = json.loads((folder / LOCK_FILE).read_text())
    assert info["pid"] == proc.pid and info["command"].endswith(f"{folder} --some-flag")
    with pytest.raises(FolderInUseError) as e:
        with folder_lock.held(str(folder), f"--out {folder}", "protection"):
            pass
    assert str(e.value) == (
        f"--out {folder} is in use by another protection (process {proc.pid} on "
        f"{info['host']}, started {info['started']}: {info['command']}); two at once "
        "overwrite each other's files: wait for it to end, or stop it, then run this again")
    proc.kill()                          # killed, not ended well: the lock goes with it
    proc.wait()
    with folder_lock.held(str(folder), "f", "w"):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    with folder_lock.held(str(folder), "f", "w"):   # and this one released it on leaving
        pass


def test_the_processes_of_a_multi_host_run_but_the_first_take_nothing(holder):
    folder, _ = holder
    with folder_lock.held(str(folder), "f", "w", take=False):
        pass


def test_a_second_training_run_in_a_workdir_in_use_is_one_error_line(holder, tmp_path):
    folder, proc = holder
    (folder / "keep.txt").write_text("the first run's")
    config = write_config(str(tmp_path))
    manifest = write_xray_archive(str(tmp_path / "xr"), {"P0": "train", "P1": "train",
                                                         "P2": "test"})
    before = sorted(os.walk(folder))
    run = main(f"--workdir={folder}", f"--config={config}", f"--config.data.manifest={manifest}",
               "--config.train.total_steps=1")
    assert run.returncode == 1
    line = only_error_line(run)
    assert line.startswith(f"error: --workdir {folder} is in use by another training run "
                           f"(process {proc.pid} on "), line
    assert sorted(os.walk(folder)) == before


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """Some network mounts answer flock with ENOLCK: refusing every run there would stop
    the user; the command goes on and says what is not guarded."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level("WARNING"):
        with folder_lock.held(str(tmp_path), f"--workdir {tmp_path}", "training run"):
            ran.append(True)
    assert ran == [True]
    assert (f"--workdir {tmp_path}: cannot be locked (No locks available): nothing stops a "
            "second training run from writing into it at the same time") in caplog.text


HOLD_PARENT = ("import sys, time\n"
               "from mami_jax.runtime import folder_lock\n"
               "with folder_lock.held(sys.argv[1], 'the folder', 'holder', in_file=False):\n"
               "    print('held', flush=True)\n"
               "    time.sleep(120)\n")


def test_a_second_history_add_to_an_archive_is_refused_while_one_runs(tmp_path, capsys):
    """Two adds each saved the archive they had read plus their own rows: the last save
    lost the other's rows. A save replaces the archive folder whole, so the lock is on its
    parent, and nothing is written there."""
    from mami_jax.apps.history.__main__ import main as history
    index = tmp_path / "archive"
    index.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD_PARENT, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        status = history(["add", "--index", str(index), "--manifest", str(tmp_path / "m.csv")])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0 and err == [
        f"error: --index {index} is in use by another history add (or a command adding to an "
        "archive in the same folder); two at once overwrite each other's files: wait for it "
        "to end, or stop it, then run this again"]
    assert sorted(os.listdir(tmp_path)) == ["archive"] and os.listdir(index) == []
