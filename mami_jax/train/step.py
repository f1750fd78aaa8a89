"""The train state and the jitted, donated, sharded update step.

One call of the step consumes one global batch of P x K images. With
``grad_accum_steps`` = A > 1 the batch is cut into A microbatches of whole
patients (the loader orders images patient by patient), gradients are summed
over a ``lax.scan`` and one optimizer update is made: memory grows with the
microbatch, not the batch. (Batch-hard mining then sees one microbatch at a time,
as it would on a smaller device, and pairwise terms such as "align" pair images
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
    """Mean loss, logs and gradients over ``accum_steps`` microbatches."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, logs), grads = grad_fn(params, batch)
        return loss, logs, grads

    def body(carry, micro):
        (loss, logs), grads = grad_fn(params, micro)
        acc = jax.tree_util.tree_map(jnp.add, carry, (loss, logs, grads))
        return acc, None

    micro = _split_microbatches(batch, accum_steps)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    (loss_shape, logs_shape), grads_shape = jax.eval_shape(grad_fn, params, first)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   (loss_shape, logs_shape, grads_shape))
    total, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree_util.tree_map(lambda x: x / accum_steps, total)


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
