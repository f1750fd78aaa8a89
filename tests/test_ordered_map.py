"""``runtime.ordered_map``: results in order, a bounded number in flight, an error at its
item's turn, and leaving early cancels what has not started."""

import threading
import time

import pytest

from mami_jax.runtime.ordered_map import ordered_map


class Work:
    def __init__(self, wait=0.0, fail_at=None):
        self.wait, self.fail_at = wait, fail_at
        self.lock = threading.Lock()
        self.started = []

    def __call__(self, i):
        with self.lock:
            self.started.append(i)
        time.sleep(self.wait * ((i * 7) % 3))      # later items often finish first
        if i == self.fail_at:
            raise ValueError(f"item {i}")
        return i * i


def test_results_come_in_order():
    assert list(ordered_map(Work(0.002), range(50), threads=4)) == [i * i for i in range(50)]


def test_no_more_than_ahead_items_are_started_before_they_are_taken():
    work = Work()
    results = ordered_map(work, range(1000), threads=3, ahead=5)
    taken = [next(results) for _ in range(10)]
    time.sleep(0.1)
    assert taken == [i * i for i in range(10)]
    assert len(work.started) <= 10 + 5
    results.close()


def test_an_error_is_raised_at_its_items_turn_and_stops_the_rest():
    work = Work(0.001, fail_at=20)
    got = []
    with pytest.raises(ValueError, match="item 20"):
        for r in ordered_map(work, range(10_000), threads=4, ahead=8):
            got.append(r)
    assert got == [i * i for i in range(20)]
    time.sleep(0.1)
    assert len(work.started) <= 20 + 8 + 4
