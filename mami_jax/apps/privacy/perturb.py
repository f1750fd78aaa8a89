"""Bounded perturbation against an ensemble of re-ID models (identity removal, method a).

Projected gradient descent on the match score (``objective``) with momentum (MI-FGSM,
Dong et al. 2018: normalised gradients accumulated over steps, which transfer better to
models not optimised against) and expectation over random views. The change ``delta``
of the unit pixels ([0, 1]) stays inside its budget after every step:

- ``linf``: ``|delta| <= epsilon`` per pixel;
- ``l2``: ``||delta||_2 <= epsilon * sqrt(N)`` per image (N its pixel count), so epsilon
  is a root-mean-square change and either norm gives PSNR >= 20 log10(1 / epsilon);

and ``x + delta`` stays in [0, 1]. ``mask`` (optional, 1 = may change) confines it.

``smooth`` > 0 convolves each step's gradient with a Gaussian of that sigma (native
pixels, per slice and channel, reflected at the border) before it is normalised and
accumulated: the translation-invariant attack (TI-FGSM, Dong et al. 2019), whose
low-frequency changes are meant to transfer better to models not optimised against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.apps.privacy.references import member_refs

NORMS = ("linf", "l2")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"perturb.norm={norm!r}: expected one of {NORMS}")


def project(delta, norm: str, epsilon: float):
    """The closest change inside the budget (per image along axis 0)."""
    check_norm(norm)
    if norm == "linf":
        return jnp.clip(delta, -epsilon, epsilon)
    axes = tuple(range(1, delta.ndim))
    n = np.prod(delta.shape[1:])
    radius = epsilon * np.sqrt(n)
    length = jnp.sqrt(jnp.sum(jnp.square(delta), axis=axes, keepdims=True))
    return delta * jnp.minimum(1.0, radius / jnp.maximum(length, 1e-12))


def budget_used(delta: np.ndarray, norm: str, epsilon: float) -> np.ndarray:
    """Per image: the norm of ``delta`` over the budget (<= 1 inside it)."""
    d = np.asarray(delta, np.float64).reshape(len(delta), -1)
    if norm == "linf":
        return np.abs(d).max(1) / epsilon
    return np.sqrt(np.square(d).sum(1)) / (epsilon * np.sqrt(d.shape[1]))


def gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix M with (M @ v) = ``v`` convolved with a normalised Gaussian of
    ``sigma`` samples, truncated at 4 sigma, reflected at both ends as
    ``scipy.ndimage.gaussian_filter(mode="reflect")`` (d c b a | a b c d | d c b a)."""
    radius = int(4.0 * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    weights /= weights.sum()
    m = np.zeros((size, size), np.float64)
    period = 2 * size
    for i in range(size):
        for k, w in zip(offsets, weights):
            j = (i + k) % period
            m[i, j if j < size else period - 1 - j] += w
    return m.astype(np.float32)


def smooth_gradient(g, sigma: float):
    """``g`` (B, T, H, W, C) with every (H, W) plane Gaussian-smoothed (``gaussian_matrix``);
    ``g`` itself when ``sigma`` <= 0."""
    if float(sigma) <= 0:
        return g
    mh = jnp.asarray(gaussian_matrix(g.shape[2], sigma))
    mw = jnp.asarray(gaussian_matrix(g.shape[3], sigma))
    g = jnp.einsum("ij,btjwc->btiwc", mh, g, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("ij,bthjc->bthic", mw, g, precision=jax.lax.Precision.HIGHEST)


def make_member_grad(member_score):
    """Jitted (delta, params, x0, offset, member refs, key) -> (d score sum / d delta,
    score (B,)) of one member's score function (``objective.make_member_score_fn``:
    (params, x, offset, refs, key, clean) with the original image as ``clean``)."""
    def total_score(delta, params, x0, offset, refs, key):
        s = member_score(params, x0 + delta, offset, refs, key, clean=x0)
        return s.sum(), s
    return jax.jit(jax.grad(total_score, has_aux=True))


def mean_abs_normalised(g):
    """``g`` scaled to mean |g| 1 per image (how a step's gradient enters the momentum)."""
    axes = tuple(range(1, g.ndim))
    return g / (jnp.mean(jnp.abs(g), axis=axes, keepdims=True) + 1e-12)


_balanced = jax.jit(mean_abs_normalised)

WEIGHTINGS = ("mean", "balanced", "hardest")


def check_weighting(weighting: str, key: str = "perturb.member_weighting") -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{key}={weighting!r}: expected one of {WEIGHTINGS}")


def weighting_for(cfg_perturb, modality: str) -> str:
    """How ``modality``'s members' gradients combine: ``perturb.modality_member_weighting
    [modality]`` where given, else ``perturb.member_weighting``. An ensemble of two model
    families (fine-tunes of two backbones, X-ray's) can leave the family with the smaller
    gradients unprotected under the plain mean, so a recipe can balance one modality."""
    by_modality = dict(cfg_perturb.get("modality_member_weighting", {}) or {})
    name = str(by_modality.get(modality, cfg_perturb.get("member_weighting", "mean")))
    check_weighting(name, f"perturb.modality_member_weighting[{modality!r}]"
                    if modality in by_modality else "perturb.member_weighting")
    return name


def ensemble_grad(member_grad, params_list, x0, delta, offset, ref_arrays, key,
                  weighting: str = "mean", temperature: float = 0.05):
    """(gradient, score (B,)) of the ensemble's match score, from every member's
    ``member_grad`` (``make_member_grad``) with that member's parameters, references and
    key (``key`` split as ``objective.make_score_fn`` splits it). One compilation serves
    every member: they share a model config. The score is always the members' mean.

    ``weighting`` combines the members' gradients, per image:

    - ``mean``: their mean, the gradient of the mean score (a member whose score moves
      fastest has the largest gradient and leads);
    - ``balanced``: each first scaled to mean |g| 1, then averaged, so every member
      steers equally whatever its gradient's size;
    - ``hardest``: balanced, then weighted by a softmax of the members' scores at
      ``temperature``: the members that still match the image steer most, the soft form of
      minimising the largest score (all members fooled, not their mean)."""
    check_weighting(weighting)
    keys = jax.random.split(key, len(params_list))
    grads, scores = [], []
    for m, params in enumerate(params_list):
        g, s = member_grad(delta, params, x0, offset, member_refs(ref_arrays, m), keys[m])
        grads.append(g)
        scores.append(s)
    score = sum(scores) / len(scores)
    if weighting == "mean":
        return sum(grads) / len(grads), score
    return _combine(grads, jnp.stack(scores), weighting == "hardest", float(temperature)), score


def _combine(grads, scores, hardest: bool, temperature: float):
    """Balanced members' gradients averaged with weights (M, B): equal, or a softmax of
    ``scores`` (M, B) over the members."""
    if hardest:
        if not temperature > 0:
            raise ValueError(f"perturb.hardest_temperature={temperature!r}: must be > 0")
        weights = jax.nn.softmax(scores / temperature, axis=0)
    else:
        weights = jnp.full(scores.shape, 1.0 / len(grads))
    total = 0.0
    for g, w in zip(grads, weights):
        total = total + _balanced(g) * w.reshape((-1,) + (1,) * (g.ndim - 1))
    return total


def direction(v, norm: str):
    """The unit move along ``v`` per image: its sign for ``linf``, ``v`` scaled to
    root-mean-square 1 for ``l2`` (so a step of ``step_size`` is in the budget's units)."""
    if norm == "linf":
        return jnp.sign(v)
    axes = tuple(range(1, v.ndim))
    n = np.prod(v.shape[1:])
    return v * np.sqrt(n) / (jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True)) + 1e-12)


