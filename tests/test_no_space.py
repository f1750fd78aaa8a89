"""A full disk while saving a checkpoint is one line saying where, how much is free and
which step a rerun goes on from.

The audit's case: a training run whose workdir's file system filled up ended in some 400
lines of orbax and asyncio tracebacks, one per writer thread, with its ``error:`` line
(tensorstore's "RESOURCE_EXHAUSTED: Error writing ... in OCDBT database") in the middle
and nothing said about space.
"""

import errno
import gc
import logging
import os
import re
import subprocess
import sys
import uuid
import warnings

import pytest

from mami_jax.runtime.no_space import NoSpaceError, free_space, is_no_space
from mami_jax.runtime.orbax_noise import _FullDiskSaveReports, _SiblingFailures
from mami_jax.train.checkpointing import Checkpointer
from tests.history_workdir import write_config, write_xray_archive
from tests.one_device import without_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: What tensorstore raises for an OCDBT write onto a full file system.
TENSORSTORE_FULL = ('RESOURCE_EXHAUSTED: Error writing "block_0.ln_1.bias/0" in OCDBT database '
                    'at local file "/w/checkpoints/3.orbax-checkpoint-tmp/params/": Failed '
                    'writing: "/w/checkpoints/3.orbax-checkpoint-tmp/params/d/ab": Failed to '
                    'write 2040920 bytes to file 8')


def test_a_full_disk_is_recognised_in_either_form_and_through_a_chain():
    assert is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_no_space(ValueError(TENSORSTORE_FULL))
    try:
        try:
            raise ValueError(TENSORSTORE_FULL)
        except ValueError as inner:
            raise RuntimeError("Save Finalize thread failed") from inner
    except RuntimeError as outer:
        assert is_no_space(outer)
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_no_space(ValueError("RESOURCE_EXHAUSTED: out of memory allocating 2 GiB"))
    assert not is_no_space(None)


def test_free_space_is_read_from_the_nearest_existing_folder(tmp_path):
    text = free_space(str(tmp_path / "not" / "yet"))
    number, unit, word = text.split()
    assert float(number) > 0 and unit in ("bytes", "KiB", "MiB", "GiB", "TiB") and word == "free"


@pytest.mark.parametrize("finished, goes_on", [
    ((), "it starts over, as no checkpoint is finished"),
    ((4, 12), "it goes on from step 12, the last finished checkpoint"),
])
def test_a_save_that_finds_no_space_names_the_step_a_rerun_goes_on_from(tmp_path, finished,
                                                                        goes_on):
    ckpt = Checkpointer(str(tmp_path), keep=2)
    try:
        for step in finished:
            os.makedirs(os.path.join(ckpt.directory, str(step)))
        os.makedirs(os.path.join(ckpt.directory, "13.orbax-checkpoint-tmp"))

        def full():
            raise ValueError(TENSORSTORE_FULL)
        ckpt.manager.wait_until_finished = full
        with pytest.raises(NoSpaceError) as e:
            ckpt.wait()
        assert str(e.value) == (
            f"no space left on the device of {ckpt.directory} while saving a checkpoint "
            f"({free_space(ckpt.directory)}); free space there (train.keep_checkpoints=2 keeps "
            f"that many steps) and run the same command again: {goes_on}")

        def broken():
            raise ValueError("RESOURCE_EXHAUSTED: something else")
        ckpt.manager.wait_until_finished = broken
        with pytest.raises(ValueError, match="^RESOURCE_EXHAUSTED: something else$"):
            ckpt.wait()
    finally:
        del ckpt.manager.wait_until_finished
        ckpt.close()


async def _writer():
    """Stands for one of orbax's writer coroutines."""


def test_after_a_save_that_found_no_space_unawaited_writers_are_not_reported(tmp_path):
    """Seen in CI: "RuntimeWarning: coroutine ... was never awaited" / "Enable tracemalloc
    ..." after the one error line, when orbax's abandoned writers were collected."""
    ckpt = Checkpointer(str(tmp_path))
    try:
        def full():
            raise ValueError(TENSORSTORE_FULL)
        ckpt.manager.wait_until_finished = full
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(NoSpaceError):
                ckpt.wait()
            writer = _writer()
            del writer
            gc.collect()
        assert not [w for w in seen if "never awaited" in str(w.message)]
    finally:
        del ckpt.manager.wait_until_finished
        ckpt.close()


def _record(name, message, exc=None, path="/site-packages/orbax/checkpoint/_src/future.py"):
    return logging.LogRecord(name, logging.ERROR, path.replace("/", os.sep), 1, message, None,
                             (type(exc), exc, None) if exc else None)


def test_orbax_and_asyncio_reports_of_the_failed_save_are_dropped_and_no_other():
    orbax, loop = _FullDiskSaveReports(), _SiblingFailures()
    full = ValueError(TENSORSTORE_FULL)
    assert not orbax.filter(_record("absl", "_SignalingThread.run() raised an exception: "
                                    + TENSORSTORE_FULL, full))
    assert not orbax.filter(_record("absl", "Save Finalize thread (save_finalize) failed.", full))
    assert not orbax.filter(_record("absl", "_SignalingThread.run() raised an exception: cannot "
                                    "schedule new futures after shutdown"))
    assert not loop.filter(_record("asyncio", "_GatheringFuture exception was never retrieved",
                                   full))
    # another failure of orbax's, the same failure reported by our own code, a bug elsewhere
    assert orbax.filter(_record("absl", "Save Finalize thread failed.", ValueError("a bug")))
    assert orbax.filter(_record("absl", "saving: " + TENSORSTORE_FULL, full,
                                path="/work/mami_jax/train/trainer.py"))
    assert loop.filter(_record("asyncio", "Task exception was never retrieved", ValueError("x")))


