"""The diagnosis classifiers: with no history the history model is exactly the
current-only classifier; trained, its history term uses the history."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mami_jax.apps.history import training
from mami_jax.apps.history.diagnosis import CurrentOnly, WithHistory

CFG = ml_collections.ConfigDict(dict(hidden=16, attention_dim=8, steps=150, fused_steps=150,
                                     learning_rate=1e-2, weight_decay=1e-4,
                                     history_dropout=0.25, seed=0))


def _perturbed(params, seed):
    return jax.tree_util.tree_map(
        lambda x: x + 0.5 * jax.random.normal(jax.random.key(seed), x.shape), params)


def test_no_history_equals_current_only_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10)).astype(np.float32)
    h = rng.normal(size=(6, 3, 10)).astype(np.float32)
    h_nan = h.copy()
    h_nan[0, 0] = np.nan   # masked out: never read
    s = rng.uniform(size=(6, 3)).astype(np.float32)
    model = WithHistory(16, 3, 8)
    params = _perturbed(model.init(jax.random.key(0), x, h, s, np.ones((6, 3), bool))["params"], 1)
    none = np.zeros((6, 3), bool)
    fused = model.apply({"params": params}, x, h_nan, s, none)
    current = CurrentOnly(16, 3).apply({"params": params["current"]}, x)
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(current))
    # Zero-length history too.
    empty = model.apply({"params": params}, x, h[:, :0], s[:, :0], none[:, :0])
    np.testing.assert_array_equal(np.asarray(empty), np.asarray(current))
    # Not vacuous: with history (here rows 1..5) the output changes; a masked-out
    # history item does not matter at all.
    some = np.zeros((6, 3), bool)
    some[1:, :2] = True
    with_h = np.asarray(model.apply({"params": params}, x, h, s, some))
    assert np.all(np.abs(with_h[1:] - np.asarray(current)[1:]).max(1) > 1e-4)
    np.testing.assert_array_equal(with_h[0], np.asarray(current)[0])
    h2 = h.copy()
    h2[:, 2] = -h2[:, 2]
    np.testing.assert_array_equal(
        with_h, np.asarray(model.apply({"params": params}, x, h2, s, some)))


def test_zero_init_starts_as_current_only_even_with_history():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 10)).astype(np.float32)
    h = rng.normal(size=(5, 3, 10)).astype(np.float32)
    s = rng.uniform(size=(5, 3)).astype(np.float32)
    mask = np.ones((5, 3), bool)
    for zero, same in ((True, True), (False, False)):
        model = WithHistory(16, 3, 8, zero_init=zero)
        params = model.init(jax.random.key(0), x, h, s, mask)["params"]
        fused = np.asarray(model.apply({"params": params}, x, h, s, mask))
        current = np.asarray(CurrentOnly(16, 3).apply({"params": params["current"]}, x))
        assert np.array_equal(fused, current) == same


def test_history_model_learns_what_only_history_shows():
    # The label is a feature of the previous image; the current image shows it weakly.
    rng = np.random.default_rng(0)
    n, d = 400, 6
    y = rng.integers(0, 2, n)
    prev = rng.normal(size=(n, 1, d)).astype(np.float32)
    prev[:, 0, 0] += 3.0 * (2 * y - 1)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 1] += 0.3 * (2 * y - 1)
    hist = training.Histories(prev, np.ones((n, 1), np.float32), np.ones((n, 1), bool))
    current = training.train_current(x[:300], y[:300], 2, CFG)
    fused = training.train_fused(current, x[:300], hist.take(slice(0, 300)), y[:300], 2, CFG)
    # The current branch is frozen: it is the trained current-only classifier.
    for a, b in zip(jax.tree_util.tree_leaves(fused["current"]),
                    jax.tree_util.tree_leaves(current)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    test = slice(300, n)
    acc_current = np.mean(training.predict_current(current, x[test], 2, CFG).argmax(1) == y[test])
    acc_fused = np.mean(training.predict_fused(fused, x[test], hist.take(test), 2, CFG)
                        .argmax(1) == y[test])
    assert acc_fused > 0.9 > acc_current + 0.1
    none = training.Histories(prev[test], np.zeros((100, 1), np.float32),
                              np.zeros((100, 1), bool))
    np.testing.assert_array_equal(training.predict_fused(fused, x[test], none, 2, CFG),
                                  training.predict_current(current, x[test], 2, CFG))


def test_history_model_reads_the_archives_records_of_the_history():
    # The label persists from the previous visit, whose *recorded* diagnosis says it while
    # neither image shows it: only the records carry it. Without records the history term
    # has nothing to read; with them it does; with no history it is still current-only.
    rng = np.random.default_rng(2)
    n, d = 400, 6
    y = rng.integers(0, 2, n)
    prev = rng.normal(size=(n, 1, d)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    records = np.eye(2, dtype=np.float32)[y][:, None, :]
    hist = training.Histories(prev, np.ones((n, 1), np.float32), np.ones((n, 1), bool),
                              records=records)
    cfg = ml_collections.ConfigDict(dict(CFG.to_dict(), records=True))
    current = training.train_current(x[:300], y[:300], 2, CFG)
    test = slice(300, n)
    accuracy, fused = {}, {}
    for name, c in (("records", cfg), ("images", CFG)):
        fused[name] = training.train_fused(current, x[:300], hist.take(slice(0, 300)), y[:300],
                                           2, c)
        accuracy[name] = np.mean(training.predict_fused(fused[name], x[test], hist.take(test),
                                                        2, c).argmax(1) == y[test])
    assert accuracy["records"] > 0.95 and accuracy["images"] < 0.7, accuracy
    none = training.Histories(prev[test], np.zeros((100, 1), np.float32),
                              np.zeros((100, 1), bool), records=records[test])
    np.testing.assert_array_equal(training.predict_fused(fused["records"], x[test], none, 2, cfg),
                                  training.predict_current(current, x[test], 2, CFG))
    # a model that reads records refuses a history without them
    without = training.Histories(prev[test], np.ones((100, 1), np.float32), np.ones((100, 1), bool))
    with pytest.raises(ValueError, match="diagnoses recorded for the history images"):
        training.predict_fused(fused["records"], x[test], without, 2, cfg)


def test_histories_gather_takes_and_concatenates_the_records():
    features = np.arange(8, dtype=np.float32).reshape(4, 2)
    records = np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]
    h = training.Histories.gather(features, [[2, 1], [], [3]], [[0.9, 0.5], [], [0.7]], 2,
                                  records=records)
    np.testing.assert_array_equal(h.records[0], records[[2, 1]])
    np.testing.assert_array_equal(h.records[1], 0)
    np.testing.assert_array_equal(h.records[2], [records[3], [0, 0]])
    both = training.Histories.concat([h, h.take([2])])
    assert both.records.shape == (4, 2, 2) and both.maps is None
    np.testing.assert_array_equal(both.records[3], h.records[2])


def test_classifiers_round_trip(tmp_path):
    x = jnp.ones((2, 4))
    params = CurrentOnly(8, 2).init(jax.random.key(0), x)["params"]
    payload = {"norm": {"mean": np.zeros(4, np.float32), "std": np.ones(4, np.float32)},
               "current": params, "fused": {"current": params}}
    path = training.save_classifiers(str(tmp_path / "c.msgpack"), payload)
    back = training.load_classifiers(path)
    np.testing.assert_array_equal(back["current"]["logits"]["kernel"],
                                  np.asarray(params["logits"]["kernel"]))
    assert np.asarray(back["norm"]["std"]).tolist() == [1.0] * 4
