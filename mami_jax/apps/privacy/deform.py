"""Adversarial deformation (identity removal by moving anatomy, not by adding a pattern).

A bounded additive perturbation (``perturb``) changes what one set of re-ID models
matches on, but a model trained independently matches on its own fine features and is
hardly moved (X-ray, docs/privacy_experiments.md). What every model of a modality must
match on is the anatomy's geometry: on a chest X-ray the lung fields, the cardiac
borders, the rib spacing. This method moves it: a smooth displacement field, optimised against the
ensemble's match score, resamples the image (as PriCheXy-Net's learned deformation does,
here optimised per image instead of learned).

The field is given on a coarse grid of ``grid`` x ``grid`` control points per slice (in
native pixels) and interpolated bilinearly to every pixel, so it is smooth by
construction; each control point moves at most ``max_shift`` pixels. The image is
resampled bilinearly (edges replicated). The budget is the same as the additive
perturbation's: the root-mean-square change of the unit pixels (``l2``) or their largest
change (``linf``) at most ``epsilon`` (PSNR >= 20 log10(1 / epsilon)). After every step
the field is scaled down, per image, until the warped image is inside the budget
(bisection on the scale), so a move is spent where it costs little intensity change
(inside smooth regions) or where it removes identity.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.apps.privacy import perturb

#: Bisection steps of the field's scale when it is fitted to the budget (precision 2^-14).
BUDGET_BISECTIONS = 14


@functools.lru_cache(maxsize=32)
def control_matrix(size: int, points: int) -> np.ndarray:
    """(size, points) linear interpolation from ``points`` control values spread evenly
    over pixels 0 .. size-1 (the first and last on the border pixels) to every pixel."""
    if points < 2:
        raise ValueError(f"deform.grid={points}: at least 2 control points per side")
    pos = np.linspace(0.0, points - 1.0, size)
    lo = np.minimum(np.floor(pos).astype(int), points - 2)
    w = pos - lo
    m = np.zeros((size, points), np.float32)
    m[np.arange(size), lo] = 1.0 - w
    m[np.arange(size), lo + 1] = w
    return m


def dense_field(u, mh, mw):
    """(B, T, gh, gw, 2) control displacements -> (B, T, H, W, 2) per-pixel ones."""
    return jnp.einsum("hi,btijc,wj->bthwc", mh, u, mw, precision=jax.lax.Precision.HIGHEST)


def warp(x, field):
    """``x`` (B, T, H, W, C) resampled bilinearly at pixel (i + dy, j + dx), ``field``
    (B, T, H, W, 2) holding (dy, dx) in pixels; reads outside the image take the nearest
    border pixel. Differentiable in ``field``."""
    b, t, h, w, c = x.shape
    ii = jnp.arange(h, dtype=jnp.float32)[:, None]
    jj = jnp.arange(w, dtype=jnp.float32)[None, :]
    y = jnp.clip(ii + field[..., 0], 0.0, h - 1.0)
    z = jnp.clip(jj + field[..., 1], 0.0, w - 1.0)
    y0 = jnp.clip(jnp.floor(y), 0, h - 2).astype(jnp.int32) if h > 1 else jnp.zeros_like(y, jnp.int32)
    z0 = jnp.clip(jnp.floor(z), 0, w - 2).astype(jnp.int32) if w > 1 else jnp.zeros_like(z, jnp.int32)
    wy = (y - y0)[..., None]
    wz = (z - z0)[..., None]
    flat = x.reshape(b, t, h * w, c)

    def at(yi, zi):
        idx = (yi * w + zi).reshape(b, t, h * w, 1)
        return jnp.take_along_axis(flat, idx, axis=2).reshape(b, t, h, w, c)
    y1 = jnp.minimum(y0 + 1, h - 1)
    z1 = jnp.minimum(z0 + 1, w - 1)
    top = at(y0, z0) * (1 - wz) + at(y0, z1) * wz
    bottom = at(y1, z0) * (1 - wz) + at(y1, z1) * wz
    return top * (1 - wy) + bottom * wy


def change_size(delta, norm: str):
    """(B,) size of a change in the budget's units: RMS (l2) or the largest |change| (linf)."""
    axes = tuple(range(1, delta.ndim))
    if norm == "linf":
        return jnp.max(jnp.abs(delta), axis=axes)
    return jnp.sqrt(jnp.mean(jnp.square(delta), axis=axes))


