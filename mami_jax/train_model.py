"""What is trained: MaMI plus the identity classifier used only by the training loss.

Parameters are ``{"mami": <MaMI params>, "classifier": {"kernel"}}``. The
classifier is a bias-free linear layer over the training patients; it is thrown
away after training (checkpoints keep MaMI's parameters as their own item).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from mami_jax.models import MaMI, MaMIOutput


class ReIDTrainModel(nn.Module):
    model_cfg: ml_collections.ConfigDict
    num_classes: int

    def setup(self):
        self.mami = MaMI(self.model_cfg)
        self.classifier = nn.Dense(self.num_classes, use_bias=False,
                                   kernel_init=nn.initializers.normal(0.01))

    def __call__(self, images: jax.Array) -> tuple[MaMIOutput, jax.Array]:
        out = self.mami(images)
        return out, self.classifier(out.embedding)
