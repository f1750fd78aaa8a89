"""Overrides in a renamed key's old spelling are refused with one line naming the new key,
through the real ``python -m mami_jax.main`` flag parsing, before any work starts."""

import os
import subprocess
import sys

import pytest

from mami_jax import config_renames
from tests import config_dump

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(tmp_path, *overrides):
    workdir = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "mami_jax.main", "--config=configs/all.py:runlocal",
         f"--workdir={workdir}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    return proc, workdir


@pytest.mark.parametrize("overrides, line", [
    (["--config.data.eval_batch_size=64"],
     "error: config key data.eval_batch_size was renamed: use eval.batch_size"),
    (["--config.data.modality_image_sizes", "{'pathology': (80, 128)}"],
     "error: config key data.modality_image_sizes was renamed: use data.modalities.<m>.image_size "
     "and data.modalities.<m>.resize_size"),
    (["-config.modalities=('xray',)"],
     "error: config key modalities was renamed: use data.only_modalities"),
    (["--config.train.total_steps=4", "--config.loss.align_weight=0.1"],
     "error: config key loss.align_weight was removed: nothing read it (the alignment weight is loss.terms.align)"),
])
def test_old_spelling_fails_with_one_line_naming_the_new_key(tmp_path, overrides, line):
    proc, workdir = _main(tmp_path, *overrides)
    assert proc.returncode == 2      # a usage error, as a misspelt key is
    assert proc.stderr == line + "\n"
    assert not workdir.exists()   # refused before any work


def test_misspelt_key_is_still_an_error(tmp_path):
    proc, workdir = _main(tmp_path, "--config.data.modalities.xray.flipp=True")
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1] == (
        "error: --config.data.modalities.xray.flipp: configs/all.py:runlocal has no "
        "key 'data.modalities.xray.flipp'"), proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("flags, line", [
    (["--config=configs/nowhere.py"], "error: --config configs/nowhere.py: no such file"),
    (["--config=configs/all.py:runlocl"],
     "error: flag --config=configs/all.py:runlocl: ValueError: unknown config "
     "argument(s) ['runlocl']; known: runlocal, align, teachers, finetune"),
    (["--config.train.total_steps=abc"],
     "error: flag --config.train.total_steps=abc: invalid literal for int() with base 10: 'abc'"),
])
def test_bad_flags_are_one_error_line(tmp_path, flags, line):
    """absl would print a FATAL block with the config file's traceback, or a traceback."""
    proc, workdir = _main(tmp_path, *flags)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == line, proc.stderr
    assert "Traceback" not in proc.stderr and not workdir.exists()


def test_overridden_keys_reads_every_absl_spelling():
    argv = ["--config=configs/all.py", "--config.a.b=1", "-config.c", "2", "--noconfig.d.e",
            "--workdir=x", "--configs.f=1", "--", "--config.g=1"]
    assert config_renames.overridden_keys(argv) == ["a.b", "c", "d.e"]


def test_new_keys_and_keys_under_them_are_not_mistaken_for_old_ones():
    for key in ("data.modalities.xray.image_size", "data.only_modalities", "eval.batch_size",
                "data.image_size_x", "loss.terms.id"):
        assert config_renames.renamed_key_message(key) is None, key
    assert config_renames.renamed_key_message("data.modality_image_sizes.pathology") == (
        "config key data.modality_image_sizes was renamed: use data.modalities.<m>.image_size "
        "and data.modalities.<m>.resize_size")


def test_every_new_key_exists_and_no_old_key_does():
    cfg = config_dump.load_config("all", "")
    flat = config_dump._flat(cfg.to_dict())
    for old in list(config_renames.RENAMED) + list(config_renames.REMOVED):
        assert not any(k == old or k.startswith(old + ".") for k in flat), old
    for new in config_renames.RENAMED.values():
        for key in new.replace(" and ", " ").split(" ")[:2]:
            if "." in key:
                key = key.replace("<m>", "ct")
                assert key in flat or any(k.startswith(key + ".") for k in flat), key
