"""Adversarial training (``loss.adversarial_rms``, ``train/adversarial.py``): the moved
images are one normalised gradient step of the configured size (padding left alone), the
parameters' gradient is the loss's at the moved images with the move held fixed, and the
configured model's loss is taken there and is higher than at the clean images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.train import adversarial
from mami_jax.train.objective import TrainModel, example_batch, make_loss_fn
from tests.test_extension_points import _batch, _config


def test_a_toy_loss_moves_each_image_along_its_gradient():
    """loss = sum_i w_i . x_i: the gradient of image i is w_i, so the move is
    rms * w_i / rms(w_i), and a masked image does not move."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2)), jnp.float32)

    def loss_fn(params, batch):
        return jnp.sum(params * batch["images"]), {}
    batch = {"images": jnp.zeros((3, 2, 2)), "mask": jnp.asarray([True, True, False])}
    moved = np.asarray(adversarial.worst_case_images(loss_fn, w, batch, 0.5))
    expected = 0.5 * np.asarray(w) / np.sqrt(np.mean(np.square(np.asarray(w)), axis=(1, 2),
                                                      keepdims=True))
    np.testing.assert_allclose(moved[:2], expected[:2], rtol=1e-5)
    np.testing.assert_allclose(moved[2], 0.0)
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(moved[:2]), axis=(1, 2))), 0.5,
                               rtol=1e-5)
    # The parameters' gradient is the loss's at the moved images with the move held fixed:
    # here exactly the moved images (the move, which depends on w, adds nothing).
    robust = adversarial.adversarial_loss_fn(loss_fn, 0.5)
    np.testing.assert_allclose(jax.grad(lambda p: robust(p, batch)[0])(w), moved, rtol=1e-6)
    with pytest.raises(ValueError, match="loss.adversarial_rms=0"):
        adversarial.adversarial_loss_fn(loss_fn, 0)


def test_the_configured_loss_is_taken_at_the_moved_images():
    cfg = _config({"id": 1.0, "triplet": 1.0})
    model = TrainModel(cfg, 4)
    params = model.init(jax.random.key(0), example_batch(cfg))["params"]
    batch = {k: v for k, v in _batch().items() if not k.startswith("_")}
    plain = make_loss_fn(model, cfg.loss)
    with cfg.unlocked():
        cfg.loss.adversarial_rms = 0.3
    robust = make_loss_fn(model, cfg.loss)

    plain_j, robust_j = jax.jit(plain), jax.jit(robust)
    moved = jax.jit(lambda p, b: adversarial.worst_case_images(plain, p, b, 0.3))(params, batch)
    clean_loss, clean_logs = plain_j(params, batch)
    robust_loss, logs = robust_j(params, batch)
    at_moved = plain_j(params, dict(batch, images=moved))[0]
    assert float(robust_loss) > float(clean_loss) + 1e-3      # the step found a worse input
    np.testing.assert_allclose(float(robust_loss), float(at_moved), rtol=1e-5)
    assert set(logs) == set(clean_logs)
