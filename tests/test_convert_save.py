"""save_params never loses a checkpoint, cleans up after killed saves, and writes umask modes."""

import contextlib
import fcntl
import os
import stat

import numpy as np
import pytest

from mami_jax.convert import to_torch_state_dict, torch_io
from mami_jax.convert.checkpoint_dir import LOCK_FILE, load_params, save_params
from mami_jax.runtime.atomic_files import TEMP_MARK, aside_path, staging_dir
from tests.test_convert_io import assert_same_params
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config


def small():
    cfg = tiny_config(use_compa=False, use_slice_adapter=False, depth=1)
    return cfg, random_params(cfg), random_params(cfg, seed=1)


def test_failed_final_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg, old, new = small()
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, old, cfg)
    real_rename = os.rename

    def failing_rename(src, dst, *args, **kwargs):
        if os.fspath(dst) == ckpt and TEMP_MARK in os.path.basename(os.fspath(src)):
            raise OSError("simulated failure publishing the new checkpoint")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", failing_rename)
    monkeypatch.setattr(os, "replace", failing_rename)
    with pytest.raises(OSError, match="simulated failure"):
        save_params(ckpt, new, cfg, overwrite=True)
    monkeypatch.undo()
    got, _ = load_params(ckpt)
    assert_same_params(got, old)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]   # no staging or set-aside copy left
    save_params(ckpt, new, cfg, overwrite=True)        # and a later save succeeds
    assert_same_params(load_params(ckpt)[0], new)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert sorted(os.listdir(ckpt)) == ["model_config.json", "params"]


def test_a_link_to_a_checkpoint_is_replaced_through(tmp_path):
    """A link counts as the folder it points to: its target gets the new weights and the
    link stays. The link itself was renamed aside and a new folder put in its place, so
    the target kept the old weights, a '.current.mami-replaced' link stayed behind, and
    the next overwrite failed with a bare '[Errno 20] Not a directory'."""
    cfg, old, new = small()
    target = tmp_path / "models" / "v1"
    save_params(str(target), old, cfg)
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    assert save_params(str(link), new, cfg, overwrite=True) == os.path.realpath(target)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert_same_params(load_params(str(target))[0], new)
    assert sorted(os.listdir(tmp_path)) == ["current", "models"]
    assert sorted(os.listdir(tmp_path / "models")) == ["v1"]
    save_params(str(link), old, cfg, overwrite=True)      # and again
    assert_same_params(load_params(str(link))[0], old)
    assert sorted(os.listdir(tmp_path)) == ["current", "models"]
    assert sorted(os.listdir(tmp_path / "models")) == ["v1"]


def test_overwrite_refuses_a_directory_that_is_not_a_converter_checkpoint(tmp_path):
    cfg, params, _ = small()
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError) as err:
        save_params(str(precious), params, cfg, overwrite=True)
    assert str(precious) in str(err.value) and "not a converter checkpoint" in str(err.value)
    assert (precious / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a converter checkpoint"):
        save_params(str(afile), params, cfg, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "results"]


def test_killed_saves_are_removed_at_the_next_save_but_running_ones_are_not(tmp_path):
    cfg, params, _ = small()
    # A killed save: a staging folder with a lock file that nobody holds.
    with staging_dir(str(tmp_path / "a")) as killed:
        open(os.path.join(killed, LOCK_FILE), "w").close()
        os.makedirs(os.path.join(killed, "params", "d"))
    # A save still running elsewhere: its lock is held.
    with staging_dir(str(tmp_path / "b")) as running:
        fd = os.open(os.path.join(running, LOCK_FILE), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
    # Another writer's temporary (no lock file): not ours to remove.
    other = tmp_path / f".metrics.json{TEMP_MARK}abc"
    other.write_text("{}")
    try:
        save_params(str(tmp_path / "c"), params, cfg)
        names = sorted(os.listdir(tmp_path))
        assert os.path.basename(killed) not in names
        assert os.path.basename(running) in names and other.name in names
        assert "c" in names and not os.path.exists(tmp_path / "c" / LOCK_FILE)
    finally:
        os.close(fd)


def test_interrupted_replacement_is_finished_at_the_next_save(tmp_path):
    cfg, old, new = small()
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, old, cfg)
    aside = aside_path(ckpt)
    # Killed after the old checkpoint was set aside, before the new one arrived.
    os.rename(ckpt, aside)
    save_params(str(tmp_path / "other"), new, cfg)     # another target: not touched
    assert os.path.isdir(aside) and not os.path.exists(ckpt)
    with pytest.raises(FileExistsError):               # the old one is back in place first
        save_params(ckpt, new, cfg)
    assert not os.path.exists(aside)
    assert_same_params(load_params(ckpt)[0], old)
    # Killed after the new one arrived, before the old one was deleted: the copy goes.
    save_params(aside, old, cfg)
    save_params(ckpt, new, cfg, overwrite=True)
    assert not os.path.exists(aside)
    assert_same_params(load_params(ckpt)[0], new)


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root):
    out = {}
    for here, dirs, files in os.walk(root):
        out[os.path.relpath(here, root)] = stat.S_IMODE(os.stat(here).st_mode)
        for f in files:
            path = os.path.join(here, f)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return out


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                     (0o002, 0o664, 0o775)])
def test_checkpoints_and_exports_get_the_umask_modes(tmp_path, mask, file_mode, dir_mode):
    cfg, params, new = small()
    with umask(mask):
        ckpt = str(tmp_path / "ckpt")
        save_params(ckpt, params, cfg)
        save_params(ckpt, new, cfg, overwrite=True)
        found = modes(ckpt)
        assert found["."] == dir_mode and found["model_config.json"] == file_mode
        assert found["params"] == dir_mode
        assert len(found) > 4   # orbax's files and folders are covered too
        for rel, mode in found.items():
            is_dir = os.path.isdir(os.path.join(ckpt, rel))
            assert mode == (dir_mode if is_dir else file_mode), (rel, oct(mode))
        state = to_torch_state_dict(params, cfg)
        for name in ("w.pth", "w.safetensors"):
            path = str(tmp_path / "exports" / name)
            torch_io.save_state_dict(path, state)
            assert stat.S_IMODE(os.stat(path).st_mode) == file_mode, name
    np.testing.assert_array_equal(load_params(ckpt)[0]["head_fc1"]["bias"],
                                  new["head_fc1"]["bias"])
