"""The tokens one named layer of MaMI gives, beside the model's usual output.

Two applications read inside the backbone: history diagnosis compares a layer's token map
with the patient's earlier images (``apps/history/features.py``), and privacy protection
can push a layer's tokens away from the original image's, because intermediate features
are shared more between independently trained models than the final embedding is
(``apps/privacy/objective.py``, ``perturb.feature_weight``). Layers are named as the
modules of ``MaMI``: ``patch_embed``, ``ln_pre`` and ``block_<i>``; ``last_block`` is an
alias of the last transformer block. Capturing uses Flax's ``capture_intermediates``, so
the model code knows nothing of it and the forward pass is the same one.
"""

from __future__ import annotations

import jax.numpy as jnp


def layer_names(model_cfg) -> tuple[str, ...]:
    """Every layer whose tokens can be read, input side first."""
    return ("patch_embed", "ln_pre") + tuple(f"block_{i}" for i in range(int(model_cfg.depth)))


def resolve_layer(model_cfg, layer: str, key: str = "map_layer") -> str:
    """``layer``, with ``last_block`` meaning the model's last transformer block; a
    ValueError naming the config ``key`` and the known layers otherwise."""
    if layer == "last_block":
        layer = f"block_{int(model_cfg.depth) - 1}"
    layers = layer_names(model_cfg)
    if layer not in layers:
        raise ValueError(f"{key}={layer!r} unknown; this model has {', '.join(layers)} "
                         f"(or last_block)")
    return layer


def apply_with_tokens(mami, params, images, layer: str):
    """(model output, float32 tokens of ``layer``) for ``images`` (B, T, S, S, 3).

    Tokens are (B*T, 1 + h*w, C) for the blocks and ``ln_pre`` (class token first) and
    (B*T, h, w, C), the patch grid, for ``patch_embed``; ``layer`` must be resolved
    (``resolve_layer``)."""
    def wanted(module, method):
        return method == "__call__" and module.name == layer

    out, state = mami.apply({"params": params}, images, capture_intermediates=wanted,
                            mutable=["intermediates"])
    return out, state["intermediates"][layer]["__call__"][0].astype(jnp.float32)


def patch_tokens(tokens, layer: str):
    """The patch tokens of ``apply_with_tokens``' output (the class token dropped)."""
    return tokens if layer == "patch_embed" else tokens[:, 1:]
