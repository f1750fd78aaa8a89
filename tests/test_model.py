"""The MaMI model against docs/design.md#model: arithmetic, gradients, series, dtypes, inputs."""

import ast
import math
import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mami_jax.models import MaMI, default_config
from mami_jax.models.layers import GroupedDense
from mami_jax.models.vit import resize_position_embedding
from tests import model_reference


def tiny_config(**overrides):
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(dict(width=32, depth=2, num_heads=4, patch_size=8, image_size=32, rank=4,
                        num_codes=4, generator_hidden=(24, 16), qkv_groups=4, mlp_groups=8,
                        adapter_width=8))
        cfg.update(overrides)
    return cfg


def randomize(params, seed=0, scale=0.2):
    """Every parameter random and nonzero, so every path of the model is exercised."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def images(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


_INITIALISED = {}


def init(cfg, shape=(2, 1, 32, 32, 3), seed=0):
    """(model, its initial params); one initialisation per config, shape and seed, shared by
    the tests that ask for the same (the initialisation is the slow part of most tests here;
    the arrays are immutable and each caller gets containers of its own)."""
    model = MaMI(cfg)
    key = (cfg.to_json(), tuple(shape), seed)
    if key not in _INITIALISED:
        _INITIALISED[key] = model.init(jax.random.key(seed), jnp.zeros(shape))["params"]
    return model, jax.tree_util.tree_map(lambda a: a, _INITIALISED[key])


def to_numpy(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                  flax.core.unfreeze(tree))


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("shift_input", ["patch_mean", "router"])
def test_forward_matches_numpy_transcription_of_design(t, shift_input):
    cfg = tiny_config(shift_input=shift_input)
    model, params = init(cfg, (2, t, 32, 32, 3))
    params = randomize(params)
    x = images((2, t, 32, 32, 3))
    out = model.apply({"params": params}, x)
    emb, local, modality, weights = model_reference.mami_forward(to_numpy(params),
                                                                 np.asarray(x), cfg)
    for got, want in ((out.embedding, emb), (out.local_map, local), (out.modality, modality),
                      (out.code_weights, weights)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4,
                                   atol=2e-4 * np.abs(want).max())


def test_grouped_dense_layout_is_per_group_x_at_w():
    layer = GroupedDense(features=6, groups=3)
    x = np.arange(12, dtype=np.float32).reshape(2, 6) / 10
    params = {"kernel": np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2) - 5,
              "bias": np.array([[1, 2], [3, 4], [5, 6]], np.float32)}
    y = np.asarray(layer.apply({"params": params}, x))
    # Group 1 of row 0: inputs x[0, 2:4] = (0.2, 0.3), kernel[1] = [[-1, 0], [1, 2]],
    # bias (3, 4): (0.2*-1 + 0.3*1 + 3, 0.2*0 + 0.3*2 + 4) = (3.1, 4.6).
    np.testing.assert_allclose(y[0, 2:4], [3.1, 4.6], rtol=1e-6)
    want = np.concatenate([x[:, 2 * g:2 * g + 2] @ params["kernel"][g] + params["bias"][g]
                           for g in range(3)], axis=1)
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_modality_is_codebook_concatenation_not_weighted_sum():
    cfg = tiny_config()
    model, params = init(cfg)
    params = randomize(params)
    out = model.apply({"params": params}, images((2, 1, 32, 32, 3)))
    w = np.asarray(out.code_weights)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    codebook = np.asarray(params["compa"]["codebook"])  # (K, C/K)
    want = (w[:, :, None] * codebook[None]).reshape(2, -1)
    np.testing.assert_allclose(np.asarray(out.modality), want, rtol=1e-5, atol=1e-7)


def test_released_layout_shapes_at_full_size():
    """Parameter count of ViT-B/16 MaMI equals the released model's used keys.

    The full-size forward pass itself runs in tests/test_convert_parity.py (against the
    PyTorch module, T=1 and T=4), so it is not run a second time here.
    """
    cfg = default_config()
    shapes = jax.eval_shape(lambda: MaMI(cfg).init(jax.random.key(0),
                                                   jnp.zeros((1, 1, 224, 224, 3))))["params"]
    ours = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    theirs = 0
    # Keys the released forward pass never reads (docs/design.md#mapping-rules).
    unused = re.compile(r"(c_proj_[ab]\.|c_proj_static|^ln_post\.|^fc\.)")
    tsv = os.path.join(os.path.dirname(__file__), "official_state_dict.tsv")
    for line in open(tsv).read().splitlines()[1:]:
        key, shape = line.split("\t")
        if not unused.search(key):
            theirs += math.prod(ast.literal_eval(shape))
    assert ours == theirs


def _triplet(emb, labels):
    d = jnp.sqrt(jnp.sum((emb[:, None] - emb[None]) ** 2, -1) + 1e-12)
    same = labels[:, None] == labels[None]
    eye = jnp.eye(len(labels), dtype=bool)
    hardest_pos = jnp.max(jnp.where(same & ~eye, d, -jnp.inf), 1)
    hardest_neg = jnp.min(jnp.where(~same, d, jnp.inf), 1)
    return jnp.mean(jax.nn.softplus(hardest_pos - hardest_neg))


def _grads_after_steps(init_scheme, steps, **overrides):
    cfg = tiny_config(init=init_scheme, **overrides)
    model, params = init(cfg, (4, 1, 32, 32, 3))
    x = images((4, 1, 32, 32, 3))
    labels = jnp.array([0, 0, 1, 1])
    loss = lambda p: _triplet(model.apply({"params": p}, x).embedding, labels)  # noqa: E731
    opt = optax.adamw(1e-3, weight_decay=0.05)
    state = opt.init(params)
    grad = jax.jit(jax.grad(loss))     # one program, not one dispatch per operation

    @jax.jit
    def update(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = update(params, state, grad(params))
    return params, grad(params)


def _compa_trees(tree):
    """Name -> array for every generator, static, router and codebook parameter."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree["compa"]), sep="/")
    return {k: v for k, v in flat.items() if not k.startswith("shift_")}


