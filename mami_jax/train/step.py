"""The train state and the jitted, donated, sharded update step.

One call of the step consumes one global batch of P x K images. With
``grad_accum_steps`` = A > 1 the batch is cut into A microbatches of whole
patients (the loader orders images patient by patient), gradients are summed
over a ``lax.scan`` and one optimizer update is made: memory grows with the
microbatch, not the batch. Each term's microbatch values are weighted by the items
they are means over (``loss_and_grads``), so masked images anywhere in the batch
leave the mean over the valid ones. (Batch-hard mining then sees one microbatch at a
time, as it would on a smaller device, and pairwise terms such as "align" pair images
within a microbatch; without accumulation the jitted step sees the global batch,
so pairs span every device of the mesh.)

NaN/inf guard: when the loss or the gradient norm is not finite the update is
not applied (the state keeps its last good values) and ``finite`` is False in
the returned metrics; the training loop stops there, naming the step.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mami_jax.train import objective
from mami_jax.train.objective import make_loss_fn
from mami_jax.train.optim import zero_frozen


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 scalar: number of updates applied
    params: Any            # {"mami": ..., <head group>: ...} (train/heads.py)
    opt_state: Any
    rng: jax.Array         # uint32 key data, folded with the step for any stochastic op


def _split_microbatches(batch: dict, num: int) -> dict:
    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num} microbatches")
        return x.reshape((num, x.shape[0] // num) + x.shape[1:])
    return jax.tree_util.tree_map(split, batch)


def loss_and_grads(loss_fn, params, batch, accum_steps: int = 1):
    """Loss, logs and gradients of the batch, in one pass or over ``accum_steps``
    microbatches.

    Under accumulation a term's value is the mean of its microbatch values weighted by
    the items each is a mean over (``loss_fn.item_counts``, see ``objective.Objective``;
    valid images for a loss function without it): 16 images of which 10 valid, with the
    6 skipped ones in the first of two microbatches, give the mean over the 10 and not
    the plain mean of a mean over 2 and one over 8. For a term that is a mean of
    independent items (the identity cross-entropy without the batch-statistics neck)
    loss and gradient then equal the whole batch's; for one that mines or contrasts
    within the batch (triplet, align) the microbatch values differ from the whole
    batch's anyway and this weighting is still the right way to average them. A
    microbatch without items contributes 0 (the losses give 0, not NaN, with nothing
    valid). "total" is the sum of the accumulated weighted terms."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, logs), grads = grad_fn(params, batch)
        return loss, logs, grads

    micro = _split_microbatches(batch, accum_steps)
    shares = _microbatch_shares(loss_fn, micro)
    weighted_grad_fn = jax.value_and_grad(_weighted_loss(loss_fn), has_aux=True)

    def body(carry, xs):
        one, share = xs
        (loss, logs), grads = weighted_grad_fn(params, one, share)
        return jax.tree_util.tree_map(jnp.add, carry, (loss, logs, grads)), None

    first = jax.tree_util.tree_map(lambda x: x[0], (micro, shares))
    (loss_shape, logs_shape), grads_shape = jax.eval_shape(weighted_grad_fn, params, *first)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   (loss_shape, logs_shape, grads_shape))
    total, _ = jax.lax.scan(body, zeros, (micro, shares))
    return total


def _microbatch_shares(loss_fn, micro: dict) -> tuple[dict, jax.Array]:
    """Each microbatch's items over the batch's, as (A,) float32 (0 where the batch has
    none): ``{term: shares}`` from ``loss_fn.item_counts``, and the shares of valid
    images, for a loss function without item counts and for logs of no term."""
    counts_fn = getattr(loss_fn, "item_counts", lambda batch: {})

    def counts(one):
        return counts_fn(one), objective.valid_images(one)

    def share(c):
        return c / jnp.maximum(jnp.sum(c), 1.0)

    return jax.tree_util.tree_map(share, jax.vmap(counts)(micro))


def _weighted_loss(loss_fn):
    """(params, microbatch, shares) -> (loss, logs) with every term's value and weighted
    value scaled by its share (``_microbatch_shares``), so that summing over microbatches
    gives the batch's weighted means; the loss is the sum of the scaled weighted terms.
    Without term shares, loss and logs are scaled by the share of valid images."""
    def weighted(params, micro, shares):
        term_shares, image_share = shares
        total, logs = loss_fn(params, micro)
        out = {key: value * term_shares.get(_term_of(key, term_shares), image_share)
               for key, value in logs.items()}
        if not term_shares:
            return total * image_share, out
        loss = sum(out[f"{name}_weighted"] for name in sorted(term_shares))
        if "total" in out:
            out["total"] = loss
        return loss, out
    return weighted


def _term_of(log_key: str, terms) -> str | None:
    """The term a log belongs to ("id" and "id_weighted": "id"); None for other logs."""
    for name in terms:
        if log_key in (name, f"{name}_weighted"):
            return name
    return None


def make_train_step(model, optimizer: optax.GradientTransformation, loss_cfg,
                    accum_steps: int = 1, lr_schedule=None, freeze: tuple = ()):
    """A pure step(state, batch) -> (state, metrics); jit it with shardings and donation.
    ``freeze``: ``optim.freeze``'s patterns; those parameters' gradients are left out of
    the norm that clips and is logged (``optim.zero_frozen``)."""
    loss_fn = make_loss_fn(model, loss_cfg)
    freeze = tuple(freeze)

    def step(state: TrainState, batch: dict):
        loss, logs, grads = loss_and_grads(loss_fn, state.params, batch, accum_steps)
        grads = zero_frozen(grads, freeze)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        def apply_update(s: TrainState) -> TrainState:
            updates, opt_state = optimizer.update(grads, s.opt_state, s.params,
                                                  grad_norm=grad_norm)
            return s.replace(step=s.step + 1, params=optax.apply_updates(s.params, updates),
                             opt_state=opt_state)

        # A conditional, not a select of new and old values: with the state donated, a
        # select keeps the old parameters and optimiser moments alive beside the new ones,
        # so XLA copies every donated buffer; the conditional updates them in place.
        new_state = jax.lax.cond(finite, apply_update, lambda s: s, state)
        metrics = dict(logs, loss=loss, grad_norm=grad_norm, finite=finite,
                       valid_images=batch["mask"].sum())
        if lr_schedule is not None:
            metrics["learning_rate"] = lr_schedule(state.step)
        return new_state, metrics

    return step
