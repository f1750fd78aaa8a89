"""The mapping table on tiny configs: round trips, forward parity, ablations, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.convert import (ConversionError, build_table, from_torch_state_dict,
                              to_torch_state_dict)
from mami_jax.convert.mapping import TRANSFORMS, flatten_params, unflatten_params
from mami_jax.models import MaMI
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")

ABLATIONS = [{}, {"shift_input": "router"}, {"use_compa": False}, {"use_codebook": False},
             {"use_slice_adapter": False}, {"use_compa": False, "use_slice_adapter": False}]


def random_params(cfg, seed=0, scale=0.2):
    """Random params of the table's shapes (checked against the model below), all nonzero."""
    rng = np.random.default_rng(seed)
    flat = {}
    for e in build_table(cfg):
        if e.used:
            value = scale * rng.standard_normal(e.our_shape, dtype=np.float32)
            value[value == 0] = scale
            flat[e.ours] = value
    return unflatten_params(flat)


def flax_forward(cfg, params, x, jit=False):
    # Eager by default: the tiny configs share op shapes, so after the first call every
    # op is cached, where jit would compile each config anew (several times slower
    # here); jit for a one-off shape.
    apply = jax.jit(MaMI(cfg).apply) if jit else MaMI(cfg).apply
    return apply({"params": params}, x)


def torch_module(cfg, state):
    from mami_jax.convert.torch_model import MaMITorch
    module = MaMITorch(cfg)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return module.eval()


@pytest.mark.parametrize("overrides", ABLATIONS)
def test_round_trip_bit_exact_for_every_ablation(overrides):
    cfg = tiny_config(**overrides)
    params = random_params(cfg)
    state = to_torch_state_dict(params, cfg)
    for tensors in (False, True):
        sd = {k: torch.from_numpy(v) for k, v in state.items()} if tensors else state
        back = flatten_params(from_torch_state_dict(sd, cfg))
        ours = flatten_params(params)
        assert set(back) == set(ours)
        for key, value in ours.items():
            assert back[key].dtype == np.float32
            np.testing.assert_array_equal(back[key], np.asarray(value), err_msg=key)
    # Ablations drop exactly their keys from the torch side too.
    keys = "\n".join(state)
    assert ("knowledge_pool" in keys) == (cfg.use_compa and cfg.use_codebook)
    assert ("router_MLP" in keys) == (cfg.use_compa and cfg.use_codebook)
    assert ("lora_mlp_q_a" in keys) == cfg.use_compa
    assert ("adapter_pre_attn" in keys) == cfg.use_slice_adapter


@pytest.mark.parametrize("overrides", ABLATIONS)
def test_torch_module_computes_the_flax_function(overrides, t=3):
    """Every ablation on a 3-slice series (T=1 is covered at full size in test_convert_parity)."""
    cfg = tiny_config(**overrides)
    params = random_params(cfg)
    x = np.random.default_rng(3).standard_normal((2, t, 32, 32, 3), dtype=np.float32)
    ours = flax_forward(cfg, params, x)
    with torch.no_grad():
        theirs = torch_module(cfg, to_torch_state_dict(params, cfg))(torch.from_numpy(x))
    for key in ("embedding", "local_map", "modality", "code_weights"):
        want = np.asarray(getattr(ours, key))
        np.testing.assert_allclose(theirs[key].numpy(), want, rtol=0,
                                   atol=1e-5 * max(np.abs(want).max(), 1e-6), err_msg=key)


def test_torch_module_other_image_size_resizes_position_embedding_like_jax():
    cfg = tiny_config()
    params = random_params(cfg)
    x = np.random.default_rng(4).standard_normal((1, 2, 48, 40, 3), dtype=np.float32)
    ours = flax_forward(cfg, params, x, jit=True)
    with torch.no_grad():
        theirs = torch_module(cfg, to_torch_state_dict(params, cfg))(torch.from_numpy(x))
    assert theirs["local_map"].shape == (1, 6, 5, 32)
    want = np.asarray(ours.local_map)
    np.testing.assert_allclose(theirs["local_map"].numpy(), want, atol=1e-5 * np.abs(want).max())


