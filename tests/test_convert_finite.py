"""Imported weights holding NaN or inf are refused, naming the key, whatever the route in."""

import numpy as np
import pytest

from mami_jax.convert import from_torch_state_dict, to_torch_state_dict
from mami_jax.convert.checkpoint_dir import load_params, save_params
from mami_jax.convert.clip import import_clip
from mami_jax.convert.mapping import NonFiniteWeightsError, check_finite
from mami_jax.convert.official import load_official
from tests.test_convert_clip import openai_config, openai_state_dict
from tests.test_convert_io import released_style_file
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")


def test_state_dict_with_nan_and_inf_lists_every_bad_key():
    cfg = tiny_config()
    state = to_torch_state_dict(random_params(cfg), cfg)
    state["ln_pre.weight"][3] = np.nan
    state["transformer.resblocks.1.lora_mlp_q_b.l31.bias"][0, :2] = np.inf
    state["ln_post.weight"][:] = np.nan   # unused by the forward pass: ignored, not an error
    with pytest.raises(NonFiniteWeightsError) as err:
        from_torch_state_dict(state, cfg)
    assert err.value.bad == [
        ("ln_pre.weight", 1, 0, 32),
        ("transformer.resblocks.1.lora_mlp_q_b.l31.bias", 0, 2,
         state["transformer.resblocks.1.lora_mlp_q_b.l31.bias"].size)]
    assert "2 weight arrays hold NaN or inf values" in str(err.value)
    assert "ln_pre.weight: 1 NaN, 0 inf of 32 values" in str(err.value)


def test_float64_beyond_float32_range_is_refused():
    cfg = tiny_config(use_compa=False)
    state = {k: v.astype(np.float64) for k, v in
             to_torch_state_dict(random_params(cfg), cfg).items()}
    state["last_mlp.0.bias"][1] = 1e300   # finite in float64, inf once cast to float32
    with pytest.raises(NonFiniteWeightsError, match=r"last_mlp\.0\.bias: 0 NaN, 1 inf"):
        from_torch_state_dict(state, cfg)


def test_official_file_with_nan_is_refused_naming_file_and_key(tmp_path):
    cfg = tiny_config()
    params = random_params(cfg)
    params["compa"]["codebook"][0, 0] = np.nan
    path = str(tmp_path / "released.pth")
    released_style_file(path, cfg, params)
    with pytest.raises(NonFiniteWeightsError) as err:
        load_official(path, cfg)
    assert path in str(err.value) and "knowledge_pool: 1 NaN" in str(err.value)


def test_clip_file_with_inf_is_refused(tmp_path):
    cfg = openai_config()
    state = openai_state_dict(cfg)   # fp16, as the OpenAI download
    state["visual.transformer.resblocks.0.mlp.c_fc.weight"][0, 0] = float("inf")
    path = str(tmp_path / "ViT-tiny.pth")
    torch.save(state, path)
    with pytest.raises(NonFiniteWeightsError) as err:
        import_clip(path, cfg, random_params(cfg))
    assert path in str(err.value)
    assert "transformer.resblocks.0.mlp.c_fc.weight: 0 NaN, 1 inf" in str(err.value)


def test_converter_checkpoint_with_nan_is_refused_by_load_params(tmp_path):
    cfg = tiny_config(use_compa=False, use_slice_adapter=False)
    params = random_params(cfg)
    params["block_1"]["mlp"]["proj"]["kernel"][2, 3] = np.nan
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, params, cfg)
    with pytest.raises(NonFiniteWeightsError) as err:
        load_params(ckpt)
    assert "block_1/mlp/proj/kernel: 1 NaN, 0 inf" in str(err.value)
    assert err.value.bad == [("block_1/mlp/proj/kernel", 1, 0, 128 * 32)]


def test_check_finite_reads_bfloat16_and_skips_integers():
    import ml_dtypes
    arrays = {"a": np.array([1.0, np.inf], ml_dtypes.bfloat16),
              "step": np.array([3], np.int32),
              "ok": np.ones(3, np.float16)}
    with pytest.raises(NonFiniteWeightsError) as err:
        check_finite(arrays, "x")
    assert err.value.bad == [("a", 0, 1, 2)]
