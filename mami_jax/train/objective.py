"""What is trained: MaMI plus the heads its loss terms read, and the loss of one batch.

``TrainModel(config, num_classes)`` builds MaMI under the parameter group ``"mami"``
and every head named by the configured loss terms (``loss_terms``, ``heads``) under
its own group; ``apply(variables, batch)`` returns ``{"mami": MaMIOutput, <head>:
dict}``. ``make_loss_fn`` turns it into ``loss(params, batch) -> (total, logs)`` that also
says, term by term, how many items a batch's value is a mean over (``Objective``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mami_jax.models import MaMI
from mami_jax.models.embed import example_images
from mami_jax.train import adversarial
from mami_jax.train import heads as heads_lib
from mami_jax.train import loss_terms
from mami_jax.train import losses


class TrainModel(nn.Module):
    config: ml_collections.ConfigDict   # the experiment config (model, loss, ...)
    num_classes: int                    # training identities (classifier rows)

    @nn.compact
    def __call__(self, batch: dict) -> dict:
        out = MaMI(self.config.model, name=heads_lib.MODEL_GROUP)(batch["images"])
        outputs = {heads_lib.MODEL_GROUP: out}
        for name in loss_terms.heads_needed(self.config.loss):
            head = heads_lib.head_spec(name).build(self.config, self.num_classes, name=name)
            outputs[name] = head(out, batch)
        return outputs


def example_batch(config) -> dict:
    """One image of every field the model and heads read at ``init`` (shapes only matter):
    the image, label and mask, and the fields the configured heads declare
    (``heads.HeadSpec.example_fields``)."""
    batch = {"images": example_images(config.model.image_size),
             "label": jnp.zeros((1,), jnp.int32), "mask": jnp.ones((1,), bool)}
    for name in loss_terms.heads_needed(config.loss):
        fields = heads_lib.head_spec(name).example_fields
        if fields is not None:
            batch.update(fields(config))
    return batch


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """``objective(params, batch) -> (total, logs)``, and ``item_counts(batch)``: for each
    configured term, the number of items its value is a mean over in that batch.

    The counts are what gradient accumulation (``train.step.loss_and_grads``) weights each
    microbatch's term by, so that a term's accumulated value is its mean over all the
    items the microbatches saw and not the plain mean of microbatch means (a microbatch of
    2 valid images counted as much as one of 8). They depend on the batch's labels and
    masks alone, not on the parameters."""
    loss_fn: Callable
    loss_cfg: Any

    def __call__(self, params, batch):
        return self.loss_fn(params, batch)

    def item_counts(self, batch: dict) -> dict:
        return term_item_counts(batch, self.loss_cfg)


def make_loss_fn(model: TrainModel, loss_cfg) -> Objective:
    """loss(params, batch) -> (total, logs): the configured terms on the model's outputs
    (at adversarially moved images when ``loss.adversarial_rms`` > 0: ``train/adversarial.py``),
    with the terms' item counts (``Objective``)."""

    def loss_fn(params, batch):
        outputs = model.apply({"params": params}, batch)
        return loss_terms.compute_terms(outputs, batch, loss_cfg)

    rms = float(loss_cfg.get("adversarial_rms", 0.0))
    return Objective(adversarial.adversarial_loss_fn(loss_fn, rms) if rms else loss_fn,
                     loss_cfg)


def valid_images(batch: dict, loss_cfg=None) -> jax.Array:
    """The batch's valid images (``mask`` True); all its images when it has no mask."""
    if "mask" not in batch:
        return jnp.asarray(jax.tree_util.tree_leaves(batch)[0].shape[0], jnp.float32)
    return jnp.sum(jnp.asarray(batch["mask"]).astype(jnp.float32))


def triplet_anchors(batch: dict, loss_cfg=None) -> jax.Array:
    """The anchors with a positive and a negative (``losses.triplet_anchors``)."""
    anchors = losses.triplet_anchors(batch["label"], batch.get("mask"))
    return jnp.sum(anchors.astype(jnp.float32))


def align_anchors(batch: dict, loss_cfg) -> jax.Array:
    """The InfoNCE anchors of the "align" term, summed over the teachers: for each teacher,
    its valid images (variant "single") or the pairs of them (variant "difference")."""
    total = jnp.zeros((), jnp.float32)
    mask = jnp.asarray(batch["mask"]).astype(bool)
    for name in sorted(batch["teacher_mask"]):
        have = jnp.sum((mask & jnp.asarray(batch["teacher_mask"][name]).astype(bool))
                       .astype(jnp.float32))
        total = total + (have if str(loss_cfg.align.variant) == "single"
                         else have * (have - 1.0) / 2.0)
    return total


#: For each term, the items its value is a mean over. "id" is exactly a mean over valid
#: images (except through the "batch_standardize" neck, whose statistics are the
#: batch's); "triplet" mines within the batch and "align" contrasts an anchor with the
#: batch's others, so neither is a mean of independent items and a microbatch's value
#: differs from what the whole batch gives; weighting by their anchors is still the
#: right way to average microbatch values. A term not listed counts valid images.
ITEM_COUNTS: dict[str, Callable] = {
    "id": valid_images,
    "triplet": triplet_anchors,
    "align": align_anchors,
}


def term_item_counts(batch: dict, loss_cfg) -> dict:
    """``{term: float32 count}`` for the configured terms (``ITEM_COUNTS``)."""
    return {name: ITEM_COUNTS.get(name, valid_images)(batch, loss_cfg)
            for name in loss_terms.configured_terms(loss_cfg)}