def test_layout_transforms_by_hand():
    """Each transform on a small hand-made array, and its inverse."""
    dense = np.arange(6.0).reshape(2, 3)                      # (in=2, out=3)
    np.testing.assert_array_equal(TRANSFORMS["transpose"].fwd(dense), [[0, 3], [1, 4], [2, 5]])
    conv = TRANSFORMS["conv1x1"].fwd(dense)
    assert conv.shape == (3, 2, 1, 1) and conv[2, 1, 0, 0] == dense[1, 2]
    hwio = np.arange(2 * 2 * 3 * 4.0).reshape(2, 2, 3, 4)
    oihw = TRANSFORMS["hwio_to_oihw"].fwd(hwio)
    assert oihw.shape == (4, 3, 2, 2) and oihw[3, 2, 1, 0] == hwio[1, 0, 2, 3]
    kernel = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (k=3, A=2)
    dw = TRANSFORMS["depthwise_conv3d_t"].fwd(kernel)
    assert dw.shape == (2, 1, 3, 1, 1)
    np.testing.assert_array_equal(dw[1, 0, :, 0, 0], [2, 4, 6])
    for t, a in (("transpose", dense), ("conv1x1", dense), ("hwio_to_oihw", hwio),
                 ("depthwise_conv3d_t", kernel), ("add_leading_axis", dense)):
        tr = TRANSFORMS[t]
        assert tr.fwd(a).shape == tr.fwd_shape(a.shape), t
        np.testing.assert_array_equal(tr.inv(tr.fwd(a)), a, err_msg=t)


def test_known_correspondences_land_where_the_design_says():
    cfg = tiny_config()
    params = random_params(cfg)
    sd = to_torch_state_dict(params, cfg)
    c = cfg.width
    qkv = np.asarray(params["block_1"]["attn"]["qkv"]["kernel"])       # (C, 3C) q, k, v
    np.testing.assert_array_equal(sd["transformer.resblocks.1.attn.in_proj_weight"][c:2 * c],
                                  qkv[:, c:2 * c].T)                   # the k rows
    comp = params["compa"]["block_0"]
    # The MLP's names are swapped: c_fc_b is the down factor (r, C).
    np.testing.assert_array_equal(sd["transformer.resblocks.0.linear_b_c_fc_static"],
                                  np.asarray(comp["fc_down"]["static"]))
    np.testing.assert_array_equal(sd["transformer.resblocks.0.lora_mlp_c_fc_a.l31.weight"],
                                  np.asarray(comp["fc_up"]["out"]["kernel"]))
    np.testing.assert_array_equal(sd["transformer.resblocks.0.lora_mlp_q_a.l11.weight"],
                                  np.asarray(comp["q_down"]["hidden1"]["kernel"]))
    np.testing.assert_array_equal(sd["knowledge_pool"][0], np.asarray(params["compa"]["codebook"]))
    np.testing.assert_array_equal(sd["ft_comp_MLP.3.weight"],
                                  np.asarray(params["compa"]["shift_fc2"]["kernel"]).T)
    np.testing.assert_array_equal(sd["last_mlp.2.bias"], np.asarray(params["head_fc2"]["bias"]))
    # The generator's output reshapes row-major to (r, d): entry (0, 1) of the factor is
    # output column 1 of group 0.
    assert sd["transformer.resblocks.0.lora_mlp_c_fc_a.l31.weight"].shape == (
        cfg.mlp_groups, cfg.generator_hidden[1] // cfg.mlp_groups,
        cfg.rank * c * cfg.mlp_ratio // cfg.mlp_groups)


def test_table_covers_the_model_exactly_for_every_ablation():
    for overrides in ABLATIONS:
        cfg = tiny_config(**overrides)
        shapes = jax.eval_shape(lambda cfg=cfg: MaMI(cfg).init(
            jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3))))["params"]
        ours = {k: tuple(v.shape) for k, v in flatten_params(shapes).items()}
        table = {e.ours: e.our_shape for e in build_table(cfg) if e.used}
        assert ours == table, overrides


def test_other_width_names_the_mismatched_keys():
    small = tiny_config()
    wide = tiny_config(width=48, num_heads=4, adapter_width=8)
    state = to_torch_state_dict(random_params(wide), wide)
    with pytest.raises(ConversionError) as err:
        from_torch_state_dict(state, small)
    msg = str(err.value)
    assert "wrong shape" in msg
    assert "class_embedding: got (48,), expected (32,)" in msg
    assert "transformer.resblocks.0.attn.in_proj_weight: got (144, 48), expected (96, 32)" in msg
    assert len(err.value.mismatched) > 40 and "... and" in msg  # listing is capped, lists kept


