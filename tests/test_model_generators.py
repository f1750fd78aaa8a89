"""ComPA's factor generators: the fused path (default) against the separate one and
against the numpy transcription of the design; its number of operations; the unchanged
parameter tree. (The whole model through the fused path is checked against the numpy
transcription in tests/test_model.py and against the PyTorch module in
tests/test_convert_parity.py.)"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.models import MaMI, validate_config
from mami_jax.models.compa import ComPA
from tests import model_reference
from tests.test_model import tiny_config, to_numpy

#: Not the tiny defaults' sizes: three blocks, a rank that is not the group count.
SIZES = dict(depth=3, rank=3, generator_hidden=(20, 16), qkv_groups=4, mlp_groups=8)
N = 5


def _setup(impl, dtype="float32"):
    """(cfg, random nonzero params, patches) for ComPA alone; numpy values, nothing compiled."""
    cfg = tiny_config(compa_impl=impl, dtype=dtype, **SIZES)
    patches = jax.random.normal(jax.random.key(2), (N, 4, 4, cfg.width))
    shapes = jax.eval_shape(ComPA(cfg).init, jax.random.key(0), patches)["params"]
    rng = np.random.default_rng(4)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape, dtype=np.float32)), shapes)
    return cfg, params, patches


def _factors_fn(cfg, dtype=jnp.float32):
    return jax.jit(lambda p, x: ComPA(cfg, dtype).apply({"params": p}, x).factors)


def test_fused_factors_are_each_generator_of_the_design():
    """Every block's every factor, from the fused path, equals that generator run alone
    in numpy: a factor from the wrong generator, block or stacking slot would differ."""
    cfg, params, patches = _setup("fused")
    out = jax.jit(lambda p, x: ComPA(cfg).apply({"params": p}, x))(params, patches)
    p = to_numpy(params)
    m = np.asarray(out.modality, np.float64)
    assert len(out.factors) == 3
    for i, got in enumerate(out.factors):
        assert got["qkv_down"].shape == (N, 3, 3, 32) and got["fc_up"].shape == (N, 1, 3, 128)
        for j, name in enumerate("qkv"):
            for role in ("down", "up"):
                want = model_reference.generator(m, p[f"block_{i}"][f"{name}_{role}"], 3, 32)
                np.testing.assert_allclose(np.asarray(got[f"qkv_{role}"][:, j]), want,
                                           rtol=1e-5, atol=1e-5, err_msg=f"{i} {name}_{role}")
        for role, dim in (("down", 32), ("up", 128)):
            want = model_reference.generator(m, p[f"block_{i}"][f"fc_{role}"], 3, dim)
            np.testing.assert_allclose(np.asarray(got[f"fc_{role}"][:, 0]), want,
                                       rtol=1e-5, atol=1e-5, err_msg=f"{i} fc_{role}")


def test_fused_runs_every_generator_in_five_matmuls():
    """ComPA's dots: 6 dense layers (router, shift) + 5 for all generators when fused,
    + 3 per generator (3 blocks x 8) when separate."""
    counts = {}
    for impl in ("fused", "separate"):
        cfg, params, patches = _setup(impl)
        jaxpr = str(jax.make_jaxpr(lambda p: ComPA(cfg).apply({"params": p}, patches))(params))
        counts[impl] = jaxpr.count("dot_general[")
    assert counts == {"fused": 6 + 5, "separate": 6 + 3 * 8 * 3}


def test_fused_and_separate_same_factors_and_gradients():
    cfg, params, patches = _setup("fused")
    separate_cfg = tiny_config(compa_impl="separate", **SIZES)
    weights = jax.tree_util.tree_map(lambda f: jax.random.normal(jax.random.key(9), f.shape),
                                     jax.eval_shape(_factors_fn(cfg), params, patches))

    def loss(c):  # every factor reaches the loss with its own weight
        def f(p):
            factors = ComPA(c).apply({"params": p}, patches).factors
            return sum(jnp.sum(a * w) for a, w in zip(jax.tree_util.tree_leaves(factors),
                                                      jax.tree_util.tree_leaves(weights)))
        return jax.jit(jax.value_and_grad(f))

    got = {"fused": loss(cfg)(params), "separate": loss(separate_cfg)(params)}
    np.testing.assert_allclose(float(got["fused"][0]), float(got["separate"][0]), rtol=1e-5)
    flat = {k: flax.traverse_util.flatten_dict(flax.core.unfreeze(g[1]), sep="/")
            for k, g in got.items()}
    assert flat["fused"].keys() == flat["separate"].keys()
    for key, want in flat["separate"].items():
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(flat["fused"][key]), want, rtol=1e-4,
                                   atol=1e-5 * max(1.0, float(np.abs(want).max())),
                                   err_msg=key)
    # Every generator's first layer is reached (a slot left out of the fusion would be 0).
    for i in range(3):
        for name in ("q_down", "k_up", "v_up", "fc_down", "fc_up"):
            assert np.abs(flat["fused"][f"block_{i}/{name}/hidden1/kernel"]).max() > 0


def test_fused_bfloat16_close_to_separate():
    cfg, params, patches = _setup("fused", "bfloat16")
    fused = _factors_fn(cfg, jnp.bfloat16)(params, patches)
    separate = _factors_fn(tiny_config(compa_impl="separate", dtype="bfloat16", **SIZES),
                           jnp.bfloat16)(params, patches)
    for a, b in zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(separate)):
        assert a.dtype == b.dtype == jnp.bfloat16
        b = np.asarray(b, np.float32)
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=3e-2,
                                   atol=3e-2 * np.abs(b).max())


def test_both_implementations_declare_the_same_parameters():
    """Same names and shapes (and the same declaring code, so the same initial values):
    checkpoints do not see the switch."""
    x = jnp.zeros((1, 1, 32, 32, 3))
    trees = {impl: jax.eval_shape(MaMI(tiny_config(compa_impl=impl, **SIZES)).init,
                                  jax.random.key(0), x)["params"]
             for impl in ("fused", "separate")}
    flat = {k: {key: (v.shape, v.dtype) for key, v in
                flax.traverse_util.flatten_dict(flax.core.unfreeze(t), sep="/").items()}
            for k, t in trees.items()}
    assert flat["fused"] == flat["separate"]
    assert flat["fused"]["compa/block_2/fc_up/out/kernel"] == ((8, 2, 48), jnp.float32)
    assert flat["fused"]["compa/block_0/q_down/static"] == ((1, 3, 32), jnp.float32)


def test_unknown_compa_impl_is_refused():
    with pytest.raises(ValueError, match="compa_impl='batched' not in"):
        validate_config(tiny_config(compa_impl="batched"))


def test_router_second_conv_runs_once_per_slice_after_the_mean():
    """Only router_conv1 multiplies per position (a 4-D operand); router_conv2 is affine
    and applied to the spatial mean. The router's output is checked against the design
    (conv, conv, then mean) by the numpy transcription in tests/test_model.py."""
    cfg, params, patches = _setup("fused")
    jaxpr = jax.make_jaxpr(lambda p: ComPA(cfg).apply({"params": p}, patches))(params)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    per_position = [e for e in dots if e.invars[0].aval.shape == (N, 4, 4, cfg.width)]
    assert len(per_position) == 1  # router_conv1 (before: router_conv2 as well)
    assert per_position[0].outvars[0].aval.shape == (N, 4, 4, cfg.width)


def test_auto_is_separate_on_cpu_and_fused_on_accelerators(monkeypatch):
    from mami_jax.models.generators import compa_implementation
    assert tiny_config().compa_impl == "auto"
    assert compa_implementation("auto") == "separate"  # this CPU
    assert compa_implementation("fused") == "fused"
    cfg, params, patches = _setup("auto")
    jaxpr = str(jax.make_jaxpr(lambda p: ComPA(cfg).apply({"params": p}, patches))(params))
    assert jaxpr.count("dot_general[") == 6 + 3 * 8 * 3
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert compa_implementation("auto") == "fused"
        assert compa_implementation("separate") == "separate"
