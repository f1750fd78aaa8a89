"""Gradient clipping that takes the norm the train step already computed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mami_jax.train.optim import clip_by_global_norm


def _grads():
    return {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.full(4, 3.0)}}


def test_same_state_and_updates_as_optax_with_and_without_a_given_norm():
    grads = _grads()                       # global norm sqrt(55 + 36) = 9.54
    ours, ref = clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)
    assert ours.init(grads) == ref.init(grads)
    expected, _ = ref.update(grads, ref.init(grads))
    for given in (None, optax.global_norm(grads)):
        got, _ = ours.update(grads, ours.init(grads), grad_norm=given)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(optax.global_norm(expected), 2.0, rtol=1e-6)


def test_a_given_norm_is_the_one_used_and_passes_through_chain_and_multi_transform():
    grads = _grads()
    inner = optax.multi_transform({"sgd": optax.sgd(1.0)}, {"a": "sgd", "b": {"c": "sgd"}})
    tx = optax.chain(clip_by_global_norm(1.0), inner)
    updates, _ = tx.update(grads, tx.init(grads), grads, grad_norm=jnp.float32(4.0))
    # scaled by max_norm / given norm = 1/4 (not 1/9.54), then sgd's -1
    np.testing.assert_allclose(updates["a"], -np.arange(6.0).reshape(2, 3) / 4)
    unclipped, _ = tx.update(grads, tx.init(grads), grads, grad_norm=jnp.float32(0.5))
    np.testing.assert_allclose(unclipped["b"]["c"], -np.full(4, 3.0))
