"""models/config.py: the default is the released function; bad sizes are named, never divided by."""

import pytest

from mami_jax.convert.checkpoint_dir import config_from_json
from mami_jax.models.config import (EXECUTION_KEYS, POSITIVE_INT_KEYS, SHIFT_INPUTS,
                                    config_differences, default_config, validate_config)
from tests.test_model import tiny_config


def test_default_config_is_the_released_function():
    cfg = default_config()
    assert cfg.shift_input == "router"
    assert SHIFT_INPUTS == ("router", "patch_mean")
    validate_config(cfg)
    validate_config(tiny_config(shift_input="patch_mean"))  # the named alternative
    with pytest.raises(ValueError, match=r"shift_input='mean' not in \('router', 'patch_mean'\)"):
        validate_config(tiny_config(shift_input="mean"))


@pytest.mark.parametrize("key", POSITIVE_INT_KEYS)
@pytest.mark.parametrize("value", [0, -2])
def test_zero_or_negative_size_is_named(key, value):
    cfg = tiny_config(**{key: value})
    with pytest.raises(ValueError) as err:  # not ZeroDivisionError
        validate_config(cfg)
    assert str(err.value) == (f"invalid model config: {key}={value} must be a positive "
                              "integer")


def test_every_size_key_is_checked():
    assert set(POSITIVE_INT_KEYS) == {
        "width", "depth", "num_heads", "patch_size", "image_size", "mlp_ratio", "rank",
        "num_codes", "qkv_groups", "mlp_groups", "adapter_width", "adapter_kernel"}


@pytest.mark.parametrize("hidden,needle", [
    ((0, 16), "generator_hidden[0]=0 must be a positive integer"),
    ((24, -16), "generator_hidden[1]=-16 must be a positive integer"),
    ((24,), "generator_hidden=(24,) must hold two widths"),
])
def test_generator_hidden_entries_are_checked(hidden, needle):
    with pytest.raises(ValueError) as err:
        validate_config(tiny_config(generator_hidden=hidden))
    assert needle in str(err.value)


@pytest.mark.parametrize("overrides,needle", [
    ({"layernorm_eps": 0.0}, "layernorm_eps=0.0 must be a positive number"),
    ({"layernorm_eps": -1e-5}, "layernorm_eps=-1e-05 must be a positive number"),
    ({"leaky_slope": -0.1}, "leaky_slope=-0.1 must be a number >= 0"),
])
def test_layernorm_eps_and_leaky_slope(overrides, needle):
    with pytest.raises(ValueError) as err:
        validate_config(tiny_config(**overrides))
    assert needle in str(err.value)
    validate_config(tiny_config(leaky_slope=0.0))  # plain ReLU is a valid model


def test_divisibility_still_checked_after_signs():
    with pytest.raises(ValueError, match="width=32 must be divisible by num_heads=3"):
        validate_config(tiny_config(num_heads=3))
    with pytest.raises(ValueError, match="adapter_kernel=2 must be odd"):
        validate_config(tiny_config(adapter_kernel=2))


def test_config_differences_names_saved_and_given_and_skips_execution_keys():
    saved = tiny_config()
    given = tiny_config(shift_input="patch_mean", rank=2, dtype="bfloat16", remat=True,
                        init="released", remat_policy="dots_saveable", attention="xla")
    assert set(EXECUTION_KEYS) == {"init", "dtype", "remat", "remat_policy", "attention",
                                   "compa_impl"}
    assert config_differences(saved, given) == [
        "rank: saved 4, given 2", "shift_input: saved 'router', given 'patch_mean'"]
    # Read back from JSON (generator_hidden comes back as a list): the same config.
    assert config_differences(config_from_json(saved.to_json(), "x.json"), saved) == []
    assert "dtype: saved 'float32', given 'bfloat16'" in config_differences(saved, given,
                                                                            ignore=())
