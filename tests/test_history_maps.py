"""The history model's local-change input: token maps of a layer (their pooled last-block
map is the backbone feature), the per-position change pooled over positions, the
no-history equality with maps, and a history model that learns a change only the maps
show."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mami_jax.apps.history import training
from mami_jax.apps.history.diagnosis import CurrentOnly, WithHistory, local_change

CFG = ml_collections.ConfigDict(dict(hidden=16, attention_dim=8, map_dim=4, steps=150,
                                     fused_steps=200, learning_rate=1e-2, weight_decay=1e-4,
                                     history_dropout=0.0, seed=0))


def test_local_change_pools_the_per_position_difference():
    x_map = np.zeros((1, 3, 2), np.float32)
    x_map[0, 1] = [5.0, 1.0]                       # position 1 grew in channel 0
    hist = np.zeros((1, 2, 3, 2), np.float32)
    hist[0, 1, 2] = [0.0, 4.0]                     # history image 1 had more at position 2
    out = np.asarray(local_change(jnp.asarray(x_map), jnp.asarray(hist), lambda t: t))
    assert out.shape == (1, 2, 6)
    # [max increase per channel, max decrease per channel, mean change per channel]
    np.testing.assert_allclose(out[0, 0], [5.0, 1.0, 0.0, 0.0, 5 / 3, 1 / 3])
    np.testing.assert_allclose(out[0, 1], [5.0, 1.0, 0.0, 4.0, 5 / 3, -1.0])


def _inputs(seed=0, n=6, k=3, d=10, p=4, c=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, k, d)).astype(np.float32),
            rng.uniform(size=(n, k)).astype(np.float32), rng.normal(size=(n, p, c)).astype(np.float32),
            rng.normal(size=(n, k, p, c)).astype(np.float32))


def test_no_history_equals_current_only_with_maps():
    x, h, s, xm, hm = _inputs()
    model = WithHistory(16, 3, 8, map_dim=4)
    apply = jax.jit(model.apply)
    params = jax.jit(model.init)(jax.random.key(0), x, h, s, np.ones((6, 3), bool), xm,
                                 hm)["params"]
    noise = np.random.default_rng(1)
    params = jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.5 * noise.standard_normal(a.shape).astype(np.float32), params)
    assert params["map_proj"]["kernel"].shape == (5, 4)
    hm_nan = hm.copy()
    hm_nan[0, 0] = np.nan                          # masked out: never read
    none = np.zeros((6, 3), bool)
    current = np.asarray(jax.jit(CurrentOnly(16, 3).apply)({"params": params["current"]}, x))
    fused = np.asarray(apply({"params": params}, x, h, s, none, xm, hm_nan))
    np.testing.assert_array_equal(fused, current)
    some = np.zeros((6, 3), bool)
    some[1:, :2] = True
    with_h = np.asarray(apply({"params": params}, x, h, s, some, xm, hm))
    assert np.all(np.abs(with_h[1:] - current[1:]).max(1) > 1e-4)
    hm2 = hm.copy()
    hm2[:, 0, 1] += 3.0                            # the maps do reach the output
    assert np.abs(np.asarray(apply({"params": params}, x, h, s, some, xm, hm2))
                  - with_h).max() > 1e-4
    with pytest.raises(ValueError, match="map_dim=4: the history model needs the token maps"):
        apply({"params": params}, x, h, s, some)


def test_history_model_learns_a_local_change_only_the_maps_show():
    # Diseased = one position of channel 0 rose by 3 since the previous image, at a
    # random place: the pooled features and the current map alone do not show it.
    rng = np.random.default_rng(0)
    n, p, c, d = 400, 9, 3, 6
    y = rng.integers(0, 2, n)
    prev_map = rng.normal(size=(n, 1, p, c)).astype(np.float32)
    x_map = prev_map[:, 0] + 0.1 * rng.normal(size=(n, p, c)).astype(np.float32)
    where = rng.integers(0, p, n)
    x_map[np.arange(n), where, 0] += 3.0 * y
    x = rng.normal(size=(n, d)).astype(np.float32)
    hist = training.Histories(rng.normal(size=(n, 1, d)).astype(np.float32),
                              np.ones((n, 1), np.float32), np.ones((n, 1), bool), prev_map)
    train, test = slice(0, 300), slice(300, n)
    current = training.train_current(x[train], y[train], 2, CFG)
    fused = training.train_fused(current, x[train], hist.take(train), y[train], 2, CFG,
                                 x_map[train])
    acc_current = np.mean(training.predict_current(current, x[test], 2, CFG).argmax(1) == y[test])
    probs = training.predict_fused(fused, x[test], hist.take(test), 2, CFG, x_map[test])
    acc_fused = np.mean(probs.argmax(1) == y[test])
    assert acc_fused > 0.9 and acc_current < 0.65
    no_maps = ml_collections.ConfigDict(dict(CFG, map_dim=0))
    plain = training.train_fused(current, x[train], hist.take(train), y[train], 2, no_maps)
    acc_plain = np.mean(training.predict_fused(plain, x[test], hist.take(test), 2, no_maps)
                        .argmax(1) == y[test])
    assert acc_plain < 0.7    # the pooled history features alone do not carry it
    with pytest.raises(ValueError, match="map_dim=4: token maps of the images"):
        training.predict_fused(fused, x[test], hist.take(test), 2, CFG)


def test_map_standardizer_is_per_modality_and_channel():
    maps = np.zeros((4, 2, 2), np.float32)
    maps[:2, :, 0] = [[1.0, 3.0], [1.0, 3.0]]      # xray channel 0: mean 2, std 1
    maps[2:, :, 1] = 10.0                          # ct channel 1: constant
    mods = ["xray", "xray", "ct", "ct"]
    norm = training.map_standardizer(maps, mods)
    np.testing.assert_allclose(norm["xray"]["mean"], [2.0, 0.0])
    # a channel constant over the training rows is centred, not scaled (std 1)
    np.testing.assert_allclose(norm["xray"]["std"], [1.0, 1.0], atol=1e-5)
    z = training.apply_map_standardizer(norm, maps, mods)
    np.testing.assert_allclose(z[0, :, 0], [-1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(z[2:], 0.0)
    with pytest.raises(ValueError, match=r"no training images of modality \['mri'\]"):
        training.apply_map_standardizer(norm, maps[:1], ["mri"])


def test_token_maps_of_a_layer_pool_to_the_backbone_feature():
    from mami_jax.apps.history.features import resolve_layer, token_map_fn
    from mami_jax.models.embed import abstract_params
    from mami_jax.models.mami import MaMI
    from tests.history_workdir import TINY

    from mami_jax.config import base_config
    cfg = base_config().model
    cfg.update(TINY)
    images = np.random.default_rng(0).normal(size=(3, 2, 32, 32, 3)).astype(np.float32)
    rng = np.random.default_rng(1)       # random parameters without compiling init

    def draw(path, a):                   # LayerNorm scales near 1, the rest near 0
        near_one = jax.tree_util.keystr(path).endswith("['scale']")
        return (float(near_one) + 0.05 * rng.standard_normal(a.shape)).astype(a.dtype)

    params = jax.tree_util.tree_map_with_path(draw, abstract_params(cfg, 32))
    c = int(cfg.width)
    last = np.asarray(token_map_fn(cfg, "last_block", 4)(params, {"images": images}))
    assert last.shape == (3, 2 * c + 16 * c) and np.abs(last).mean() > 0.05
    # the last block's map (4 x 4 = the model's own grid), averaged over positions, is the
    # pooled backbone feature the classifiers read
    maps = last[:, 2 * c:].reshape(3, 16, c)
    np.testing.assert_allclose(maps.mean(1), last[:, c:2 * c], rtol=1e-4, atol=1e-5)
    out = jax.jit(MaMI(cfg).apply)({"params": params}, images)
    np.testing.assert_allclose(last[:, :c], np.asarray(out.embedding), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps.reshape(3, 4, 4, c), np.asarray(out.local_map),
                               rtol=1e-4, atol=1e-5)
    assert resolve_layer(cfg, "last_block") == "block_1"
    with pytest.raises(ValueError, match=r"map_layer='block_7' unknown; this model has "
                       r"patch_embed, ln_pre, block_0, block_1"):
        token_map_fn(cfg, "block_7", 4)