def test_missing_extra_and_misshaped_keys_are_all_listed_at_once():
    cfg = tiny_config()
    state = dict(to_torch_state_dict(random_params(cfg), cfg))
    del state["ln_pre.weight"]
    del state["transformer.resblocks.1.lora_mlp_k_b.l21.bias"]
    state["transformer.resblocks.0.attn.bias_k"] = np.zeros(3, np.float32)
    state["last_mlp.0.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ConversionError) as err:
        from_torch_state_dict(state, cfg)
    e = err.value
    assert e.missing == ["ln_pre.weight", "transformer.resblocks.1.lora_mlp_k_b.l21.bias"]
    assert e.extra == ["transformer.resblocks.0.attn.bias_k"]
    assert e.mismatched == [("last_mlp.0.bias", (7,), (32,))]
    for needle in ("2 missing", "1 unexpected", "1 with the wrong shape", "ln_pre.weight",
                   "bias_k", "last_mlp.0.bias: got (7,), expected (32,)"):
        assert needle in str(e), needle


def test_unused_keys_are_optional_on_import_and_zero_on_export():
    cfg = tiny_config()
    params = random_params(cfg)
    state = to_torch_state_dict(params, cfg)
    unused = [e.theirs for e in build_table(cfg) if not e.used]
    assert "ln_post.weight" in unused and "fc.bias" in unused
    assert any("lora_mlp_c_proj_a" in k for k in unused)
    assert all(not np.any(state[k]) for k in unused)
    trimmed = {k: v for k, v in state.items() if k not in unused}
    back = flatten_params(from_torch_state_dict(trimmed, cfg))
    np.testing.assert_array_equal(back["head_fc1/kernel"], np.asarray(params["head_fc1"]["kernel"]))
    # Nonzero values in unused keys (as in the released file) are ignored, not an error.
    noisy = dict(state, **{"ln_post.weight": np.ones(cfg.width, np.float32)})
    from_torch_state_dict(noisy, cfg)


def test_module_prefix_is_removed_and_mixed_prefixes_are_an_error():
    cfg = tiny_config()
    params = random_params(cfg)
    state = to_torch_state_dict(params, cfg)
    prefixed = {"module." + k: v for k, v in state.items()}
    back = flatten_params(from_torch_state_dict(prefixed, cfg))
    np.testing.assert_array_equal(back["pos_embedding"], np.asarray(params["pos_embedding"]))
    mixed = dict(prefixed)
    mixed["ln_pre.bias"] = mixed.pop("module.ln_pre.bias")
    with pytest.raises(ValueError, match="module. prefix|'module.' prefix"):
        from_torch_state_dict(mixed, cfg)


def test_export_rejects_params_of_another_config():
    cfg = tiny_config()
    params = random_params(cfg)
    with pytest.raises(ConversionError) as err:
        to_torch_state_dict(params, tiny_config(use_slice_adapter=False))
    assert "block_0/adapter/fc1/kernel" in err.value.extra
    with pytest.raises(ConversionError) as err:
        to_torch_state_dict(params, tiny_config(depth=3))
    assert "block_2/ln_1/scale" in err.value.missing


def test_package_imports_and_converts_without_torch():
    """torch is imported lazily: the mapping works in an environment without it."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "import mami_jax.convert as mc\n"
        "import mami_jax.convert.__main__, mami_jax.convert.clip, mami_jax.convert.official\n"
        "from tests.test_model import tiny_config\n"
        "from mami_jax.convert.mapping import unflatten_params\n"
        "cfg = tiny_config()\n"
        "p = unflatten_params({e.ours: np.full(e.our_shape, 0.5, np.float32)\n"
        "                      for e in mc.build_table(cfg) if e.used})\n"
        "sd = mc.to_torch_state_dict(p, cfg)\n"
        "back = mc.from_torch_state_dict(sd, cfg)\n"
        "assert np.array_equal(back['head_fc1']['kernel'], p['head_fc1']['kernel'])\n"
        "try:\n"
        "    mc.to_torch_state_dict(p, cfg, as_tensors=True)\n"
        "except ImportError:\n"
        "    print('ok')\n")
    import os
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=repo))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
