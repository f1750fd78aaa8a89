"""t-SNE (van der Maaten and Hinton, 2008): a 2-D map of embeddings for a picture.

Exact t-SNE, every pair of points: meant for the few thousand points a picture can show
(``embedding_map`` samples whole patients down to that), where it is a jitted step of a
few n x n arrays. Neighbours are measured as the model compares embeddings, by cosine:
the embeddings are L2-normalised first.

- affinities: each point's Gaussian bandwidth is found by bisection so that its
  neighbour distribution has the requested perplexity (an effective number of
  neighbours), then symmetrised, ``p_ij = (p_j|i + p_i|j) / 2n``;
- the map: Student-t similarities ``q_ij``, gradient descent on KL(P || Q) (gradient by
  ``jax.grad``), with the usual schedule: early exaggeration of P (x12 for 250 steps,
  momentum 0.5), then momentum 0.8; per-coordinate gains; learning rate
  ``max(n / 12 / 4, 50)``. It starts from the first two principal components (scaled to
  a small spread), so the map is the same on every run and keeps the global layout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

PERPLEXITY = 30.0
EXAGGERATION = 12.0
EXAGGERATED_STEPS = 250
STEPS = 1000
#: Bisection steps of each point's bandwidth (log2 of the precision range covered).
BANDWIDTH_STEPS = 100


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def squared_distances(x: np.ndarray) -> np.ndarray:
    sq = np.sum(x * x, axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def conditional_affinities(d: np.ndarray, perplexity: float) -> np.ndarray:
    """``p_j|i`` from squared distances ``d`` (n, n): row i a Gaussian around point i
    whose entropy is ``log(perplexity)``; the diagonal is 0."""
    n = d.shape[0]
    target = np.log(perplexity)
    d = d - np.min(d + np.diag(np.full(n, np.inf)), axis=1, keepdims=True)  # shift-invariant
    beta, lo, hi = np.ones(n), np.zeros(n), np.full(n, np.inf)
    off = ~np.eye(n, dtype=bool)
    for _ in range(BANDWIDTH_STEPS):
        p = np.where(off, np.exp(-d * beta[:, None]), 0.0)
        total = p.sum(axis=1)
        entropy = np.log(total) + beta * (p * d).sum(axis=1) / total
        wide = entropy > target               # too many neighbours: narrow the Gaussian
        lo = np.where(wide, beta, lo)
        hi = np.where(wide, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    return p / total[:, None]


def joint_affinities(x: np.ndarray, perplexity: float = PERPLEXITY) -> np.ndarray:
    """Symmetric ``p_ij`` of points ``x`` (n, dim), summing to 1; the perplexity is capped
    at (n - 1) / 3, as no point has more neighbours than that to spread over."""
    n = len(x)
    perplexity = min(perplexity, (n - 1) / 3.0)
    p = conditional_affinities(squared_distances(normalized(x)), perplexity)
    return np.maximum((p + p.T) / (2.0 * n), 1e-12)


def kl_divergence(y: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
    """KL(P || Q) of the map ``y`` (n, 2), with Student-t ``q_ij`` (the diagonal left out)."""
    n = y.shape[0]
    sq = jnp.sum(y * y, axis=1)
    w = 1.0 / (1.0 + jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * y @ y.T, 0.0))
    w = w * (1.0 - jnp.eye(n, dtype=y.dtype))
    q = jnp.maximum(w / jnp.sum(w), 1e-12)
    p = jnp.maximum(p, 1e-12)               # 0 log 0 = 0, not nan
    return jnp.sum(p * (jnp.log(p) - jnp.log(q)))


@functools.partial(jax.jit, static_argnames=("steps",))
def _descend(y, p, learning_rate, steps: int):
    grad = jax.grad(kl_divergence)

    def step(k, carry):
        y, update, gains = carry
        early = k < EXAGGERATED_STEPS
        g = grad(y, jnp.where(early, EXAGGERATION, 1.0) * p)
        gains = jnp.where(jnp.sign(g) != jnp.sign(update), gains + 0.2, gains * 0.8)
        gains = jnp.maximum(gains, 0.01)
        update = jnp.where(early, 0.5, 0.8) * update - learning_rate * gains * g
        return y + update, update, gains

    y, _, _ = jax.lax.fori_loop(0, steps, step, (y, jnp.zeros_like(y), jnp.ones_like(y)))
    return y


def principal_start(x: np.ndarray) -> np.ndarray:
    """The first two principal components of ``x``, scaled to a spread of 1e-4."""
    x = normalized(x)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    y = x @ vt[:2].T
    if y.shape[1] < 2:
        y = np.pad(y, ((0, 0), (0, 2 - y.shape[1])))
    return y / max(float(np.std(y[:, 0])), 1e-12) * 1e-4


def tsne(x: np.ndarray, perplexity: float = PERPLEXITY, steps: int = STEPS) -> np.ndarray:
    """The 2-D map (n, 2) of the rows of ``x`` (n, dim), n >= 4."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 points in rows; got an array of shape {x.shape}")
    p = jnp.asarray(joint_affinities(x, perplexity), jnp.float32)
    y0 = jnp.asarray(principal_start(x), jnp.float32)
    learning_rate = max(len(x) / EXAGGERATION / 4.0, 50.0)
    return np.asarray(_descend(y0, p, jnp.float32(learning_rate), steps))
