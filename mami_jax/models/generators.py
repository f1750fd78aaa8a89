"""ComPA's low-rank factor generators: their parameters, and two ways to run them.

Every block has eight generators (``FACTOR_SPECS``), each a hypernetwork
M -> GroupedDense(h1) -> LeakyReLU -> GroupedDense(h2) -> LeakyReLU -> GroupedDense(G, r*d)
-> reshape (N, r, d) + static (docs/design.md#low-rank-factor-generators). All of them
read the same input, the modality representation M computed once before the blocks,
so the factors of every block can be generated up front.

- ``fused_factors`` (``compa_impl="fused"``; ``"auto"`` off CPU) runs all depth x 8 generators
  as five operations: one matmul for every first layer (their kernels side by side),
  one batched matmul for every second layer, and one batched matmul per shape of last
  layer (q/k/v, MLP down, MLP up). At ViT-B size that replaces 288 small dots per
  forward pass, each at batch N against its own weights, with 5 larger ones.
- ``separate_factors`` (``compa_impl="separate"``; ``"auto"`` on CPU) runs each
  generator on its own, layer by layer: the direct reading of the design, and the
  reference the fused path is tested against.

Both read the same parameter tree, declared by ``BlockGenerators`` (per block, per
generator: ``hidden1``, ``hidden2``, ``out`` {kernel, bias} and ``static``), so
checkpoints, the converters and the PyTorch module see no difference between them.

Either returns, per block, ``{"qkv_down": (N, 3, r, C), "qkv_up": (N, 3, r, C),
"fc_down": (N, 1, r, C), "fc_up": (N, 1, r, mlp_width)}``: the layout the blocks'
factored deltas read (``vit.factored_delta``), q, k, v in that order.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mami_jax.models.layers import GroupedDenseParams, grouped_dense, leaky_relu

#: The factors every block receives, as (name, role, dimension key).
#: "down" factors project tokens (C) to rank r; "up" factors map r back to the
#: output width of the adapted projection (C for q/k/v, 4C for the MLP's first linear).
FACTOR_SPECS = (
    ("q_down", "down", "width"), ("q_up", "up", "width"),
    ("k_down", "down", "width"), ("k_up", "up", "width"),
    ("v_down", "down", "width"), ("v_up", "up", "width"),
    ("fc_down", "down", "width"), ("fc_up", "up", "mlp_width"),
)

#: The generators whose last layers share one shape, in the order the fused path stacks
#: them within a block: q/k/v downs then ups, the MLP's down, the MLP's up.
_QKV_ORDER = ("q_down", "k_down", "v_down", "q_up", "k_up", "v_up")
_KINDS = (("qkv", _QKV_ORDER), ("fc_down", ("fc_down",)), ("fc_up", ("fc_up",)))


def _zeros_init(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def _normal_init(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)
    return init


class FactorGenerator(nn.Module):
    """The parameters of one generator M -> low-rank factor (N, r, d), returned as
    ``{"hidden1": (kernel, bias), "hidden2": ..., "out": ..., "static": (1, r, d)}``.

    The first two layers are grouped layers with one group, matching the checkpoint
    layout. Initialisation (docs/design.md#initialisation): with ``init_scheme=
    "released"``, and for every up factor, the last layer and the static term start at
    zero; the down factors of the default scheme start small and random, so the
    delta is zero at step 0 but its gradient is not.
    """

    rank: int
    dim: int
    groups: int
    hidden: tuple
    role: str          # "down" or "up"
    init_scheme: str   # "default" or "released"

    def _last_layer_inits(self):
        if self.init_scheme == "released" or self.role == "up":
            return _zeros_init, _zeros_init
        # Down factors: random and small. The generated term and the static term
        # each give token projections x A^T of order 1 for unit-scale x.
        fan_in = self.hidden[-1] // self.groups
        generated_std = 1.0 / math.sqrt(fan_in * self.dim)
        return _normal_init(generated_std), _normal_init(1.0 / math.sqrt(self.dim))

    @nn.compact
    def __call__(self, in_features: int) -> dict:
        kernel_init, static_init = self._last_layer_inits()
        h1, h2 = self.hidden
        weights = {
            "hidden1": GroupedDenseParams(h1, 1, name="hidden1")(in_features),
            "hidden2": GroupedDenseParams(h2, 1, name="hidden2")(h1),
            "out": GroupedDenseParams(self.rank * self.dim, self.groups,
                                      kernel_init=kernel_init, name="out")(h2),
        }
        weights["static"] = self.param("static", static_init, (1, self.rank, self.dim),
                                       jnp.float32)
        return weights


class BlockGenerators(nn.Module):
    """The parameters of the eight factor generators of one block: name -> weights."""

    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, in_features: int) -> dict:
        cfg = self.cfg
        dims = {"width": cfg.width, "mlp_width": cfg.width * cfg.mlp_ratio}
        return {name: FactorGenerator(
                    rank=cfg.rank, dim=dims[dim_key],
                    groups=cfg.mlp_groups if name.startswith("fc") else cfg.qkv_groups,
                    hidden=tuple(cfg.generator_hidden), role=role, init_scheme=cfg.init,
                    name=name)(in_features)
                for name, role, dim_key in FACTOR_SPECS}


def _block_layout(factors: dict) -> dict:
    """name -> (N, r, d) of one block -> the layout the blocks read (module docstring)."""
    return {"qkv_down": jnp.stack([factors[p + "_down"] for p in "qkv"], axis=1),
            "qkv_up": jnp.stack([factors[p + "_up"] for p in "qkv"], axis=1),
            "fc_down": factors["fc_down"][:, None], "fc_up": factors["fc_up"][:, None]}


def separate_factors(blocks: list, m: jax.Array, slope: float, dtype: Any) -> tuple:
    """Every generator on its own: three grouped layers each, per block and factor.

    blocks: per block, ``BlockGenerators``' weights; m: (N, C) in the compute dtype.
    """
    out = []
    for weights in blocks:
        factors = {}
        for name, w in weights.items():
            h = leaky_relu(grouped_dense(m, *w["hidden1"], dtype), slope)
            h = leaky_relu(grouped_dense(h, *w["hidden2"], dtype), slope)
            rank, dim = w["static"].shape[1:]
            factors[name] = (grouped_dense(h, *w["out"], dtype).reshape(m.shape[0], rank, dim)
                             + w["static"].astype(dtype))
        out.append(_block_layout(factors))
    return tuple(out)


def fused_factors(blocks: list, m: jax.Array, slope: float, dtype: Any) -> tuple:
    """All generators of all blocks at once, in five matmuls (module docstring).

    The same sums as ``separate_factors`` per output element; the kernels are
    concatenated or stacked at apply time (the parameter tree is unchanged), a copy
    of the generators' weights per call that is small next to the matmuls it saves.
    """
    n, depth = m.shape[0], len(blocks)
    # Generator order: for each kind, block-major, then the kind's names in order.
    order = [blocks[i][name] for _, names in _KINDS for i in range(depth) for name in names]
    g = len(order)

    # First layers: every generator reads m, so one (C, G*h1) matmul does them all.
    k1 = jnp.concatenate([w["hidden1"][0][0] for w in order], axis=-1).astype(dtype)
    b1 = jnp.concatenate([w["hidden1"][1][0] for w in order], axis=-1).astype(dtype)
    h = leaky_relu(jnp.dot(m.astype(dtype), k1) + b1, slope).reshape(n, g, -1)

    # Second layers: one batched matmul over generators, (G, h1, h2).
    k2 = jnp.stack([w["hidden2"][0][0] for w in order]).astype(dtype)
    b2 = jnp.stack([w["hidden2"][1][0] for w in order]).astype(dtype)
    h = leaky_relu(jnp.einsum("ngi,gio->ngo", h, k2) + b2, slope)

    # Last layers: one batched grouped matmul per shape, (G_kind, groups, in/groups, out/groups).
    outputs, start = {}, 0
    for kind, names in _KINDS:
        ws = order[start:start + depth * len(names)]
        hk = h[:, start:start + len(ws)]
        start += len(ws)
        kernel = jnp.stack([w["out"][0] for w in ws]).astype(dtype)
        bias = jnp.stack([w["out"][1] for w in ws]).astype(dtype)
        static = jnp.stack([w["static"][0] for w in ws]).astype(dtype)
        groups, gin = kernel.shape[1:3]
        y = jnp.einsum("ngsi,gsio->ngso", hk.reshape(n, len(ws), groups, gin), kernel) + bias
        y = y.reshape((n, len(ws)) + static.shape[1:]) + static
        outputs[kind] = y.reshape((n, depth, len(names)) + static.shape[1:])

    qkv = outputs["qkv"]  # (N, depth, 6, r, C): q, k, v downs then ups
    return tuple({"qkv_down": qkv[:, i, :3], "qkv_up": qkv[:, i, 3:],
                  "fc_down": outputs["fc_down"][:, i], "fc_up": outputs["fc_up"][:, i]}
                 for i in range(depth))


def compa_implementation(name: str) -> str:
    """"fused" or "separate" for config ``compa_impl``.

    "auto": separate on CPU, fused elsewhere. On CPU the generators are bound by reading
    their weights (about 50 M parameters at ViT-B size, whatever the batch), and fusing
    must first copy them into stacked arrays: more memory traffic than the small
    matmuls' per-operation cost it saves (docs/speed.md#fused-compa). On a GPU or TPU
    the copy runs at memory bandwidth while each of the 288 separate operations is a
    kernel launch. "fused" and "separate" force one.
    """
    if name != "auto":
        return name
    return "separate" if jax.default_backend() == "cpu" else "fused"


def generate_factors(cfg: ml_collections.ConfigDict, m: jax.Array, dtype: Any) -> tuple:
    """Declares every block's generators (``block_{i}`` in the calling module's scope:
    call from a compact method) and runs them on m (N, C) the way ``cfg.compa_impl`` says."""
    blocks = [BlockGenerators(cfg, name=f"block_{i}")(m.shape[-1]) for i in range(cfg.depth)]
    fused = compa_implementation(cfg.compa_impl) == "fused"
    return (fused_factors if fused else separate_factors)(blocks, m, cfg.leaky_slope, dtype)