def fit_to_budget(x0, u, mh, mw, norm: str, epsilon: float):
    """``u`` scaled per image by the largest factor in [0, 1] (to 2^-14) whose warp of
    ``x0`` changes it by at most ``epsilon``."""
    def size_at(scale):
        f = dense_field(u * scale[:, None, None, None, None], mh, mw)
        return change_size(warp(x0, f) - x0, norm)

    ones = jnp.ones(u.shape[0], jnp.float32)
    inside = size_at(ones) <= epsilon

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = size_at(mid) <= epsilon
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)
    lo, _ = jax.lax.fori_loop(0, BUDGET_BISECTIONS, bisect, (0.0 * ones, ones))
    scale = jnp.where(inside, 1.0, lo)
    return u * scale[:, None, None, None, None]


def make_step(member_score, height: int, width: int, cfg_deform, norm: str, epsilon: float,
              weighting: str = "mean", temperature: float = 0.05):
    """One step against an ensemble: (params list, x0, u, velocity, slice mask (B, T),
    offset, ``References.arrays()``, key) -> (u, velocity, ensemble score before the step).

    ``member_score``: ONE member's score function (``objective.make_member_score_fn``), its
    gradients over the members combined by ``perturb.ensemble_grad`` (``weighting``), as for
    the additive change. The step follows the momentum of RMS-normalised gradients (MI-FGSM) by
    ``cfg_deform.step_size`` pixels (RMS over the control points), clips each control
    point to ``max_shift`` pixels and fits the field to the budget."""
    perturb.check_norm(norm)
    grid = int(cfg_deform.grid)
    mh = jnp.asarray(control_matrix(height, grid))
    mw = jnp.asarray(control_matrix(width, grid))
    step_size, momentum = float(cfg_deform.step_size), float(cfg_deform.momentum)
    max_shift = float(cfg_deform.max_shift)
    if not max_shift > 0 or not step_size > 0:
        raise ValueError(f"deform.max_shift={max_shift!r}, deform.step_size={step_size!r}: "
                         f"both must be > 0 (pixels)")

    def total_score(u, params, x0, offset, refs, key):
        s = member_score(params, warp(x0, dense_field(u, mh, mw)), offset, refs, key, clean=x0)
        return s.sum(), s
    member_grad = jax.jit(jax.grad(total_score, has_aux=True))

    @jax.jit
    def update(g, u, velocity, slice_mask, x0):
        g = g * slice_mask[:, :, None, None, None]
        axes = tuple(range(1, g.ndim))
        g = g / (jnp.sqrt(jnp.mean(jnp.square(g), axis=axes, keepdims=True)) + 1e-12)
        velocity = momentum * velocity + g
        move = velocity / (jnp.sqrt(jnp.mean(jnp.square(velocity), axis=axes, keepdims=True))
                           + 1e-12)
        u = jnp.clip(u - step_size * move, -max_shift, max_shift)
        u = u * slice_mask[:, :, None, None, None]
        return fit_to_budget(x0, u, mh, mw, norm, epsilon), velocity

    def step(params_list, x0, u, velocity, slice_mask, offset, ref_arrays, key):
        g, s = perturb.ensemble_grad(member_grad, params_list, x0, u, offset, ref_arrays, key,
                                     weighting, temperature)
        u, velocity = update(g, u, velocity, slice_mask, x0)
        return u, velocity, s

    step.apply = jax.jit(lambda x0, u: warp(x0, dense_field(u, mh, mw)))
    step.grid = grid
    return step


def deform(step, params, x0, offset, refs, steps: int, key, slice_mask=None):
    """``steps`` steps of ``step`` (``make_step``) from no displacement; returns (the
    change warp(x0) - x0 (B, T, H, W, C), control displacements (B, T, g, g, 2) in
    pixels, score per step (steps, B))."""
    x0 = np.asarray(x0, np.float32)
    b, t = x0.shape[:2]
    u = jnp.zeros((b, t, step.grid, step.grid, 2), jnp.float32)
    velocity = jnp.zeros_like(u)
    slice_mask = (jnp.ones((b, t), jnp.float32) if slice_mask is None
                  else jnp.asarray(slice_mask, jnp.float32))
    arrays = refs.arrays()
    history = []
    for _ in range(int(steps)):
        key, sub = jax.random.split(key)
        u, velocity, s = step(params, x0, u, velocity, slice_mask, offset, arrays, sub)
        history.append(np.asarray(s))
    warped = np.asarray(step.apply(x0, u), np.float32)
    return (np.clip(warped, 0.0, 1.0) - x0, np.asarray(u),
            np.stack(history) if history else np.zeros((0, b)))
