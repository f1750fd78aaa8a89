"""The common-weakness ensemble step (``apps.privacy.common_weakness``): with one member,
no sharpness step and no momentum it is the plain PGD step; with linear members its
sharpness, chained member steps and outer step move the change as worked out by hand; it
stays inside its budget; and ``protect``'s step factory refuses what it cannot combine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.apps.privacy import common_weakness, perturb
from mami_jax.apps.privacy.protect import ensemble_step
from mami_jax.config_files import load_config

SHAPE = (2, 1, 4, 4, 1)
REFS = ([None] * 3, None, [None] * 3, [None] * 3, [None] * 3, [None] * 3, None)  # 3 members


def linear_score(params, x, offset, refs, key, clean=None):
    """Score of each image = <params, x>: its gradient is ``params`` everywhere."""
    return jnp.sum(params * x, axis=(1, 2, 3, 4))


def weights(seed):
    return jax.random.normal(jax.random.key(seed), SHAPE)


def start(step, members, x0, eps_steps=1):
    delta = velocity = jnp.zeros(SHAPE)
    mask = jnp.ones(SHAPE)
    for _ in range(eps_steps):
        delta, velocity, score = step(members, x0, delta, velocity, mask, None, REFS,
                                      jax.random.key(0))
    return np.asarray(delta), np.asarray(score)


def rms_unit(v):
    v = np.asarray(v, np.float64)
    return v / np.sqrt(np.mean(np.square(v), axis=(1, 2, 3, 4), keepdims=True))


X0 = np.full(SHAPE, 0.5, np.float32)


def test_one_member_without_sharpness_or_momentum_is_the_plain_step():
    a = weights(0)
    plain = perturb.make_step(linear_score, "l2", 0.5, 0.01, 0.0)
    cwa = common_weakness.make_step(linear_score, "l2", 0.5, 0.01, 0.0, reverse_size=0.0,
                                    inner_size=0.003, inner_momentum=0.0)
    got, score = start(cwa, [a], X0)
    want, _ = start(plain, [a], X0)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got, -0.01 * rms_unit(a), atol=1e-6)
    np.testing.assert_allclose(score, np.sum(np.asarray(a) * X0, axis=(1, 2, 3, 4)), atol=1e-5)


def test_two_linear_members_by_hand():
    a, b = weights(1), weights(2)
    r, beta, mu_in, alpha = 0.004, 0.003, 0.5, 0.01
    cwa = common_weakness.make_step(linear_score, "l2", 0.5, alpha, 0.9, reverse_size=r,
                                    inner_size=beta, inner_momentum=mu_in)
    got, _ = start(cwa, [a, b], X0)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean_abs = lambda v: v / np.mean(np.abs(v), axis=(1, 2, 3, 4), keepdims=True)
    probe = r * rms_unit((a + b) / 2)                  # up the ensemble's gradient
    v = mean_abs(a)
    probe = probe - beta * rms_unit(v)                 # member a down its gradient
    v = mu_in * v + mean_abs(b)
    probe = probe - beta * rms_unit(v)                 # then member b, with momentum
    want = alpha * rms_unit(mean_abs(probe))           # the way travelled, as the step
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("norm, eps", [("l2", 0.03), ("linf", 0.02)])
def test_common_weakness_stays_inside_the_budget_and_lowers_every_member(norm, eps):
    members = [weights(3), weights(4), weights(5)]
    cwa = common_weakness.make_step(linear_score, norm, eps, eps / 3, 0.5,
                                    reverse_size=eps / 3, inner_size=eps / 3)
    x0 = np.asarray(jax.random.uniform(jax.random.key(6), SHAPE), np.float32)
    delta, _ = start(cwa, members, x0, eps_steps=20)
    assert np.all(perturb.budget_used(delta, norm, eps) <= 1 + 1e-5)
    assert (x0 + delta).min() >= 0 and (x0 + delta).max() <= 1
    for w in members:     # a common descent direction: each member's score falls
        assert np.all(np.asarray(linear_score(w, x0 + delta, None, None, None)
                                 - linear_score(w, x0, None, None, None)) < 0)


def test_protect_chooses_the_update_and_refuses_what_it_cannot_combine():
    cfg = load_config("configs/privacy.py").perturb
    assert ensemble_step(cfg, linear_score, 0.03, [], ("mean", 0.05)) is not None
    cfg.ensemble_update = "common_weakness"
    step = ensemble_step(cfg, linear_score, 0.03, [], ("mean", 0.05))
    got, _ = start(step, [weights(7)], X0)
    assert np.all(perturb.budget_used(got, "l2", 0.03) <= 1 + 1e-5) and np.abs(got).max() > 0
    with pytest.raises(ValueError, match="member_weighting other than 'mean'"):
        ensemble_step(cfg, linear_score, 0.03, [], ("hardest", 0.05))
    with pytest.raises(ValueError, match="perturb.keep_diagnosis"):
        ensemble_step(cfg, linear_score, 0.03, [(0, object())], ("mean", 0.05))
    cfg.ensemble_update = "sequential"
    with pytest.raises(ValueError, match="perturb.ensemble_update='sequential'"):
        ensemble_step(cfg, linear_score, 0.03, [], ("mean", 0.05))
