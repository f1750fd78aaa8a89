"""What is trained: MaMI plus the heads its loss terms read, and the loss of one batch.

``TrainModel(config, num_classes)`` builds MaMI under the parameter group ``"mami"``
and every head named by the configured loss terms (``loss_terms``, ``heads``) under
its own group; ``apply(variables, batch)`` returns ``{"mami": MaMIOutput, <head>:
dict}``. ``make_loss_fn`` turns it into ``loss(params, batch) -> (total, logs)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mami_jax.models import MaMI
from mami_jax.models.embed import example_images
from mami_jax.train import adversarial
from mami_jax.train import heads as heads_lib
from mami_jax.train import loss_terms


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


def make_loss_fn(model: TrainModel, loss_cfg):
    """loss(params, batch) -> (total, logs): the configured terms on the model's outputs
    (at adversarially moved images when ``loss.adversarial_rms`` > 0: ``train/adversarial.py``)."""

    def loss_fn(params, batch):
        outputs = model.apply({"params": params}, batch)
        return loss_terms.compute_terms(outputs, batch, loss_cfg)

    rms = float(loss_cfg.get("adversarial_rms", 0.0))
    return adversarial.adversarial_loss_fn(loss_fn, rms) if rms else loss_fn
