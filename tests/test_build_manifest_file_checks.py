"""``build_manifest`` checks a dataset's files together, with a bar when that takes long
(``file_questions``, which the trainer's look for missing images uses too).

Before: every file was checked as its metadata row was read, one after another and without
a word, so a bucket mounted with gcsfuse (tens of milliseconds a check) kept the command
silent for hours on MIMIC-CXR's 377,000 images; the trainer's look asked in threads but
without a word. The checks here wait on a file system made slow by hand (a sleep, which
like a real check lets other threads run).
"""

import threading
import time

import pytest

from mami_jax.data import build_manifest
from mami_jax.data import file_questions
from mami_jax.data.datasets import common, nih_chestxray14

HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
ROWS = 300


@pytest.fixture
def root(tmp_path):
    """ChestX-ray14 metadata of ROWS images of which the even ones are on disk."""
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(ROWS):
        name = f"{i + 1:08d}_000.png"
        lines.append(f"{name},No Finding,0,{i + 1},40,F,PA\n")
        if i % 2 == 0:
            (root / "images" / name).write_bytes(b"")
    (root / "Data_Entry_2017.csv").write_text(HEADER + "".join(lines))
    return root


class SlowDisk:
    """``common.is_present`` with a wait per check; counts the checks in flight."""

    def __init__(self, wait: float, interrupt_at: int | None = None):
        self.wait, self.interrupt_at = wait, interrupt_at
        self.lock = threading.Lock()
        self.calls = self.in_flight = self.most_in_flight = 0

    def __call__(self, path, folder):
        with self.lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            stop = self.calls == self.interrupt_at
        try:
            time.sleep(self.wait)
            if stop:
                raise KeyboardInterrupt
            return self.real(path, folder)
        finally:
            with self.lock:
                self.in_flight -= 1

    real = staticmethod(common.is_present)


def test_checks_overlap_and_give_what_one_by_one_gives(root, monkeypatch):
    disk = SlowDisk(wait=0.005)
    monkeypatch.setattr(common, "is_present", disk)
    result = nih_chestxray14.build(str(root))
    assert disk.calls == ROWS and disk.most_in_flight > 1
    assert [r.image_id for r in result.rows] == [
        f"nih_chestxray14:{i + 1:08d}_000" for i in range(0, ROWS, 2)]
    assert result.missing_files == ROWS // 2
    assert result.skipped == [(f"Data_Entry_2017.csv:{i + 2}", "file not found")
                              for i in range(1, ROWS, 2)]    # in the metadata's order
    assert len(result.labels) == ROWS // 2


def test_a_slow_check_shows_a_bar_and_a_quick_one_nothing(root, tmp_path, monkeypatch, capsys):
    for name in ("quick", "slow"):
        (tmp_path / name).mkdir()
    assert build_manifest.main(["--dataset", "nih_chestxray14", "--root", str(root),
                                "--out", str(tmp_path / "quick" / "manifest.csv")]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(common, "is_present", SlowDisk(wait=0.001))
    monkeypatch.setattr(file_questions, "BAR_DELAY", 0.0)
    monkeypatch.setattr(common, "BAR_DELAY", 0.0)
    assert build_manifest.main(["--dataset", "nih_chestxray14", "--root", str(root),
                                "--out", str(tmp_path / "slow" / "manifest.csv")]) == 0
    captured = capsys.readouterr()
    assert f"reading nih_chestxray14: {ROWS}entry [" in captured.err
    assert f"{ROWS}/{ROWS}" in captured.err
    assert f"files missing: {ROWS // 2}" in captured.out


def test_ctrl_c_drops_the_checks_not_started(tmp_path, monkeypatch):
    disk = SlowDisk(wait=0.001, interrupt_at=2 * file_questions.CHUNK + 10)   # among the threads
    candidates = [(str(tmp_path / f"{i}.png"), False) for i in range(400 * file_questions.CHUNK)]
    with pytest.raises(KeyboardInterrupt):
        file_questions.ask_each(candidates, lambda c: disk(*c), "checking")
    time.sleep(0.2)        # the chunks already running finish
    assert disk.calls < len(candidates) // 4


def test_a_fast_file_system_is_asked_in_order_without_threads(monkeypatch):
    monkeypatch.setattr(file_questions, "SLOW_SECONDS", 1.0)   # no pause on a busy machine counts
    asked = []
    answers = file_questions.ask_each(list(range(1000)), lambda i: asked.append(i) or i % 3 == 0,
                                    "checking")
    assert answers == [i % 3 == 0 for i in range(1000)] and asked == list(range(1000))
