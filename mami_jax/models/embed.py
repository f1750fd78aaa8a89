"""Jitted embedding of preprocessed images, shared by training-time evaluation,
the eval/embed modes and ``mami_jax.inference``.

One compiled function per model config: ``make_embed_fn(cfg)(params)`` closes over
the parameters, so every batch of the same shape reuses the same executable.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.models.mami import MaMI


def example_images(image_size: int) -> jax.Array:
    """One blank 2-D image (1, 1, size, size, 3): enough for ``init`` and ``eval_shape``."""
    size = int(image_size)
    return jnp.zeros((1, 1, size, size, 3), jnp.float32)


def abstract_params(model_cfg, image_size: int):
    """MaMI's parameter shapes for ``model_cfg`` (ShapeDtypeStructs, nothing allocated)."""
    return jax.eval_shape(
        lambda: MaMI(model_cfg).init(jax.random.key(0), example_images(image_size))["params"])


def make_embed_fn(model_cfg):
    """params -> (batch with "images" -> embeddings (B, C))."""
    mami = MaMI(model_cfg)

    @jax.jit
    def embed(params, batch):
        return mami.apply({"params": params}, batch["images"]).embedding

    return lambda params: functools.partial(embed, params)


def make_embedding_and_pooled_fn(model_cfg):
    """(params, batch with "images") -> (B, C + D): the re-ID embedding followed by the
    mean-pooled local map. The applications read both: retrieval uses the embedding,
    diagnosis probes the pooled features, which the re-ID head was trained to make
    invariant to visit changes only in its output."""
    mami = MaMI(model_cfg)

    @jax.jit
    def features(params, batch):
        return jnp.concatenate(embedding_and_pooled(mami, params, batch["images"]), axis=-1)

    return features


def embedding_and_pooled(mami, params, images):
    """(float32 embedding (B, C), float32 mean-pooled local map (B, D)) of one forward pass
    of ``mami``; traceable, for callers that differentiate through it."""
    out = mami.apply({"params": params}, images)
    return (out.embedding.astype(jnp.float32),
            out.local_map.astype(jnp.float32).mean(axis=(1, 2)))


def centred(unit, center):
    """Unit embeddings minus ``center``, renormalised (numpy or jax arrays).

    A re-ID model's embeddings share a large common direction, so raw cosine similarities
    all lie near 1; both applications score in the space with that direction removed.
    """
    xp = np if isinstance(unit, np.ndarray) else jnp
    c = unit - center
    return c / (xp.linalg.norm(c, axis=-1, keepdims=True) + 1e-8)
