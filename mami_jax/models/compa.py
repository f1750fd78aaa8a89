"""ComPA: the continuous modality-based parameter adapter (docs/design.md#compa).

From the patch embedding of every slice, ComPA computes
- a modality representation M (N, C): soft weights over K codes, each weighting
  its own C/K-wide slice of the codebook, concatenated (not a weighted sum);
- a feature shift added to every patch token, computed from the router's pooled
  output g in the released model;
- for every transformer block, per-example low-rank factors generated from M by
  small hypernetworks. The backbone applies them as ``(x A^T) B`` deltas.

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

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from mami_jax.models.layers import GroupedDense, leaky_relu

#: The factors every block receives, as (name, role, dimension key).
#: "down" factors project tokens (C) to rank r; "up" factors map r back to the
#: output width of the adapted projection (C for q/k/v, 4C for the MLP's first linear).
FACTOR_SPECS = (
    ("q_down", "down", "width"), ("q_up", "up", "width"),
    ("k_down", "down", "width"), ("k_up", "up", "width"),
    ("v_down", "down", "width"), ("v_up", "up", "width"),
    ("fc_down", "down", "width"), ("fc_up", "up", "mlp_width"),
)


@flax.struct.dataclass
class ComPAOutput:
    shift: jax.Array          # (N, C) added to every patch token
    modality: jax.Array       # (N, C) the representation M
    code_weights: jax.Array   # (N, K) softmax weights over codes
    factors: tuple            # per block: dict name -> (N, r, d)


def _zeros_init(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def _normal_init(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)
    return init


class FactorGenerator(nn.Module):
    """Hypernetwork M -> one low-rank factor (N, r, d), plus a learned static term.

    Dense(h1) -> LeakyReLU -> Dense(h2) -> LeakyReLU -> GroupedDense(groups, r*d),
    reshaped row-major to (r, d); every example gets its own factor. The first two
    layers are grouped layers with one group, matching the checkpoint layout.
    """

    rank: int
    dim: int
    groups: int
    hidden: tuple
    role: str          # "down" or "up"
    init_scheme: str   # "default" or "released"
    slope: float = 0.1
    dtype: Any = jnp.float32

    def _last_layer_inits(self):
        if self.init_scheme == "released" or self.role == "up":
            return _zeros_init, _zeros_init
        # Down factors: random and small. The generated term and the static term
        # each give token projections x A^T of order 1 for unit-scale x.
        fan_in = self.hidden[-1] // self.groups
        generated_std = 1.0 / math.sqrt(fan_in * self.dim)
        return _normal_init(generated_std), _normal_init(1.0 / math.sqrt(self.dim))

    @nn.compact
    def __call__(self, m: jax.Array) -> jax.Array:
        kernel_init, static_init = self._last_layer_inits()
        h = leaky_relu(GroupedDense(self.hidden[0], 1, dtype=self.dtype, name="hidden1")(m),
                       self.slope)
        h = leaky_relu(GroupedDense(self.hidden[1], 1, dtype=self.dtype, name="hidden2")(h),
                       self.slope)
        out = GroupedDense(self.rank * self.dim, self.groups, kernel_init=kernel_init,
                           dtype=self.dtype, name="out")(h)
        static = self.param("static", static_init, (1, self.rank, self.dim), jnp.float32)
        return out.reshape(m.shape[0], self.rank, self.dim) + static.astype(self.dtype)


class BlockFactors(nn.Module):
    """The eight factor generators of one transformer block."""

    cfg: ml_collections.ConfigDict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, m: jax.Array) -> dict:
        cfg = self.cfg
        dims = {"width": cfg.width, "mlp_width": cfg.width * cfg.mlp_ratio}
        factors = {}
        for name, role, dim_key in FACTOR_SPECS:
            groups = cfg.mlp_groups if name.startswith("fc") else cfg.qkv_groups
            factors[name] = FactorGenerator(
                rank=cfg.rank, dim=dims[dim_key], groups=groups,
                hidden=tuple(cfg.generator_hidden), role=role, init_scheme=cfg.init,
                slope=cfg.leaky_slope, dtype=self.dtype, name=name)(m)
        return factors


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

        # Router: two 1x1 convolutions (dense over channels) then a spatial mean.
        r = leaky_relu(dense(c, "router_conv1")(patches), slope)
        g = dense(c, "router_conv2")(r).mean(axis=(1, 2))

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

        m = modality.astype(self.dtype)
        factors = tuple(BlockFactors(cfg, self.dtype, name=f"block_{i}")(m)
                        for i in range(cfg.depth))
        return ComPAOutput(shift=shift, modality=modality, code_weights=code_weights,
                           factors=factors)
