"""What is trained: MaMI plus the identity classifier used only by the training loss.

Parameters are ``{"mami": <MaMI params>, "classifier": {"kernel"}}``. The
classifier is a bias-free linear layer over the training patients; it is thrown
away after training (checkpoints keep MaMI's parameters as their own item).

``neck="batch_standardize"`` puts the parameter-free BNNeck
(``losses.batch_standardize``) between the embedding and the classifier; the
triplet loss and evaluation still see MaMI's own embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from mami_jax.train import losses
from mami_jax.models import MaMI, MaMIOutput

NECKS = ("none", "batch_standardize")


class ReIDTrainModel(nn.Module):
    model_cfg: ml_collections.ConfigDict
    num_classes: int
    neck: str = "none"

    def setup(self):
        if self.neck not in NECKS:
            raise ValueError(f"loss.id_neck={self.neck!r}: expected one of {NECKS}")
        self.mami = MaMI(self.model_cfg)
        self.classifier = nn.Dense(self.num_classes, use_bias=False,
                                   kernel_init=nn.initializers.normal(0.01))

    def __call__(self, images: jax.Array, mask: jax.Array | None = None
                 ) -> tuple[MaMIOutput, jax.Array]:
        """MaMI's output and the identity logits; ``mask`` marks the real rows for the neck."""
        out = self.mami(images)
        features = out.embedding
        if self.neck == "batch_standardize":
            features = losses.batch_standardize(features, mask)
        return out, self.classifier(features)
