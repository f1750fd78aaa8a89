"""A run's logged scalars read back from its TensorBoard files, exactly as written."""

import os
import time

import numpy as np
import pytest

from mami_jax.runtime.metric_writer import MetricWriter
from mami_jax.train.logged_scalars import read_scalars


def _write(logdir, points):
    writer = MetricWriter(logdir)
    for step, scalars in points:
        writer.write_scalars(step, scalars)
    writer.close()


def test_scalars_come_back_per_tag_sorted_by_step(tmp_path):
    tb = os.path.join(tmp_path, "tb")
    _write(tb, [(10, {"train/loss": 2.5, "train/align": 0.75}), (20, {"train/loss": 1.25}),
                (5, {"eval/x/rank1": 0.5, "train/nan": float("nan")})])
    for path in (str(tmp_path), tb):   # a workdir or its tb/ folder
        got = read_scalars(path)
        assert sorted(got) == ["eval/x/rank1", "train/align", "train/loss"]  # NaN not logged
        steps, values = got["train/loss"]
        assert steps.tolist() == [10, 20] and values.tolist() == [2.5, 1.25]
        assert got["train/align"][1].tolist() == [0.75]


def test_a_step_logged_again_keeps_the_last_value(tmp_path):
    _write(str(tmp_path), [(1, {"train/loss": 3.0}), (2, {"train/loss": 2.0})])
    first = sorted(os.listdir(tmp_path))[0]
    # a resumed run writes a second file, whose name (seconds since the epoch) sorts after
    time.sleep(1.1)
    _write(str(tmp_path), [(2, {"train/loss": 1.5}), (3, {"train/loss": 1.0})])
    assert len(os.listdir(tmp_path)) == 2 and sorted(os.listdir(tmp_path))[0] == first
    steps, values = read_scalars(str(tmp_path))["train/loss"]
    assert steps.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(values, [3.0, 1.5, 1.0])


def test_missing_or_damaged_files_are_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_scalars(os.path.join(tmp_path, "nope"))
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(str(tmp_path))
    _write(str(tmp_path), [(1, {"train/loss": 3.0})])
    (name,) = os.listdir(tmp_path)
    path = os.path.join(tmp_path, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-3])
    with pytest.raises(ValueError, match=f"{name}: record 1 .*truncated"):
        read_scalars(str(tmp_path))


def test_the_log_line_holds_the_training_scalars_and_an_evaluation_logs_none(tmp_path,
                                                                             monkeypatch):
    """An evaluation's scalars logged an empty ``step 3: `` line (its table is printed).
    absl's log calls are taken as made: where absl's handler sits depends on the tests run
    before in the same process."""
    from mami_jax.runtime import metric_writer
    lines = []
    monkeypatch.setattr(metric_writer.logging, "info", lambda fmt, *a: lines.append(fmt % a))
    _write(str(tmp_path), [(3, {"train/loss": 2.5, "eval/x/rank1": 0.5}),
                           (3, {"eval/x/rank1": 0.5, "eval/x/mAP": 0.25})])
    assert lines == ["step 3: train/loss=2.5"]


def test_an_event_file_that_cannot_be_written_is_one_warning_and_the_run_goes_on(
        tmp_path, monkeypatch):
    """A full disk: tensorboardX's SummaryWriter printed a traceback from its writer thread
    and another from its exit hook after the run's own error line. The events are written
    in the caller's thread now: one warning, then nothing more is written."""
    import errno
    import threading
    from mami_jax.runtime import metric_writer

    threads = threading.active_count()
    writer = MetricWriter(str(tmp_path))
    assert threading.active_count() == threads          # no writer thread to fail on its own
    writer.write_scalars(1, {"train/loss": 3.0})
    said, logged = [], []
    monkeypatch.setattr(metric_writer.logging, "warning", lambda *a: said.append(a[0] % a[1:]))
    monkeypatch.setattr(metric_writer.logging, "info", lambda *a: logged.append(a[0] % a[1:]))

    def full():
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer._events, "flush", full)
    for step in (2, 3):
        writer.write_scalars(step, {"train/loss": 1.0})
    writer.close()
    assert said == [f"TensorBoard scalars are no longer written to {tmp_path}: "
                    "[Errno 28] No space left on device"]
    assert logged == ["step 2: train/loss=1", "step 3: train/loss=1"]   # the log goes on
    assert read_scalars(str(tmp_path))["train/loss"][0].tolist()[0] == 1