def test_default_init_trains_every_generator_router_and_codebook():
    params, grads = _grads_after_steps("default", steps=1)
    compa = _compa_trees(grads)
    assert any("codebook" in k for k in compa) and any("router_conv1" in k for k in compa)
    assert any(k.endswith("q_down/static") for k in compa)
    dead = [k for k, g in compa.items() if not np.any(np.asarray(g) != 0)]
    assert not dead, f"parameters without gradient after one step: {dead}"


def test_default_init_leaves_backbone_unchanged_at_step_zero():
    cfg = tiny_config()
    model, params = init(cfg)
    x = images((2, 1, 32, 32, 3))
    base = model.apply({"params": params}, x).embedding
    off = MaMI(tiny_config(use_compa=False, use_slice_adapter=False))
    plain = {k: v for k, v in params.items() if k != "compa"}
    plain = {k: ({kk: vv for kk, vv in v.items() if kk != "adapter"}
                 if k.startswith("block_") else v) for k, v in plain.items()}
    # Feature shift, up factors and adapter fc2 start at zero: same function as the plain ViT.
    np.testing.assert_allclose(np.asarray(off.apply({"params": plain}, x).embedding),
                               np.asarray(base), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift_input", ["router", "patch_mean"])
def test_released_init_never_trains_the_lowrank_path(shift_input):
    """Generators, statics, codebook and the router's code head get exactly zero gradient;
    the router's convolutions are reached through the feature shift only when the shift
    reads the router (the released function), once its zero last layer has moved."""
    params, grads = _grads_after_steps("released", steps=3, shift_input=shift_input)
    compa = _compa_trees(grads)
    alive = sorted(k for k, g in compa.items() if np.any(np.asarray(g) != 0))
    router_convs = sorted(k for k in compa if k.startswith("router_conv"))
    assert len(router_convs) == 4
    assert alive == (router_convs if shift_input == "router" else []), alive
    for k, v in _compa_trees(params).items():
        if k.endswith("/static") or "/out/" in k:
            assert not np.any(np.asarray(v) != 0), k


def test_permuting_examples_permutes_outputs_and_examples_are_independent():
    cfg = tiny_config()
    model, params = init(cfg, (3, 4, 32, 32, 3))
    params = randomize(params)
    x = images((3, 4, 32, 32, 3))
    out = model.apply({"params": params}, x)
    perm = np.array([2, 0, 1])
    out_p = model.apply({"params": params}, x[perm])
    np.testing.assert_allclose(np.asarray(out_p.embedding), np.asarray(out.embedding)[perm],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out_p.local_map), np.asarray(out.local_map)[perm],
                               rtol=1e-5, atol=1e-5)
    other = x.at[1:].set(images((2, 4, 32, 32, 3), seed=7))
    out_o = model.apply({"params": params}, other)
    np.testing.assert_allclose(np.asarray(out_o.embedding[0]), np.asarray(out.embedding[0]),
                               rtol=1e-5, atol=1e-5)