def fill(disk, leave: int):
    """Fills ``disk`` up to ``leave`` bytes; -> the filler file."""
    st = os.statvfs(disk)
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB file system of its own (tmpfs; needs the right to mount, as root in CI's
    container), unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small file system here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_training_onto_a_full_disk_ends_in_one_line_and_goes_on_after_space_is_freed(
        small_disk, tmp_path):
    splits = {f"P{i}": s for i, s in enumerate(["train"] * 3 + ["test"] * 2)}
    manifest = write_xray_archive(str(tmp_path / "xr"), splits)
    config = write_config(str(tmp_path))
    workdir = small_disk / "run"
    command = [sys.executable, "-m", "mami_jax.main", f"--config={config}",
               f"--workdir={workdir}", f"--config.data.manifest={manifest}",
               "--config.train.eval_at_start=False", "--config.train.eval_at_end=False",
               "--config.train.total_steps=2", "--config.train.checkpoint_every=1",
               "--config.init.clip_checkpoint=", "--config.init.require_pretrained=False"]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=without_device_count(os.environ.get("XLA_FLAGS", "")))
    filler = fill(small_disk, 256 * 1024)           # room for the config, not for a step
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "RESOURCE_EXHAUSTED" not in proc.stderr, \
        proc.stderr[-3000:]
    last = proc.stderr.splitlines()[-1]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error")] == [last]
    assert last.startswith(f"error: no space left on the device of {workdir}/checkpoints while "
                           "saving a checkpoint (")
    assert last.endswith("free); free space there (train.keep_checkpoints=3 keeps that many "
                         "steps) and run the same command again: it starts over, as no "
                         "checkpoint is finished")

    filler.unlink()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removed the unfinished checkpoint save" in proc.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]


def test_embeddings_onto_a_full_disk_end_in_one_line(small_disk, tmp_path):
    """``--mode=embed`` writes its chunks and the embeddings file under the workdir: an
    OSError of no space there was a traceback."""
    from mami_jax.config_files import load_config
    from tests.history_workdir import make_workdir
    splits = {f"P{i}": s for i, s in enumerate(["train"] * 3 + ["test"] * 2)}
    manifest = write_xray_archive(str(tmp_path / "xr"), splits)
    config_file = write_config(str(tmp_path))
    workdir = make_workdir(str(small_disk / "run"), load_config(config_file))
    fill(small_disk, 0)
    proc = subprocess.run([sys.executable, "-m", "mami_jax.main", f"--config={config_file}",
                           f"--workdir={workdir}", f"--config.data.manifest={manifest}",
                           "--mode=embed"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu",
                                   XLA_FLAGS=without_device_count(os.environ.get("XLA_FLAGS", ""))),
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"error: no space left on the device of {workdir}"), last
    assert last.endswith("free); free space there and run the same command again"), last


def test_a_command_writing_onto_a_full_disk_says_where_and_what_to_do(small_disk):
    """Every command but training said a full disk as the OS's ``[Errno 28] No space left on
    device`` (``error_line``): no folder, no free space, no remedy."""
    fill(small_disk, 16 * 1024)
    out = small_disk / "phantoms"
    proc = subprocess.run([sys.executable, "-m", "mami_jax.phantoms", "--out", str(out),
                           "--patients", "4", "--image-size", "32", "--slices", "2",
                           "--workers", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.splitlines()[-1]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error")] == [last]
    assert last.startswith(f"error: no space left on the device of {out} while writing "), last
    assert last.endswith(" free); free space there and run the same command again"), last
    assert os.listdir(small_disk) == [next(small_disk.glob("filler-*")).name]   # no half-written


def test_an_error_line_is_one_line_with_a_full_disk_said_as_such(tmp_path):
    from mami_jax.runtime.error_line import error_line
    assert error_line(ValueError("bad rows:\n  line 3: x\n  line 9: y\nsee --help")) == \
        "bad rows: line 3: x, line 9: y; see --help"
    assert error_line(KeyError("no such teacher 'x'")) == "no such teacher 'x'"
    assert error_line(RuntimeError()) == "RuntimeError"
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "a.png"))
    head, free, tail = re.fullmatch(r"(.*) \((.*)\); (.*)", error_line(full)).groups()
    assert head == f"no space left on the device of {tmp_path / 'out'} while writing " \
                   f"{tmp_path / 'out' / 'a.png'}"
    assert free.endswith(" free") and tail == "free space there and run the same command again"
    nameless = OSError(errno.ENOSPC, "No space left on device")
    assert error_line(nameless, where=str(tmp_path)).startswith(
        f"no space left on the device of {tmp_path} while writing its output (")
    assert error_line(nameless) == "[Errno 28] No space left on device"   # nowhere to name


def test_a_kept_chunk_is_written_with_one_write_that_names_a_full_disk(tmp_path, monkeypatch):
    """np.save to a file ends in tofile, whose short write on a full disk is an OSError
    without errno ('8192 requested and 6112 written'): a traceback where the no-space
    line belonged. The chunk goes through one write to a file opened here, whose error
    on a full disk is ENOSPC."""
    import numpy as np

    from mami_jax.runtime import chunk_store

    class FullDisk:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    store = chunk_store.ChunkStore(str(tmp_path / "kept"), "key")
    store.put(0, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(store.get(0, 2), np.arange(6.0).reshape(2, 3))
    monkeypatch.setattr(chunk_store, "open", FullDisk, raising=False)
    with pytest.raises(OSError) as e:
        store.put(1, np.arange(6.0).reshape(2, 3))
    assert is_no_space(e.value)
