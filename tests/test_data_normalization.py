"""Input normalisation: ImageNet statistics (the default) or per-image z-scoring."""

import numpy as np
import pytest

from mami_jax.data import example_reader
from mami_jax.data.config import default_data_config
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, center_crop_box,
                                      eval_transform, normalize, resize_box, standardize_per_image,
                                      train_transform)


def test_per_image_hand_worked_grey_series():
    # Two slices of 1 x 2 grey pixels: values 0, 0.5 | 0.5, 1 -> mean 0.5, std sqrt(0.125).
    x = np.asarray([0.0, 0.5, 0.5, 1.0], np.float32).reshape(2, 1, 2, 1)
    out = standardize_per_image(x, eps=0.0)
    assert out.shape == (2, 1, 2, 3)
    expected = (np.asarray([0.0, 0.5, 0.5, 1.0]) - 0.5) / np.sqrt(0.125)
    for c in range(3):  # grey replicated to every channel
        np.testing.assert_allclose(out[..., c].ravel(), expected, rtol=1e-6)


def test_per_image_is_per_channel_and_blind_to_exposure_and_colour_balance():
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 6, 3)).astype(np.float32) * 0.5
    gain = np.asarray([1.5, 0.8, 1.2], np.float32)   # per-channel colour balance
    offset = np.asarray([0.1, 0.3, 0.0], np.float32)  # per-channel exposure
    a, b = standardize_per_image(x, eps=0.0), standardize_per_image(x * gain + offset, eps=0.0)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(a.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(a.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    # The default differs: ImageNet statistics keep the exposure.
    ref = (x - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(normalize(x, "imagenet"), ref, rtol=1e-5, atol=1e-6)


def test_blank_image_stays_finite():
    out = standardize_per_image(np.full((1, 4, 4, 1), 0.7, np.float32))
    assert np.all(out == 0.0)


def test_unknown_normalization_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.normalization='zscore'"):
        normalize(np.zeros((1, 2, 2, 1), np.float32), "zscore")
    cfg = default_data_config()
    cfg.normalization = "zscore"
    row = ManifestRow("d:p1", "p", "s", "0", "xray", "d", "", str(tmp_path / "x.png"), "train")
    with pytest.raises(ValueError, match="data.normalization='zscore'"):
        example_reader.ExampleReader([row], cfg)


def test_train_and_eval_transforms_use_the_configured_normalization():
    rng = np.random.default_rng(1)
    vol = rng.random((4, 20, 20, 1)).astype(np.float32) * 0.3 + 0.2
    ev = eval_transform(vol, 10, 8, "per_image")
    np.testing.assert_allclose(ev.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    resized = resize_box(vol, center_crop_box(20, 20, 10, 8), 8)
    np.testing.assert_allclose(ev, standardize_per_image(resized), atol=1e-6)
    cfg = AugmentConfig(image_size=8, resize_size=10, erase_prob=0.0, normalization="per_image")
    tr = train_transform(vol, cfg, np.random.default_rng(0), allow_flip=False)
    np.testing.assert_allclose(tr.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    assert np.all((tr.std(axis=(0, 1, 2)) > 0.9) & (tr.std(axis=(0, 1, 2)) <= 1.0))  # std/(std+eps)
    assert not np.allclose(tr, ev)  # random crop and jitter did happen
