"""Adversarial training: the loss taken at the worst input near each image (one step).

With ``loss.adversarial_rms`` = r > 0 each training image x is replaced by
x + r g / rms(g), where g is the gradient of the batch loss with respect to that image's
model input and rms its root-mean-square over the image's values: one normalised
gradient step of root-mean-square r (in model-input units, after the input
normalisation), the single-step l2 attack of adversarial training (Madry et al. 2018, in
its one-step form). The parameters' gradient is taken at the moved images, with the move
held fixed.

Why a re-ID project trains like this: a model made a little robust matches on features
that independently trained models share. Changes optimised against such a model carry
over to models they never saw far better than changes optimised against a normally
trained one (Springer et al. 2021, "A little robustness goes a long way"), which is what
privacy protection needs (``apps/privacy``, docs/privacy_experiments.md). Each step costs about two
forward and backward passes instead of one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def worst_case_images(loss_fn, params, batch: dict, rms: float):
    """``batch["images"]`` moved by ``rms`` along the per-image normalised gradient of
    ``loss_fn(params, batch)[0]``; images whose ``batch["mask"]`` is False stay as they
    are. The move carries no gradient."""
    def loss_of(images):
        return loss_fn(params, dict(batch, images=images))[0]
    images = batch["images"]
    g = jax.grad(loss_of)(images)
    axes = tuple(range(1, g.ndim))
    size = jnp.sqrt(jnp.mean(jnp.square(g), axis=axes, keepdims=True))
    move = rms * g / (size + 1e-12)
    mask = batch["mask"].reshape((-1,) + (1,) * (g.ndim - 1)).astype(move.dtype)
    return images + jax.lax.stop_gradient(move * mask)


def adversarial_loss_fn(loss_fn, rms: float):
    """loss(params, batch) -> (total, logs) of ``loss_fn`` at ``worst_case_images``."""
    if not rms > 0:
        raise ValueError(f"loss.adversarial_rms={rms!r}: must be > 0 (0 turns it off)")

    def robust(params, batch):
        moved = worst_case_images(loss_fn, params, batch, rms)
        return loss_fn(params, dict(batch, images=moved))
    return robust
