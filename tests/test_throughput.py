"""The training speed logged beside the losses (``mami_jax.train.throughput``), on a clock
the test sets: the rates are over the steps between logged steps, never over the first
interval (it holds the compilation) nor one that held an evaluation."""

import pytest

from mami_jax.train.throughput import Throughput


def test_rates_are_over_the_steps_between_logged_steps():
    now = [100.0]
    speed = Throughput(global_batch_size=64, devices=8, clock=lambda: now[0])
    assert speed.at(50) == {"images_seen": 3200.0}          # compiled in this interval
    now[0] += 20.0                                           # 50 steps of 64 in 20 s
    got = speed.at(100)
    assert got == pytest.approx({"images_seen": 6400.0, "images_per_second": 160.0,
                                 "images_per_second_per_device": 20.0, "step_seconds": 0.4})
    now[0] += 4.0                                            # the last step, 10 after
    assert speed.at(110)["images_per_second"] == pytest.approx(160.0)
    speed.restart()                                          # an evaluation ran
    now[0] += 300.0
    assert speed.at(150) == {"images_seen": 9600.0}
    now[0] += 10.0
    assert speed.at(200)["step_seconds"] == pytest.approx(0.2)


def test_a_resumed_run_counts_images_from_step_zero():
    speed = Throughput(global_batch_size=32, devices=1, clock=lambda: 0.0)
    assert speed.at(1000) == {"images_seen": 32000.0}
    assert "images_per_second" not in speed.at(1050)         # no time passed: no rate
