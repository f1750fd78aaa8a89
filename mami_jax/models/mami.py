"""MaMI: ComPA-adapted CLIP ViT with a re-identification head (docs/design.md#model).

``MaMI(cfg).apply(variables, images)`` with images (B, T, H, W, 3) float, T=1 for
2-D images, returns ``MaMIOutput``. Everything up to the head runs per slice on
N = B*T rows; the head averages patch tokens over slices into a local map
(B, h, w, C), averages it over positions and maps it through a two-layer MLP
into the identity embedding. No normalisation happens inside the model.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from mami_jax.image_batch import shape_problem
from mami_jax.models.compa import ComPA
from mami_jax.models.config import validate_config
from mami_jax.models.layers import LayerNorm, PatchEmbed, dtype_of, leaky_relu
from mami_jax.models.vit import Block, resize_position_embedding


@flax.struct.dataclass
class MaMIOutput:
    embedding: jax.Array     # (B, C) identity embedding
    local_map: jax.Array     # (B, h, w, C) patch tokens averaged over slices
    modality: jax.Array      # (B, C) modality representation M averaged over slices
    code_weights: jax.Array  # (B, K) code weights averaged over slices (zeros if unused)


def check_images(images, cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the expected shape for malformed image batches."""
    problem = shape_problem(getattr(images, "shape", None), cfg.patch_size)
    if problem:
        raise ValueError(problem)


class MaMI(nn.Module):
    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, images: jax.Array) -> MaMIOutput:
        cfg = self.cfg
        validate_config(cfg)
        check_images(images, cfg)
        dtype = dtype_of(cfg.dtype)
        b, t, height, width, _ = images.shape
        grid = (height // cfg.patch_size, width // cfg.patch_size)
        c = cfg.width

        x = images.reshape((b * t, height, width, 3)).astype(dtype)
        patches = PatchEmbed(c, cfg.patch_size, dtype, name="patch_embed")(x)

        compa = ComPA(cfg, dtype, name="compa")(patches) if cfg.use_compa else None
        if compa is not None:
            patches = patches + compa.shift[:, None, None, :].astype(dtype)

        stored = cfg.image_size // cfg.patch_size
        class_emb = self.param("class_embedding", nn.initializers.normal(c ** -0.5), (c,),
                               jnp.float32)
        pos = self.param("pos_embedding", nn.initializers.normal(c ** -0.5),
                         (1 + stored * stored, c), jnp.float32)
        tokens = jnp.concatenate(
            [jnp.broadcast_to(class_emb.astype(dtype), (b * t, 1, c)),
             patches.reshape(b * t, grid[0] * grid[1], c)], axis=1)
        tokens = tokens + resize_position_embedding(pos, grid).astype(dtype)
        tokens = LayerNorm(cfg.layernorm_eps, dtype, name="ln_pre")(tokens)

        block_cls = Block
        if cfg.remat:  # recompute each block's activations in the backward pass
            block_cls = nn.remat(Block, static_argnums=(3,),
                                 policy=getattr(jax.checkpoint_policies, cfg.remat_policy))
        for i in range(cfg.depth):
            factors = compa.factors[i] if compa is not None else None
            tokens = block_cls(cfg, dtype, name=f"block_{i}")(tokens, factors, t)

        local = tokens[:, 1:].reshape(b, t, grid[0], grid[1], c).astype(jnp.float32).mean(1)
        pooled = local.mean(axis=(1, 2))
        h = leaky_relu(nn.Dense(c, name="head_fc1")(pooled), cfg.leaky_slope)
        embedding = nn.Dense(c, name="head_fc2")(h)

        if compa is not None:
            modality = compa.modality.reshape(b, t, c).mean(1)
            code_weights = compa.code_weights.reshape(b, t, -1).mean(1)
        else:
            modality = patches.astype(jnp.float32).mean(axis=(1, 2)).reshape(b, t, c).mean(1)
            code_weights = jnp.zeros((b, cfg.num_codes), jnp.float32)
        return MaMIOutput(embedding=embedding, local_map=local, modality=modality,
                          code_weights=code_weights)