def test_identical_slices_equal_one_slice_without_adapter():
    cfg = tiny_config(use_slice_adapter=False)
    model, params = init(cfg)
    params = randomize(params)
    one = images((2, 1, 32, 32, 3))
    series = jnp.repeat(one, 5, axis=1)
    a = model.apply({"params": params}, one)
    b = model.apply({"params": params}, series)
    np.testing.assert_allclose(np.asarray(b.embedding), np.asarray(a.embedding), rtol=1e-5,
                               atol=1e-5)
    # With the adapter on, slices interact (a series is not a stack of independent images).
    cfg_on = tiny_config()
    model_on, params_on = init(cfg_on)
    params_on = randomize(params_on)
    a_on = model_on.apply({"params": params_on}, one).embedding
    b_on = model_on.apply({"params": params_on}, series).embedding
    assert np.abs(np.asarray(a_on) - np.asarray(b_on)).max() > 1e-3


def test_ablations_build_and_drop_their_parameters():
    for overrides, absent in (({"use_compa": False}, "compa"),
                              ({"use_codebook": False}, "codebook"),
                              ({"use_slice_adapter": False}, "adapter")):
        cfg = tiny_config(**overrides)
        model, params = init(cfg)
        names = "/".join(flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/"))
        assert absent not in names, overrides
        out = model.apply({"params": params}, images((2, 1, 32, 32, 3)))
        assert out.embedding.shape == (2, 32)
    # No codebook: M is the router's pooled output g.
    cfg = tiny_config(use_codebook=False)
    model, params = init(cfg)
    params = randomize(params)
    out = model.apply({"params": params}, images((2, 1, 32, 32, 3)))
    np.testing.assert_array_equal(np.asarray(out.code_weights), 0.0)
    assert np.abs(np.asarray(out.modality)).max() > 0


def test_bfloat16_compute_close_to_float32():
    cfg32 = tiny_config()
    model32, params = init(cfg32)
    params = randomize(params, scale=0.1)
    x = images((2, 2, 32, 32, 3))
    ref = np.asarray(model32.apply({"params": params}, x).embedding)
    model16 = MaMI(tiny_config(dtype="bfloat16"))
    got = model16.apply({"params": params}, x)
    assert got.embedding.dtype == jnp.float32
    # Parameters stay float32; compute in bfloat16 (8-bit mantissa): the stated tolerance is
    # 5% of the embedding's scale.
    err = np.abs(np.asarray(got.embedding) - ref).max() / np.abs(ref).max()
    assert err < 0.05, err
    leaves = jax.tree_util.tree_leaves(model16.init(jax.random.key(0), x))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_remat_gives_same_gradients():
    x = images((2, 2, 32, 32, 3))
    model, params = init(tiny_config(), (2, 2, 32, 32, 3))
    params = randomize(params)
    remat = MaMI(tiny_config(remat=True))
    g1 = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x).embedding.sum()))(params)
    g2 = jax.jit(jax.grad(lambda p: remat.apply({"params": p}, x).embedding.sum()))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_other_image_sizes_interpolate_position_embedding():
    cfg = tiny_config()
    model, params = init(cfg)
    out = model.apply({"params": params}, images((1, 1, 48, 40, 3)))
    assert out.local_map.shape == (1, 6, 5, 32)
    pos = jnp.tile(jnp.arange(5.0)[None, :], (1 + 16, 1))
    same = resize_position_embedding(pos, (4, 4))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(pos))
    # A constant field stays constant under bicubic resizing; the class entry is kept.
    resized = resize_position_embedding(pos, (6, 5))
    assert resized.shape == (31, 5)
    np.testing.assert_allclose(np.asarray(resized), np.tile(np.arange(5.0), (31, 1)), atol=1e-5)


@pytest.mark.parametrize("shape,needle", [
    ((2, 32, 32, 3), "(B, T, H, W, 3)"),
    ((2, 1, 32, 32, 1), "3 channels"),
    ((2, 1, 30, 32, 3), "multiples of patch_size=8"),
])
def test_bad_input_names_expected_shape(shape, needle):
    cfg = tiny_config()
    model, params = init(cfg)
    with pytest.raises(ValueError, match="expects images of shape") as err:
        model.apply({"params": params}, jnp.zeros(shape))
    assert needle in str(err.value)


def test_misspelt_config_key_is_an_error():
    cfg = default_config()
    with pytest.raises(AttributeError):
        cfg.rnak = 8
    with pytest.raises(ValueError, match="num_codes"):
        MaMI(tiny_config(num_codes=5)).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))