def moved(delta, move, x0, norm: str, epsilon: float):
    """``delta + move`` projected into the budget, with ``x0 + delta`` kept in [0, 1]."""
    delta = project(delta + move, norm, epsilon)
    return jnp.clip(x0 + delta, 0.0, 1.0) - x0


def make_keep_grad(keep_change):
    """Jitted (delta, params, x0, offset, key) -> d sum(keep_change) / d delta, for a
    term (``diagnosis_keep.DiagnosisKeeper.change_fn``) that compares the image with the
    original ``x0``."""
    def total(delta, params, x0, offset, key):
        return keep_change(params, x0 + delta, offset, x0, key).sum()
    return jax.jit(jax.grad(total))


def make_step(member_score, norm: str, epsilon: float, step_size: float, momentum: float,
              smooth: float = 0.0, keep_changes=(), weighting: str = "mean",
              temperature: float = 0.05):
    """One PGD step against an ensemble: (params list, x0, delta, velocity, mask, offset,
    ``References.arrays()``, key) -> (delta, velocity, ensemble score before the step).
    ``smooth``: sigma (native pixels) of the gradient's Gaussian smoothing (0: none).

    ``member_score`` is ONE member's score function (``objective.make_member_score_fn``);
    the step combines its gradients over the members (``ensemble_grad``, by ``weighting``). ``keep_changes``:
    (member index, term) pairs, each term (params, x, offset, x0, key) -> (B,) minimised
    beside it with that member's parameters (e.g. the change of the diagnosis a classifier
    of that member reads), averaged over the pairs."""
    check_norm(norm)
    check_weighting(weighting)
    if not float(smooth) >= 0:
        raise ValueError(f"perturb.smooth={smooth!r}: a Gaussian sigma in pixels, >= 0 "
                         f"(0: no smoothing)")
    member_grad = make_member_grad(member_score)
    keep_grads = [(m, make_keep_grad(change)) for m, change in keep_changes]

    @jax.jit
    def update(g, delta, velocity, mask, x0):
        velocity = momentum * velocity + mean_abs_normalised(smooth_gradient(g, smooth) * mask)
        return moved(delta, -step_size * direction(velocity, norm) * mask, x0, norm,
                     epsilon), velocity

    def step(params_list, x0, delta, velocity, mask, offset, ref_arrays, key):
        g, s = ensemble_grad(member_grad, params_list, x0, delta, offset, ref_arrays, key,
                             weighting, temperature)
        for m, keep_grad in keep_grads:
            g = g + keep_grad(delta, params_list[m], x0, offset, key) / len(keep_grads)
        delta, velocity = update(g, delta, velocity, mask, x0)
        return delta, velocity, s
    return step


_zeros2 = jax.jit(lambda b: (jnp.zeros_like(b), jnp.zeros_like(b)))
_ones = jax.jit(jnp.ones_like)


def perturb(step, params, x0, offset, refs, steps: int, key, mask=None, start=None):
    """``steps`` PGD steps of ``step`` (``make_step``); returns (delta, score per step (steps, B)).

    ``start``: an initial change (e.g. inpainting) kept outside the budget; the budget
    applies to what PGD adds on top of it."""
    base = np.asarray(x0 if start is None else np.clip(x0 + start, 0.0, 1.0), np.float32)
    # Made by jit, so they are placed as the step's own outputs are: the step then
    # compiles once (uncommitted inputs on the first call would compile it twice).
    delta, velocity = _zeros2(base)
    mask = _ones(base) if mask is None else jnp.asarray(mask, jnp.float32)
    history = []
    arrays = refs.arrays()
    for _ in range(int(steps)):
        key, sub = jax.random.split(key)
        delta, velocity, s = step(params, base, delta, velocity, mask, offset, arrays, sub)
        history.append(np.asarray(s))
    out = np.asarray(base + delta - np.asarray(x0, np.float32), np.float32)
    return out, np.stack(history) if history else np.zeros((0, len(base)))
