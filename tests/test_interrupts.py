"""Ctrl-C in every command is one ``interrupted`` line on stderr and exit status 130 (the
shell's 128 + SIGINT), saying what running the same command again does where it goes on
from what was finished; never a KeyboardInterrupt traceback.

The long part of each command is replaced by one that raises KeyboardInterrupt, as the
SIGINT handler does wherever the main thread is; tests/test_train.py sends a real SIGINT
to a training run, tests/test_history_resume.py and tests/test_privacy_cli.py interrupt the
commands that go on where they stopped."""

import importlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.process_groups import group_is_gone, kill_group

from mami_jax.runtime.interrupts import INTERRUPTED, TERMINATED


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


# command's module -> (module.attribute its long part is, argv, the line)
CASES = {
    "mami_jax.phantoms.__main__": ("mami_jax.phantoms.__main__._run",
                                   ["--out", "{tmp}/ph"], "interrupted"),
    "mami_jax.data.build_manifest": ("mami_jax.data.build_manifest.build",
                                     ["--dataset", "odir", "--root", "{tmp}", "--out",
                                      "{tmp}/m.csv"], "interrupted"),
    "mami_jax.evaluate.features": ("mami_jax.data.loading.load_rows",
                                   ["--features", "{tmp}/f", "--manifest", "{tmp}/m.csv",
                                    "--out", "{tmp}/o"], "interrupted"),
    "teachers.extract": ("teachers.extract.run",
                         ["--manifest", "{tmp}/m.csv", "--teachers", "phantoms", "--out",
                          "{tmp}/t"], "interrupted"),      # no shard finished: nothing kept
    "mami_jax.convert.__main__": ("mami_jax.convert.__main__.cmd_export_torch",
                                  ["export-torch", "--checkpoint", "{tmp}/c", "--out",
                                   "{tmp}/m.pth"], "interrupted"),
    "mami_jax.apps.history.__main__": ("mami_jax.apps.history.commands.query",
                                       ["query", "--index", "{tmp}/i", "--image",
                                        "{tmp}/x.png"], "interrupted"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ctrl_c_is_one_line_and_status_130(name, monkeypatch, capsys, tmp_path):
    patched, argv, line = CASES[name]
    module, _, attribute = patched.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), attribute, _interrupt)
    main = importlib.import_module(name).main
    assert main([a.format(tmp=tmp_path) for a in argv]) == INTERRUPTED
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == line, err



FINALISER_RAISES = """
import time
{install}
class Finaliser:
    def __del__(self):
        raise KeyboardInterrupt     # as SIGINT does inside JAX's garbage-collection hook
try:
    Finaliser()
    for _ in range(200):
        time.sleep(0.01)
    print("ran on")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("installed", [True, False])
@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "Terminated"])
def test_a_swallowed_ctrl_c_is_raised_again_in_the_main_thread(installed, raised):
    """Without the hook the interpreter reports the KeyboardInterrupt as "Exception ignored"
    and the command runs on (evaluate.features ran to the end after Ctrl-C); a SIGTERM's
    comes back as a SIGTERM's, so the command says it was stopped by one."""
    install = ("from mami_jax.runtime.interrupts import redeliver_swallowed_interrupts, "
               "stop_on_sigterm_like_ctrl_c, Terminated\n"
               "redeliver_swallowed_interrupts()\nstop_on_sigterm_like_ctrl_c()"
               if installed else "Terminated = KeyboardInterrupt")
    script = FINALISER_RAISES.format(install=install).replace(
        "raise KeyboardInterrupt     #", f"raise {raised}     #").replace(
        'print("interrupted")', 'print("interrupted", type(sys.exc_info()[1]).__name__)')
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + script],
                          capture_output=True, text=True, timeout=120)
    if installed:
        assert proc.stdout.strip() == f"interrupted {raised}" and "ignored" not in proc.stderr
    else:
        assert proc.stdout.strip() == "ran on" and "Exception ignored" in proc.stderr


def test_run_command_ends_an_interrupted_process_with_status_130():
    code = ("from mami_jax.runtime.interrupts import run_command\n"
            "def main():\n    raise KeyboardInterrupt\n"
            "run_command(main)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == INTERRUPTED and proc.stderr.strip() == "interrupted"


SLEEPS = """
import time
from mami_jax.runtime.interrupts import run_command
def main():
    print("ready", flush=True)
    time.sleep(60)
    return 0
run_command(main)
"""


def test_run_command_ends_a_process_given_sigterm_with_one_line_and_status_143():
    """``kill PID``: the default action ended the command where it was, without a word."""
    proc = subprocess.Popen([sys.executable, "-c", SLEEPS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == TERMINATED and err.strip() == "stopped by SIGTERM", err


def _staging_folders(folder):
    return [name for name in os.listdir(folder) if name.startswith(".")]


@pytest.mark.parametrize("to", ["parent", "group"])
def test_sigterm_stops_the_phantom_generator_and_its_renderer_processes(tmp_path, to):
    """``kill PID`` ended the generator and left its renderer processes running as orphans,
    holding the caller's pipes (a ``communicate`` waited for ever); SIGTERM to the whole
    group (Slurm, systemd) left the staging folder and the queues' semaphores behind. Now
    it is one line, status 143, and nothing is left: no process, no folder."""
    out = tmp_path / "phantoms"
    proc = subprocess.Popen([sys.executable, "-m", "mami_jax.phantoms", "--out", str(out),
                             "--patients", "40", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _staging_folders(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)                 # the renderers have started
        assert _staging_folders(tmp_path) and proc.poll() is None
        time.sleep(1.0)                     # and are rendering
        (os.killpg if to == "group" else os.kill)(proc.pid, signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
        gone = group_is_gone(proc.pid)
    finally:
        proc.kill()
        kill_group(proc.pid)
    assert proc.returncode == TERMINATED, err
    assert err.strip().splitlines()[-1] == "stopped by SIGTERM", err
    assert "Traceback" not in err and "leaked" not in err, err
    assert gone, "a renderer process outlived the command"
    assert os.listdir(tmp_path) == [], "the staging folder was left behind"


def test_an_extraction_with_finished_shards_says_they_are_kept(monkeypatch, capsys, tmp_path):
    import teachers.extract as extract
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "features-00000-of-00002.json").write_text("{}")
    monkeypatch.setattr(extract, "run", _interrupt)
    assert extract.main(["--manifest", str(tmp_path / "m.csv"), "--teachers", "phantoms",
                         "--out", str(tmp_path / "t")]) == INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted; the finished shards are kept: run the same command again to go on")
