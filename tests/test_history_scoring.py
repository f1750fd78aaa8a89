"""``scoring.paired_gain``: a history condition's AUC gain over current-only with a
95 % interval from a paired bootstrap over patients."""

import numpy as np
import pytest

from mami_jax.apps.history.scoring import paired_gain


def test_paired_gain_by_hand_and_its_interval():
    y = np.asarray([0, 1, 0, 1])
    base = np.asarray([[0.4, 0.6], [0.6, 0.4], [0.7, 0.3], [0.3, 0.7]])   # AUC 3/4
    perfect = np.asarray([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.8]])
    g = paired_gain(base, perfect, y, ["a", "b", "c", "d"], samples=200)
    assert g["auc_gain"] == pytest.approx(0.25)
    # the perfect classifier is never worse on any resample
    assert g["ci95"][0] >= 0.0 and g["ci95"][1] <= 1.0 and 0 < g["samples"] <= 200
    same = paired_gain(base, base.copy(), y, ["a", "b", "c", "d"], samples=50)
    assert same["auc_gain"] == 0.0 and same["ci95"] == [0.0, 0.0]
    # a patient's images are resampled together: two patients, each one of each class,
    # so every resample has both classes and none is skipped
    both = paired_gain(base, perfect, y, ["p", "p", "q", "q"], samples=100)
    assert both["samples"] == 100
    assert paired_gain(base, perfect, np.zeros(4, int), list("abcd")) is None


def test_many_queries_give_a_narrow_interval_around_a_real_gain():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    weak = y + rng.normal(0, 1.5, 2000)
    strong = y + rng.normal(0, 0.7, 2000)
    to_probs = lambda s: np.stack([-s, s], 1)
    g = paired_gain(to_probs(weak), to_probs(strong), y, [f"p{i // 4}" for i in range(2000)],
                    samples=200)
    assert g["auc_gain"] > 0.1 and g["ci95"][0] > 0.05 and g["ci95"][1] - g["ci95"][0] < 0.1
