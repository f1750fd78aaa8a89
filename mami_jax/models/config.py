"""Model configuration: the one place that says what a MaMI model is.

``default_config()`` is the released model's architecture (CLIP ViT-B/16 at 224 px,
rank 16, 16 codes). Configs are locked ``ml_collections.ConfigDict``s so a misspelt
key is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import ml_collections

#: Initialisation schemes for the low-rank path (see ``compa.FactorGenerator``).
INIT_SCHEMES = ("default", "released")

#: Where the feature shift reads from (see ``compa.ComPA``).
SHIFT_INPUTS = ("patch_mean", "router")

DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
    """ViT-B/16 MaMI at 224 px, as released by the authors (but trainable init)."""
    cfg = ml_collections.ConfigDict()
    # Backbone (CLIP ViT-B/16 visual tower).
    cfg.width = 768
    cfg.depth = 12
    cfg.num_heads = 12
    cfg.patch_size = 16
    cfg.image_size = 224  # size of the stored position grid; other sizes are interpolated
    cfg.mlp_ratio = 4
    cfg.layernorm_eps = 1e-5
    # ComPA.
    cfg.rank = 16
    cfg.num_codes = 16
    cfg.generator_hidden = (384, 192)
    cfg.qkv_groups = 16
    cfg.mlp_groups = 32
    cfg.leaky_slope = 0.1
    cfg.shift_input = "patch_mean"
    # Slice adapter.
    cfg.adapter_width = 384
    cfg.adapter_kernel = 3
    # Ablation switches.
    cfg.use_compa = True
    cfg.use_codebook = True
    cfg.use_slice_adapter = True
    # Initialisation and execution.
    cfg.init = "default"
    cfg.dtype = "float32"
    cfg.remat = False
    cfg.lock()
    return cfg


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key when a combination cannot work."""

    def need(cond, msg):
        if not cond:
            raise ValueError(f"invalid model config: {msg}")

    need(cfg.width % cfg.num_heads == 0,
         f"width={cfg.width} must be divisible by num_heads={cfg.num_heads}")
    need(cfg.width % cfg.num_codes == 0,
         f"width={cfg.width} must be divisible by num_codes={cfg.num_codes}")
    need(cfg.image_size % cfg.patch_size == 0,
         f"image_size={cfg.image_size} must be divisible by patch_size={cfg.patch_size}")
    need(len(cfg.generator_hidden) == 2, "generator_hidden must hold two widths")
    last = cfg.generator_hidden[-1]
    mlp_width = cfg.width * cfg.mlp_ratio
    for key, groups, out in (("qkv_groups", cfg.qkv_groups, cfg.rank * cfg.width),
                             ("mlp_groups", cfg.mlp_groups, cfg.rank * mlp_width)):
        need(last % groups == 0,
             f"generator_hidden[-1]={last} must be divisible by {key}={groups}")
        need(out % groups == 0, f"rank*dim={out} must be divisible by {key}={groups}")
    need(cfg.init in INIT_SCHEMES, f"init={cfg.init!r} not in {INIT_SCHEMES}")
    need(cfg.shift_input in SHIFT_INPUTS, f"shift_input={cfg.shift_input!r} not in {SHIFT_INPUTS}")
    need(cfg.dtype in DTYPES, f"dtype={cfg.dtype!r} not in {DTYPES}")
    need(cfg.adapter_kernel % 2 == 1, f"adapter_kernel={cfg.adapter_kernel} must be odd")
