"""The adversarial deformation's pieces (``apps.privacy.deform``): the bilinear warp moves
pixels by the field (hand-worked shifts), the control grid interpolates linearly, and the
field is scaled into the budget. (That it lowers a tiny model's match score inside the
budget is tested beside the additive perturbation, in test_privacy_perturb.py.)"""

import numpy as np
import pytest

from mami_jax.apps.privacy import deform


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
