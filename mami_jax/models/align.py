"""The alignment head: MaMI's local map read out in each frozen teacher's feature space.

Per teacher t (docs/design.md#difference-alignment): a query token is generated from
the modality representation M by a 3-layer MLP, so what is read from the image depends
on what kind of image it is; it attention-pools the local map (multi-head dot-product
attention, the map's tokens as keys and values); a linear projection maps the pooled
vector P_t to the teacher's feature size D_t. The "align" loss compares P_t with the
teacher's stored feature Q_t (their pair differences, or the features themselves).

Only training uses it: it is a head (``mami_jax/train/heads.py``), never part of the
exported re-identification model. Computed in float32 whatever MaMI's dtype.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class QueryMLP(nn.Module):
    """M (B, C) -> one query token (B, C): Dense-GELU-Dense-GELU-Dense."""

    width: int
    hidden: int

    @nn.compact
    def __call__(self, m: jax.Array) -> jax.Array:
        x = nn.gelu(nn.Dense(self.hidden, name="fc1")(m))
        x = nn.gelu(nn.Dense(self.hidden, name="fc2")(x))
        return nn.Dense(self.width, name="fc3")(x)


class TeacherReadout(nn.Module):
    """One teacher's readout: query MLP, attention pooling, projection to ``out_dim``."""

    out_dim: int
    num_heads: int
    hidden: int

    @nn.compact
    def __call__(self, modality: jax.Array, local_map: jax.Array) -> jax.Array:
        b, c = modality.shape
        tokens = local_map.reshape(b, -1, local_map.shape[-1])
        query = QueryMLP(c, self.hidden, name="query")(modality)[:, None, :]
        pooled = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="pool")(
            query, tokens)[:, 0, :]
        return nn.Dense(self.out_dim, name="proj")(pooled)


class AlignHead(nn.Module):
    """``(modality (B, C), local_map (B, h, w, C)) -> {teacher: (B, D_t)}``."""

    teacher_dims: Sequence[tuple[str, int]]   # (name, feature size), one readout each
    num_heads: int
    mlp_hidden: int = 0                       # 0: the model width C

    @nn.compact
    def __call__(self, modality: jax.Array, local_map: jax.Array) -> dict:
        modality = jnp.asarray(modality, jnp.float32)
        local_map = jnp.asarray(local_map, jnp.float32)
        if modality.ndim != 2 or local_map.ndim != 4 or local_map.shape[0] != modality.shape[0] \
                or local_map.shape[-1] != modality.shape[-1]:
            raise ValueError(f"AlignHead expects modality (B, C) and local map (B, h, w, C); got "
                             f"{modality.shape} and {local_map.shape}")
        if not self.teacher_dims:
            raise ValueError("AlignHead needs at least one teacher")
        hidden = int(self.mlp_hidden) or modality.shape[-1]
        return {name: TeacherReadout(int(dim), self.num_heads, hidden, name=name)(
                    modality, local_map)
                for name, dim in self.teacher_dims}
