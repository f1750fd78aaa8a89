"""ComPA: the continuous modality-based parameter adapter (docs/design.md#compa).

From the patch embedding of every slice, ComPA computes
- a modality representation M (N, C): soft weights over K codes, each weighting
  its own C/K-wide slice of the codebook, concatenated (not a weighted sum);
- a feature shift added to every patch token, computed from the router's pooled
  output g in the released model;
- for every transformer block, per-example low-rank factors generated from M by
  small hypernetworks (``models/generators.py``: all of them in a few batched
  matmuls by default). The backbone applies them as ``(x A^T) B`` deltas.

Initialisation matters here. The released model initialises every generator's
last layer and every static factor to zero, so both factors of every delta are
zero and the deltas' gradients are zero: the generators, the codebook and the
router's code head (which feed only the generators) never train; the router's 1x1
convolutions are reached only through the feature shift. Our default ("default")
draws the *down* factors small and random and zeroes only the *up* factors: the
delta is still exactly zero at step 0 (the pretrained backbone is untouched) but
gradients flow from the first step.
``init="released"`` reproduces the released scheme so the difference can be
measured.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from mami_jax.models.generators import generate_factors
from mami_jax.models.layers import leaky_relu


@flax.struct.dataclass
class ComPAOutput:
    shift: jax.Array          # (N, C) added to every patch token
    modality: jax.Array       # (N, C) the representation M
    code_weights: jax.Array   # (N, K) softmax weights over codes
    factors: tuple            # per block: generators.py's layout ("qkv_down": (N, 3, r, C), ...)


class ComPA(nn.Module):
    """Router, codebook, feature shift and per-block factor generators.

    The released model's feature shift reads g, the router's pooled output
    (``shift_input="router"``, the default): importing the authors' weights gives
    their function only with it. ``shift_input="patch_mean"`` reads the spatial mean
    of the patch embedding instead; it is a different function of the same
    parameters, kept for models trained from scratch (``models/config.py``).
    """

    cfg: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, patches: jax.Array) -> ComPAOutput:
        """patches: (N, h, w, C) patch embedding of every slice."""
        cfg = self.cfg
        c, k, slope = cfg.width, cfg.num_codes, cfg.leaky_slope
        dense = lambda n, name, **kw: nn.Dense(n, dtype=self.dtype, name=name, **kw)  # noqa: E731

        # Router: two 1x1 convolutions (dense over channels) then a spatial mean. The
        # second is affine, so it commutes with the mean: applied to the mean, it is one
        # (N, C) x (C, C) matmul instead of one per position (h*w times fewer FLOPs).
        r = leaky_relu(dense(c, "router_conv1")(patches), slope)
        g = dense(c, "router_conv2")(r.mean(axis=(1, 2)))

        if cfg.use_codebook:
            logits = dense(k, "router_fc2")(leaky_relu(dense(c, "router_fc1")(g), slope))
            code_weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            codebook = self.param("codebook", nn.initializers.normal(1.0), (k, c // k),
                                  jnp.float32)
            modality = (code_weights[:, :, None] * codebook[None]).reshape(-1, c)
        else:
            code_weights = jnp.zeros((patches.shape[0], k), jnp.float32)
            modality = g.astype(jnp.float32)

        shift_in = g if cfg.shift_input == "router" else patches.mean(axis=(1, 2))
        s = dense(c, "shift_fc1")(leaky_relu(shift_in, slope))
        shift = dense(c, "shift_fc2", kernel_init=nn.initializers.zeros)(leaky_relu(s, slope))

        factors = generate_factors(cfg, modality.astype(self.dtype), self.dtype)
        return ComPAOutput(shift=shift, modality=modality, code_weights=code_weights,
                           factors=factors)
