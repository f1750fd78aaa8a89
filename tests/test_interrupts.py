"""Ctrl-C in every command is one ``interrupted`` line on stderr and exit status 130 (the
shell's 128 + SIGINT), saying what running the same command again does where it goes on
from what was finished; never a KeyboardInterrupt traceback.

The long part of each command is replaced by one that raises KeyboardInterrupt, as the
SIGINT handler does wherever the main thread is; tests/test_train.py sends a real SIGINT
to a training run, tests/test_history_resume.py and tests/test_privacy_cli.py interrupt the
commands that go on where they stopped."""

import importlib
import subprocess
import sys

import pytest

from mami_jax.runtime.interrupts import INTERRUPTED


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
def test_a_swallowed_ctrl_c_is_raised_again_in_the_main_thread(installed):
    """Without the hook the interpreter reports the KeyboardInterrupt as "Exception ignored"
    and the command runs on (evaluate.features ran to the end after Ctrl-C)."""
    install = ("from mami_jax.runtime.interrupts import redeliver_swallowed_interrupts\n"
               "redeliver_swallowed_interrupts()") if installed else ""
    proc = subprocess.run([sys.executable, "-c", FINALISER_RAISES.format(install=install)],
                          capture_output=True, text=True, timeout=120)
    if installed:
        assert proc.stdout.strip() == "interrupted" and "ignored" not in proc.stderr
    else:
        assert proc.stdout.strip() == "ran on" and "Exception ignored" in proc.stderr


def test_run_command_ends_an_interrupted_process_with_status_130():
    code = ("from mami_jax.runtime.interrupts import run_command\n"
            "def main():\n    raise KeyboardInterrupt\n"
            "run_command(main)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == INTERRUPTED and proc.stderr.strip() == "interrupted"


def test_an_extraction_with_finished_shards_says_they_are_kept(monkeypatch, capsys, tmp_path):
    import teachers.extract as extract
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "features-00000-of-00002.json").write_text("{}")
    monkeypatch.setattr(extract, "run", _interrupt)
    assert extract.main(["--manifest", str(tmp_path / "m.csv"), "--teachers", "phantoms",
                         "--out", str(tmp_path / "t")]) == INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "interrupted; the finished shards are kept: run the same command again to go on")
