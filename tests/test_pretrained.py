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


def test_finetune_word_starts_every_parameter_from_an_exported_model(tmp_path):
    """``configs/all.py:runlocal,finetune=FILE``: the file our exporter wrote (with its
    embedded config, shift_input included) is what training starts from, at fine-tuning
    rates; without a file the word is an error."""
    pytest.importorskip("torch")
    from configs.all import RUNLOCAL_FINETUNE_LR, get_config as all_config
    from mami_jax.convert.official import export_official
    path = str(tmp_path / "public_backbone.pth")
    model = all_config("runlocal").model
    exported = random_params(model, seed=1)
    export_official(path, exported, model, allow_non_released_shift=True)
    cfg = all_config(f"runlocal,finetune={path}")
    assert cfg.init.official_checkpoint == path
    assert cfg.optim.learning_rate == RUNLOCAL_FINETUNE_LR < all_config("runlocal").optim.learning_rate
    assert cfg.optim.lr_multipliers.classifier == cfg.optim.lr_multipliers.align == 10.0
    got = flatten_params(load_pretrained(random_params(model, seed=2), cfg))
    want = flatten_params(exported)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    paper = all_config(f"finetune={path}")     # the paper's recipe keeps its own rates
    assert paper.init.official_checkpoint == path
    assert paper.optim.learning_rate == all_config("").optim.learning_rate
    for word in ("runlocal,finetune", "runlocal,finetune="):
        with pytest.raises(ValueError, match="finetune=FILE.pth"):
            all_config(word)
