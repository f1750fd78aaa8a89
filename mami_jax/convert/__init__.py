"""Checkpoint interchange with PyTorch (official MaMI weights, CLIP, export).

- ``to_torch_state_dict(params, cfg, as_tensors=False)``: our Flax params ->
  released-layout state dict ``{key: numpy array}`` in the released key order
  (``as_tensors=True``: ``torch.Tensor`` values, ready for ``load_state_dict``).
  Keys the released forward pass never reads are written as zeros.
- ``from_torch_state_dict(state_dict, cfg)``: released-layout state dict (values
  numpy arrays or torch tensors, an optional ``module.`` prefix) -> our params, a
  nested dict of float32 numpy arrays usable with ``MaMI(cfg).apply``.

Both raise ``ConversionError`` listing every missing, unexpected and mis-shaped
key; imported values holding NaN or inf raise ``mapping.NonFiniteWeightsError``.
Files: ``official.load_official`` / ``official.export_official`` (the authors'
layout, with our model config embedded on export; the feature-shift setting is
checked both ways), ``checkpoint_dir.load_params`` / ``save_params`` (orbax
folders), ``clip.import_clip``. The mapping itself is one table
(``mapping.build_table``). ``MaMITorch``
(``mami_jax.convert.torch_model``) is the PyTorch module with that layout.
Importing this package does not import torch; only the functions that need it do.
CLI: ``python -m mami_jax.convert {import-official,import-clip,export-torch}``.
"""

from __future__ import annotations

from typing import Any, Mapping

from mami_jax.convert.mapping import (ConversionError, build_table, params_to_state_dict,
                                      state_dict_to_params)

__all__ = ["ConversionError", "build_table", "to_torch_state_dict", "from_torch_state_dict"]


def to_torch_state_dict(params: Mapping, cfg, *, as_tensors: bool = False) -> dict[str, Any]:
    """Flax params -> released-layout state dict (numpy arrays, or torch tensors)."""
    state = params_to_state_dict(params, cfg)
    if as_tensors:
        import torch
        state = {k: torch.from_numpy(v) for k, v in state.items()}
    return state


def from_torch_state_dict(state_dict: Mapping[str, Any], cfg) -> dict:
    """Released-layout state dict -> Flax params (nested dict of float32 numpy arrays).

    A ``module.`` prefix on every key (DataParallel, as in the released file) is
    removed first. Unused keys are optional and ignored.
    """
    from mami_jax.convert.official import extract_state_dict
    state, _ = extract_state_dict(dict(state_dict), "state dict")
    params, _ = state_dict_to_params(state, cfg)
    return params
