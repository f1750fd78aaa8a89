"""Translation-invariant gradients (``perturb.smooth``): off is the plain step bit for bit;
on, an l2 step moves along the Gaussian-smoothed gradient (scipy's filter as the
reference); the budget still holds; a negative sigma is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from mami_jax.apps.privacy import perturb
from mami_jax.config_files import load_config

B, T, H, W, C = 2, 2, 12, 10, 3
STEP = 0.01


def linear_score(params, x, offset, refs, key, clean=None):
    """A score whose gradient is ``params`` itself (so the step's direction is known);
    ``clean`` (the original image, which every member score is given) is not used."""
    return jnp.sum(params * x, axis=(1, 2, 3, 4))


def one_step(smooth, momentum=0.0, **kw):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(B, T, H, W, C)).astype(np.float32)
    x0 = np.full((B, T, H, W, C), 0.5, np.float32)
    zeros = jnp.zeros_like(x0)
    refs = tuple(np.zeros((1, 1)) for _ in range(7))
    step = perturb.make_step(linear_score, "l2", 1.0, STEP, momentum, **kw) if smooth is None \
        else perturb.make_step(linear_score, "l2", 1.0, STEP, momentum, smooth)
    delta, _, _ = step([w], x0, zeros, zeros, jnp.ones_like(x0), 0.0, refs, jax.random.key(0))
    return w, np.asarray(delta)


def direction(g):
    """The l2 step's move for gradient ``g``: the mean-|g| normalised gradient rescaled to
    root-mean-square 1 per image, against the gradient."""
    axes = tuple(range(1, g.ndim))
    n = np.prod(g.shape[1:])
    return -STEP * g * np.sqrt(n) / np.sqrt(np.sum(g ** 2, axis=axes, keepdims=True))


def test_gaussian_matrix_equals_scipy_reflect():
    v = np.random.default_rng(1).normal(size=9)
    for sigma in (0.7, 2.0, 4.0):        # 4: the kernel is wider than the signal
        m = perturb.gaussian_matrix(9, sigma)
        np.testing.assert_allclose(m @ v, ndimage.gaussian_filter1d(v, sigma, mode="reflect",
                                                                    truncate=4.0), atol=1e-5)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)


def test_off_is_the_plain_step_bit_for_bit():
    w, plain = one_step(None)
    _, off = one_step(0.0)
    assert np.array_equal(plain, off)
    np.testing.assert_allclose(plain, direction(w), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_on_the_step_follows_the_smoothed_gradient(sigma):
    w, delta = one_step(sigma)
    smoothed = ndimage.gaussian_filter(w, sigma=(0, 0, sigma, sigma, 0), mode="reflect",
                                       truncate=4.0)
    np.testing.assert_allclose(delta, direction(smoothed), rtol=1e-4, atol=1e-6)
    assert not np.allclose(delta, direction(w), atol=1e-3)     # not the raw gradient
    # low-frequency: neighbouring pixels of the change agree far more than the raw ones
    rough = lambda d: np.mean(np.abs(np.diff(d, axis=2)))        # noqa: E731
    assert rough(delta) < 0.5 * rough(direction(w))


def test_budget_holds_with_smoothing():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(B, T, H, W, C)).astype(np.float32)
    x0 = rng.uniform(size=(B, T, H, W, C)).astype(np.float32)
    refs = tuple(np.zeros((1, 1)) for _ in range(7))
    for norm, eps in (("l2", 0.03), ("linf", 0.02)):
        step = perturb.make_step(linear_score, norm, eps, eps, 0.9, 2.0)
        delta = velocity = jnp.zeros_like(x0)
        for _ in range(6):
            delta, velocity, _ = step([w], x0, delta, velocity, jnp.ones_like(x0), 0.0, refs,
                                      jax.random.key(0))
        d = np.asarray(delta)
        assert perturb.budget_used(d, norm, eps).max() <= 1 + 1e-5
        assert np.all(x0 + d >= -1e-6) and np.all(x0 + d <= 1 + 1e-6)
        assert perturb.budget_used(d, norm, eps).max() > 0.5          # it did move


def test_negative_sigma_is_refused_and_only_the_transfer_recipe_smooths():
    with pytest.raises(ValueError, match=r"perturb.smooth=-1.0: a Gaussian sigma"):
        perturb.make_step(linear_score, "l2", 0.03, 0.006, 0.5, -1.0)
    assert load_config("configs/privacy.py:runlocal").perturb.smooth == 0.0
    assert load_config("configs/privacy.py:runlocal,transfer=A+B").perturb.smooth == 1.0
