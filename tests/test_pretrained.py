"""Training starts from CLIP or the released checkpoint as config.init says, or says how to get it."""

import numpy as np
import pytest

from mami_jax.config import base_config
from mami_jax.convert.mapping import flatten_params
from mami_jax.train.pretrained import load_pretrained
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config


def _config(**init):
    cfg = base_config()
    with cfg.unlocked():
        cfg.model = tiny_config()
        cfg.init.update(init)
    return cfg


def test_missing_clip_checkpoint_says_how_to_get_it(tmp_path):
    cfg = _config(clip_checkpoint=str(tmp_path / "ViT-B-16.pt"), require_pretrained=True)
    with pytest.raises(FileNotFoundError, match="ViT-B-16.pt does not exist.*save_pretrained"):
        load_pretrained(random_params(cfg.model), cfg)


def test_random_init_allowed_when_asked():
    cfg = _config(clip_checkpoint="", require_pretrained=False)
    params = random_params(cfg.model)
    assert load_pretrained(params, cfg) is params


def test_hf_clip_directory_replaces_the_backbone_only(tmp_path):
    pytest.importorskip("transformers")
    from tests.test_convert_clip import tiny_hf_clip
    hf = tiny_hf_clip(str(tmp_path / "clip"))
    cfg = _config(clip_checkpoint=str(tmp_path / "clip"))
    start = random_params(cfg.model, seed=3)
    got = flatten_params(load_pretrained(start, cfg))
    before = flatten_params(start)
    want_qkv = np.concatenate([hf.state_dict()[f"encoder.layers.1.self_attn.{p}_proj.weight"]
                               .numpy() for p in "qkv"]).T
    np.testing.assert_allclose(got["block_1/attn/qkv/kernel"], want_qkv, rtol=1e-6)
    np.testing.assert_array_equal(got["head_fc1/kernel"], before["head_fc1/kernel"])
    np.testing.assert_array_equal(got["compa/codebook"], before["compa/codebook"])
