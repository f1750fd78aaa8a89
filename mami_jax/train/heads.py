"""Parameter groups trained beside MaMI: the one place that declares them.

The trained parameters are ``{"mami": <MaMI params>, <group>: <head params>, ...}``.
MaMI's group is what evaluation, embedding and export read; every other group is a
*head*: a module used only by a training loss (the identity classifier today; an
alignment or diagnosis head tomorrow). Declaring a head here is all it takes for it
to be

- built and initialised: ``objective.TrainModel`` builds the heads that the configured
  loss terms name (``loss_terms.LossTerm.heads``) under their group name;
- optimised: its group name is its optimiser label, with its own learning-rate
  multiplier from ``config.optim.lr_multipliers[<group>]`` (``optim.make_optimizer``);
- saved and restored: the ``train`` item of a checkpoint holds every group but MaMI
  (``checkpointing``), so exports and evaluation never see heads;
- sharded: partition rules match parameter paths, which start with the group name.

A head is a Flax module called as ``head(mami_output, batch) -> dict of arrays``. A head
that reads a batch field at ``init`` declares it in ``HeadSpec.example_fields`` (derived
from the config), which ``objective.example_batch`` adds to the init batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mami_jax.data import teacher_join
from mami_jax.models import MaMIOutput
from mami_jax.models.align import AlignHead
from mami_jax.train import losses

#: MaMI's own parameter group: the re-ID model that is evaluated and exported.
MODEL_GROUP = "mami"

NECKS = ("none", "batch_standardize")


class IdentityClassifier(nn.Module):
    """Bias-free linear layer over the training identities, trained by the "id" loss.

    ``neck="batch_standardize"`` puts the parameter-free BNNeck
    (``losses.batch_standardize``) between the embedding and the classifier; the
    triplet loss and evaluation still see MaMI's own embedding. The classifier is thrown
    away after training: its rows mean the training patients of this run only.
    """

    num_classes: int
    neck: str = "none"

    @nn.compact
    def __call__(self, out: MaMIOutput, batch: dict) -> dict:
        if self.neck not in NECKS:
            raise ValueError(f"loss.id_neck={self.neck!r}: expected one of {NECKS}")
        features = out.embedding
        if self.neck == "batch_standardize":
            features = losses.batch_standardize(features, batch.get("mask"))
        kernel = self.param("kernel", nn.initializers.normal(0.01),
                            (features.shape[-1], self.num_classes), jnp.float32)
        logits = jax.lax.dot_general(features, kernel.astype(features.dtype),
                                     (((features.ndim - 1,), (0,)), ((), ())))
        return {"logits": logits}


class TeacherAlignment(nn.Module):
    """The "align" head: MaMI's modality representation and local map read out per
    teacher (``models/align.py``); returns ``{teacher: (B, D_t) float32}``."""

    teacher_dims: tuple[tuple[str, int], ...]
    num_heads: int
    mlp_hidden: int = 0

    @nn.compact
    def __call__(self, out: MaMIOutput, batch: dict) -> dict:
        return AlignHead(self.teacher_dims, self.num_heads, self.mlp_hidden, name="readout")(
            out.modality, out.local_map)


def _build_align(config, num_classes, name):
    dims = teacher_join.example_fields(config.data.teacher_features)["teacher"]
    return TeacherAlignment(tuple((n, int(v.shape[-1])) for n, v in dims.items()),
                            num_heads=int(config.model.num_heads),
                            mlp_hidden=int(config.loss.align.mlp_hidden), name=name)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """How to build one head from the experiment config and the number of identities."""

    build: Callable[..., nn.Module]   # (config, num_classes, name=group) -> module
    doc: str
    #: config -> the batch fields the head reads at init, one image each (or None)
    example_fields: Callable[..., dict] | None = None


HEADS: dict[str, HeadSpec] = {
    "classifier": HeadSpec(
        build=lambda config, num_classes, name: IdentityClassifier(
            num_classes, neck=str(config.loss.id_neck), name=name),
        doc="identity logits over the training patients (loss 'id')"),
    "align": HeadSpec(
        build=_build_align,
        doc="per-teacher readout of the local map in the teacher's feature space (loss 'align')",
        example_fields=lambda config: teacher_join.example_fields(
            config.data.teacher_features)),
}


def head_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise KeyError(f"no parameter group {name!r} is declared in mami_jax/train/heads.py; "
                       f"declared: {sorted(HEADS)}")
    return HEADS[name]
