"""Model configuration: the one place that says what a MaMI model is.

``default_config()`` is the released model's architecture (CLIP ViT-B/16 at 224 px,
rank 16, 16 codes, the feature shift reading the router's output). Configs are locked
``ml_collections.ConfigDict``s so a misspelt key is an error instead of a silently
ignored setting. ``validate_config`` rejects values that cannot describe a model
(zero or negative sizes, indivisible widths, unknown names) before any of them is
used in arithmetic.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

#: Initialisation schemes for the low-rank path (see ``generators.FactorGenerator``).
INIT_SCHEMES = ("default", "released")

#: Where ComPA's feature shift reads from (see ``compa.ComPA``).
#:
#: - ``"router"``: g, the router's pooled output (spatial mean of
#:   router_conv2(LeakyReLU(router_conv1(p)))). This is the released model's function:
#:   weights imported from the authors' checkpoint compute the authors' embeddings only
#:   with it, so it is the default and the only setting the authors' code can run.
#: - ``"patch_mean"``: the spatial mean of the patch embedding p itself, bypassing the
#:   router. An alternative for models trained from scratch (the small runlocal models
#:   were tuned and measured with it); its weights compute a different function from
#:   the same parameters, so they are never exported to the authors' layout or mixed
#:   with released weights without an explicit opt-in (``mami_jax.convert``).
SHIFT_INPUTS = ("router", "patch_mean")

#: The released model's feature-shift input.
RELEASED_SHIFT_INPUT = "router"

#: Keys a saved config must state itself: a file without them is refused rather than
#: given today's default, because their default changed and a wrong value silently
#: changes the function that the weights compute.
REQUIRED_SAVED_KEYS = ("shift_input",)

#: Settings of how a model is initialised or executed, not of which function its
#: weights compute; ``config_differences`` ignores them by default.
EXECUTION_KEYS = ("init", "dtype", "remat", "remat_policy", "attention", "compa_impl")

DTYPES = ("float32", "bfloat16", "float16")

#: ``attention``: the implementation of ``jax.nn.dot_product_attention`` ("auto": cuDNN's
#: fused kernel on a GPU in bfloat16/float16, XLA elsewhere; see ``vit.attention_implementation``).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")

#: ``remat_policy``: what a rematerialised block keeps for the backward pass (names in
#: ``jax.checkpoint_policies``): nothing, or the outputs of its matrix multiplies by
#: weights (the elementwise work and attention are recomputed).
#: ``compa_impl``: how ComPA runs its factor generators, the same function either way
#: (``models/generators.py``): "fused" (all blocks' generators in five batched matmuls),
#: "separate" (each generator on its own) or "auto" (separate on CPU, where it measured
#: faster, fused on GPU/TPU; see ``generators.compa_implementation``).
COMPA_IMPLS = ("auto", "fused", "separate")

REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")

#: Integer sizes that must be at least 1 (checked before any divisibility test).
POSITIVE_INT_KEYS = ("width", "depth", "num_heads", "patch_size", "image_size", "mlp_ratio",
                     "rank", "num_codes", "qkv_groups", "mlp_groups", "adapter_width",
                     "adapter_kernel")


def default_config() -> ml_collections.ConfigDict:
    """ViT-B/16 MaMI at 224 px with the released function (but a trainable init)."""
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
    cfg.shift_input = RELEASED_SHIFT_INPUT
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
    cfg.remat_policy = "nothing_saveable"  # with remat=True (REMAT_POLICIES)
    cfg.attention = "auto"                 # ATTENTION_IMPLEMENTATIONS
    cfg.compa_impl = "auto"                # COMPA_IMPLS
    cfg.lock()
    return cfg


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the key when a value or combination cannot work."""

    def need(cond, msg):
        if not cond:
            raise ValueError(f"invalid model config: {msg}")

    # Signs and types first, so that no check below divides by zero.
    for key in POSITIVE_INT_KEYS:
        value = cfg[key]
        need(_is_int(value) and value >= 1, f"{key}={value!r} must be a positive integer")
    hidden = cfg.generator_hidden
    need(isinstance(hidden, (tuple, list)) and len(hidden) == 2,
         f"generator_hidden={hidden!r} must hold two widths")
    for i, value in enumerate(hidden):
        need(_is_int(value) and value >= 1,
             f"generator_hidden[{i}]={value!r} must be a positive integer")
    need(_is_number(cfg.layernorm_eps) and cfg.layernorm_eps > 0,
         f"layernorm_eps={cfg.layernorm_eps!r} must be a positive number")
    need(_is_number(cfg.leaky_slope) and cfg.leaky_slope >= 0,
         f"leaky_slope={cfg.leaky_slope!r} must be a number >= 0")

    need(cfg.width % cfg.num_heads == 0,
         f"width={cfg.width} must be divisible by num_heads={cfg.num_heads}")
    need(cfg.width % cfg.num_codes == 0,
         f"width={cfg.width} must be divisible by num_codes={cfg.num_codes}")
    need(cfg.image_size % cfg.patch_size == 0,
         f"image_size={cfg.image_size} must be divisible by patch_size={cfg.patch_size}")
    last = hidden[-1]
    mlp_width = cfg.width * cfg.mlp_ratio
    for key, groups, out in (("qkv_groups", cfg.qkv_groups, cfg.rank * cfg.width),
                             ("mlp_groups", cfg.mlp_groups, cfg.rank * mlp_width)):
        need(last % groups == 0,
             f"generator_hidden[-1]={last} must be divisible by {key}={groups}")
        need(out % groups == 0, f"rank*dim={out} must be divisible by {key}={groups}")
    need(cfg.init in INIT_SCHEMES, f"init={cfg.init!r} not in {INIT_SCHEMES}")
    need(cfg.shift_input in SHIFT_INPUTS, f"shift_input={cfg.shift_input!r} not in {SHIFT_INPUTS}")
    need(cfg.dtype in DTYPES, f"dtype={cfg.dtype!r} not in {DTYPES}")
    need(cfg.attention in ATTENTION_IMPLEMENTATIONS,
         f"attention={cfg.attention!r} not in {ATTENTION_IMPLEMENTATIONS}")
    need(cfg.compa_impl in COMPA_IMPLS, f"compa_impl={cfg.compa_impl!r} not in {COMPA_IMPLS}")
    need(cfg.remat_policy in REMAT_POLICIES,
         f"remat_policy={cfg.remat_policy!r} not in {REMAT_POLICIES}")
    need(cfg.adapter_kernel % 2 == 1, f"adapter_kernel={cfg.adapter_kernel} must be odd")


def _plain(value: Any) -> Any:
    """Config value -> comparable plain value (JSON gives lists where configs hold tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def differing_values(saved, given, *, ignore=EXECUTION_KEYS) -> dict[str, tuple]:
    """key -> (saved value, given value) for every key whose values differ, in key order.

    ``saved`` and ``given`` are ConfigDicts or plain mappings (a config read back from
    JSON); a key only one side has shows ``"<absent>"`` on the other. Keys in ``ignore``
    (by default the execution settings) are not compared.
    """
    a = saved.to_dict() if hasattr(saved, "to_dict") else dict(saved)
    b = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    out = {}
    for key in sorted((set(a) | set(b)) - set(ignore)):
        va, vb = _plain(a.get(key, "<absent>")), _plain(b.get(key, "<absent>"))
        if va != vb:
            out[key] = (va, vb)
    return out


def config_differences(saved, given, *, ignore=EXECUTION_KEYS) -> list[str]:
    """``"key: saved X, given Y"`` for every key whose values differ (``differing_values``)."""
    return [f"{key}: saved {va!r}, given {vb!r}"
            for key, (va, vb) in differing_values(saved, given, ignore=ignore).items()]
