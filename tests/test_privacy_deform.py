"""The adversarial deformation (``apps.privacy.deform``): the bilinear warp moves pixels by
the field (hand-worked shifts), the control grid interpolates linearly, the field is
scaled into the budget, and a few steps against a tiny model lower its match score inside
the budget."""

import jax
import numpy as np
import pytest

from mami_jax.apps.privacy import deform, objective
from mami_jax.apps.privacy.settings import load_config
from tests.test_privacy_perturb import setup, xray  # noqa: F401  (module fixtures)


def test_warp_by_whole_and_half_pixels():
    x = np.random.default_rng(0).random((2, 1, 6, 7, 1)).astype(np.float32)
    field = np.zeros((2, 1, 6, 7, 2), np.float32)
    np.testing.assert_allclose(deform.warp(x, field), x)
    field[..., 1] = 1.0        # read one pixel to the right; the last column repeats
    got = np.asarray(deform.warp(x, field))
    np.testing.assert_allclose(got[:, :, :, :-1], x[:, :, :, 1:])
    np.testing.assert_allclose(got[:, :, :, -1], x[:, :, :, -1])
    field[..., 1], field[..., 0] = 0.0, 0.5   # half a pixel down: the mean of two rows
    got = np.asarray(deform.warp(x, field))
    np.testing.assert_allclose(got[:, :, :-1], 0.5 * (x[:, :, :-1] + x[:, :, 1:]), atol=1e-6)


def test_control_grid_interpolates_linearly():
    m = deform.control_matrix(5, 3)     # control points on pixels 0, 2 and 4
    np.testing.assert_allclose(m, [[1, 0, 0], [.5, .5, 0], [0, 1, 0], [0, .5, .5], [0, 0, 1]])
    u = np.zeros((1, 1, 3, 3, 2), np.float32)
    u[0, 0, 1, 1, 0] = 2.0              # the middle control point moves 2 pixels down
    f = np.asarray(deform.dense_field(u, m, m))
    assert f[0, 0, 2, 2, 0] == 2.0 and f[0, 0, 1, 2, 0] == 1.0 and f[0, 0, 1, 1, 0] == 0.5
    assert np.all(f[..., 1] == 0)
    with pytest.raises(ValueError, match="deform.grid=1"):
        deform.control_matrix(5, 1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_field_is_scaled_into_the_budget(norm):
    rng = np.random.default_rng(1)
    x = rng.random((3, 1, 16, 16, 1)).astype(np.float32)
    m = deform.control_matrix(16, 4)
    u = rng.normal(0, 2.0, (3, 1, 4, 4, 2)).astype(np.float32)
    eps = 0.03
    fitted = np.asarray(deform.fit_to_budget(x, u, m, m, norm, eps))
    size = np.asarray(deform.change_size(deform.warp(x, deform.dense_field(fitted, m, m)) - x,
                                         norm))
    assert np.all(size <= eps) and np.all(size > 0.9 * eps), size   # on the boundary
    ratio = fitted / u
    np.testing.assert_allclose(ratio, ratio[:, :1, :1, :1, :1] * np.ones_like(ratio), rtol=1e-5)
    tiny = u * 1e-4                                                   # inside: unchanged
    np.testing.assert_allclose(deform.fit_to_budget(x, tiny, m, m, norm, eps), tiny)


def test_deformation_lowers_the_match_score_inside_the_budget(xray):  # noqa: F811
    member, imap, x0, offset, refs = xray.member, xray.imap, xray.x0, xray.offset, xray.refs
    pcfg = load_config("configs/privacy.py")
    pcfg.deform.grid, pcfg.deform.max_shift, pcfg.deform.step_size = 4, 4.0, 1.0
    eps = 0.08
    score = objective.make_member_score_fn(member.embed, imap, pcfg.perturb, 0)
    plain = jax.jit(objective.make_score_fn([member], imap, pcfg.perturb, 0))
    step = deform.make_step(score, x0.shape[2], x0.shape[3], pcfg.deform, "l2", eps)
    delta, u, history = deform.deform(step, [member.params], x0, offset, refs, 10,
                                      jax.random.key(0))
    assert history.shape == (10, len(x0))
    assert np.abs(u).max() <= 4.0 + 1e-6
    assert np.all(np.sqrt(np.mean(np.square(delta.reshape(len(x0), -1)), 1)) <= eps + 1e-6)
    before = np.asarray(plain([member.params], x0, offset, refs.arrays(), jax.random.key(0)))
    after = np.asarray(plain([member.params], x0 + delta, offset, refs.arrays(), jax.random.key(0)))
    assert after.mean() < before.mean() - 0.05, (before, after)
    # The change is a resampling of the original: a pixel moves within the range of its
    # neighbourhood, it does not take values the image does not have nearby.
    assert (x0 + delta).min() >= x0.min() - 1e-6 and (x0 + delta).max() <= x0.max() + 1e-6
