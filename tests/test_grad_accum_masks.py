"""Gradient accumulation with masked images: each term's microbatch values are weighted by
the items they are means over, so the accumulated loss and gradient are the batch's.

Before, the microbatch means were averaged equally: 16 images of which 10 valid, with
the 6 skipped ones in the first of two microbatches, gave the plain mean of a mean over
2 images and one over 8 (loss 2.112 instead of 2.084, gradient off by 93 %).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mami_jax.train import losses
from mami_jax.train.objective import make_loss_fn
from mami_jax.train.step import loss_and_grads
from tests import test_align
from tests.test_train import _setup, tiny_config

SKIP_FIRST_SIX = np.array([False] * 6 + [True] * 10)   # 2 valid in microbatch 1, 8 in 2


def _model(terms, neck="none"):
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.loss.terms = terms
        cfg.loss.id_neck = neck
        cfg.data.patients_per_batch, cfg.data.images_per_patient = 8, 2
    model, _, init_state, rng = _setup(cfg, num_classes=8)
    params = init_state(rng).params
    # Move off the initialisation so that the low-rank paths carry gradient.
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape), params)
    return make_loss_fn(model, cfg.loss), params


def _batch(mask):
    rng = np.random.default_rng(0)
    return {"images": rng.normal(size=(16, 1, 32, 32, 3)).astype(np.float32),
            "label": np.repeat(np.arange(8), 2).astype(np.int32),
            "mask": mask}


def _run(loss_fn, params, batch, accum_steps):
    return jax.jit(lambda p, b: loss_and_grads(loss_fn, p, b, accum_steps))(params, batch)


def _halves(batch):
    return [jax.tree_util.tree_map(lambda x: x[s], batch) for s in (slice(0, 8), slice(8, 16))]


def _assert_same_grads(got, want, rtol=1e-4):
    diff = optax.tree.norm(jax.tree_util.tree_map(jnp.subtract, got, want))
    assert float(diff) <= rtol * float(optax.tree.norm(want)), float(diff)


def test_uneven_masks_give_the_whole_batch_loss_and_gradient():
    loss_fn, params = _model({"id": 1.0, "triplet": 0.0})
    batch = _batch(SKIP_FIRST_SIX)
    loss1, logs1, grads1 = _run(loss_fn, params, batch, 1)
    loss2, logs2, grads2 = _run(loss_fn, params, batch, 2)
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-5)
    for key in ("id", "id_weighted", "total"):
        np.testing.assert_allclose(float(logs2[key]), float(logs1[key]), rtol=1e-5)
    _assert_same_grads(grads2, grads1)


def test_all_valid_still_gives_the_whole_batch_loss_and_gradient():
    loss_fn, params = _model({"id": 1.0, "triplet": 0.0})
    batch = _batch(np.ones(16, bool))
    loss1, _, grads1 = _run(loss_fn, params, batch, 1)
    loss4, _, grads4 = _run(loss_fn, params, batch, 4)
    np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-5)
    _assert_same_grads(grads4, grads1)


def test_triplet_is_weighted_by_its_anchors():
    """Mining stays within a microbatch (its values are not the whole batch's), but the
    microbatch values are averaged over anchors: the first half's 2 valid images are one
    patient's (no negative: no anchor), the second half's 8 are all anchors."""
    loss_fn, params = _model({"id": 1.0, "triplet": 1.0}, neck="batch_standardize")
    batch = _batch(SKIP_FIRST_SIX)
    _, logs, _ = _run(loss_fn, params, batch, 2)
    parts = [_run(loss_fn, params, h, 1)[1] for h in _halves(batch)]
    anchors, images = [0.0, 8.0], [2.0, 8.0]
    for key, weights in (("triplet", anchors), ("id", images)):
        want = sum(w * float(p[key]) for w, p in zip(weights, parts)) / sum(weights)
        np.testing.assert_allclose(float(logs[key]), want, rtol=1e-5)
    np.testing.assert_allclose(float(logs["total"]), float(logs["id"]) + float(logs["triplet"]),
                               rtol=1e-5)
    assert [float(losses.triplet_anchors(h["label"], h["mask"]).sum())
            for h in _halves(batch)] == anchors


def test_a_microbatch_without_valid_images_contributes_nothing():
    loss_fn, params = _model({"id": 1.0, "triplet": 1.0}, neck="batch_standardize")
    batch = _batch(np.array([False] * 8 + [True] * 8))
    loss, logs, grads = _run(loss_fn, params, batch, 2)
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree_util.tree_leaves((loss, logs, grads)))
    loss_b, _, grads_b = _run(loss_fn, params, _halves(batch)[1], 1)
    np.testing.assert_allclose(float(loss), float(loss_b), rtol=1e-5)
    _assert_same_grads(grads, grads_b)


def test_align_is_weighted_by_its_pairs_and_an_empty_microbatch_stays_finite():
    """The "difference" variant's anchors are the pairs of valid images with the teacher:
    microbatch 1 keeps 3 images (3 pairs a teacher), microbatch 2 all 4 (6 pairs)."""
    cfg = test_align._config({"align": 1.0})
    model, _, state = test_align._state(cfg)
    loss_fn = make_loss_fn(model, cfg.loss)
    batch = test_align._fields(test_align._batch())
    batch["mask"] = np.array([False, True, True, True, True, True, True, True])
    batch["teacher_mask"] = {name: np.ones(8, bool) for name in batch["teacher_mask"]}
    _, logs, _ = _run(loss_fn, state.params, batch, 2)
    halves = [jax.tree_util.tree_map(lambda x: x[s], batch) for s in (slice(0, 4), slice(4, 8))]
    parts = [float(_run(loss_fn, state.params, h, 1)[1]["align"]) for h in halves]
    np.testing.assert_allclose(float(logs["align"]), (3 * parts[0] + 6 * parts[1]) / 9,
                               rtol=1e-5)
    batch["mask"] = np.array([False] * 4 + [True] * 4)
    out = _run(loss_fn, state.params, batch, 2)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out))
    np.testing.assert_allclose(float(out[1]["align"]), parts[1], rtol=1e-5)
