"""Files in the authors' released layout: reading them into our params, writing ours out.

The released file is ``torch.load(f)["model"]`` with a ``module.`` prefix on
every key (it was saved from a DataParallel wrapper) and no model config: it is
the released architecture, ``default_config()``, whose feature shift reads the
router's output. Our exports are ``{"model": state_dict, "mami_config": cfg_json}``
without the prefix (plus ``"mami_experiment_config"``, the training run's whole config,
when exported from one), or a ``.safetensors`` file with them in its metadata;
both are accepted here, and the embedded config (``shift_input`` included) is
what makes our loader compute the exported function again.

Nothing runs weights under the other feature shift silently:

- ``load_official`` refuses a file without an embedded config (the authors' layout
  for their code) under a config whose ``shift_input`` is not ``"router"``, and a
  file whose embedded config differs from an explicitly given one;
- ``export_official`` refuses to write a model whose ``shift_input`` is not
  ``"router"`` (the authors' code would compute another function with it); the
  opt-in ``allow_non_released_shift=True`` still embeds the setting.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

from mami_jax.convert import torch_io
from mami_jax.convert.checkpoint_dir import config_from_json
from mami_jax.convert.mapping import (ConversionError, ImportReport, params_to_state_dict,
                                     state_dict_to_params)
from mami_jax.models.config import (RELEASED_SHIFT_INPUT, config_differences, default_config,
                                    validate_config)

PREFIX = "module."
CONFIG_KEY = "mami_config"
#: The whole experiment config of the training run an export came from (its
#: ``config.json``: preprocessing, mesh, batch sizes), so the file is read as the run was.
EXPERIMENT_KEY = "mami_experiment_config"


class ShiftInputError(ValueError):
    """Weights would run (or be handed to the authors' code) under a feature shift other
    than the one they were made for."""


class ConfigMismatchError(ValueError):
    """A file's embedded model config differs from the config the caller gave."""


@dataclasses.dataclass
class OfficialImport:
    params: dict
    cfg: Any
    report: ImportReport
    config_source: str     # where cfg came from: "argument", "file", "default"
    prefix_stripped: bool


def extract_state_dict(obj: Any, source: str) -> tuple[dict, bool]:
    """``{"model": sd}`` or a bare state dict -> (sd without ``module.``, stripped?)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    elif isinstance(obj, Mapping) and obj and all(hasattr(v, "shape") for v in obj.values()):
        sd = obj
    else:
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise torch_io.CheckpointFileError(
            f"{source}: expected a dict with a 'model' state dict (the released layout) or a "
            f"flat state dict; found {keys}")
    keys = list(sd)
    prefixed = [k for k in keys if k.startswith(PREFIX)]
    if prefixed and len(prefixed) != len(keys):
        plain = [k for k in keys if not k.startswith(PREFIX)]
        raise torch_io.CheckpointFileError(
            f"{source}: {len(prefixed)} keys carry the '{PREFIX}' prefix and {len(plain)} do "
            f"not (e.g. {plain[:5]}); a state dict must be one or the other")
    if prefixed:
        return {k[len(PREFIX):]: v for k, v in sd.items()}, True
    return dict(sd), False


def _embedded(obj: Any, path: str, key: str) -> Optional[str]:
    """The text our exporter stored under ``key`` (safetensors metadata, or a string
    beside the state dict of a ``.pth``); None when the file has none."""
    if torch_io.is_safetensors(path):
        return torch_io.read_safetensors_metadata(path).get(key)
    if isinstance(obj, Mapping) and isinstance(obj.get(key), str):
        return obj[key]
    return None


def embedded_experiment(path: str) -> Optional[str]:
    """The experiment config (JSON) a file exported from a training run carries; None for
    the authors' files and exports of a converter folder. A ``.pth`` is mapped, not read:
    the weights are left on disk."""
    obj = None if torch_io.is_safetensors(path) else torch_io.load_file(path, mmap=True)
    return _embedded(obj, path, EXPERIMENT_KEY)


def load_official(path: str, cfg=None, *, allow_non_released_shift: bool = False
                  ) -> OfficialImport:
    """Reads a released-layout checkpoint file into our params.

    ``cfg`` defaults to the config embedded by our exporter, else the released
    architecture (``default_config()``). A given ``cfg`` must agree with an embedded
    one on every key but the execution settings (``ConfigMismatchError`` lists the
    differing keys, saved vs given). A file without an embedded config holds weights
    of the authors' function, so a ``cfg`` with ``shift_input`` other than "router"
    is refused (``ShiftInputError``) unless ``allow_non_released_shift=True``. Raises
    ``ConversionError`` listing every missing, unexpected and mis-shaped key, and
    ``NonFiniteWeightsError`` for weights holding NaN or inf.
    """
    obj = torch_io.load_file(path)
    sd, stripped = extract_state_dict(obj, path)
    text = _embedded(obj, path, CONFIG_KEY)
    saved = config_from_json(text, f"{path}:{CONFIG_KEY}") if text is not None else None
    if cfg is not None:
        validate_config(cfg)
        if saved is not None:
            differences = config_differences(saved, cfg)
            if differences:
                raise ConfigMismatchError(
                    f"{path}: the model config embedded in the file differs from the one "
                    f"given ({'; '.join(differences)}); drop the given config to use the "
                    "file's, or give one that matches it")
        source = "argument"
    elif saved is not None:
        cfg, source = saved, "file"
    else:
        cfg, source = default_config(), "default"
    if (saved is None and cfg.shift_input != RELEASED_SHIFT_INPUT
            and not allow_non_released_shift):
        raise ShiftInputError(
            f"{path} carries no model config: it is in the authors' layout, whose feature "
            f"shift reads the router output (shift_input={RELEASED_SHIFT_INPUT!r}), but the "
            f"given config has shift_input={cfg.shift_input!r}, a different function of these "
            "weights. Use shift_input='router', or pass allow_non_released_shift=True "
            "(CLI: --allow-non-released-shift) to run them under the other shift on purpose.")
    try:
        params, report = state_dict_to_params(sd, cfg, source=path)
    except ConversionError as e:
        # (only then: a value without a shape fails check_real, which lists no shapes)
        found = _backbone_shape(sd) if source == "default" and e.mismatched else ""
        if not found:
            raise
        raise ConversionError(
            f"{path} carries no model config and is not the released architecture (its "
            f"weights say {found}; released: width={cfg.width}, depth={cfg.depth}, "
            f"patch_size={cfg.patch_size}, image_size={cfg.image_size}): give the config it "
            "was made with (CLI: --model-config FILE.json, keys of "
            "mami_jax.models.config.default_config)", e.missing, e.extra, e.mismatched) from e
    return OfficialImport(params, cfg, report, source, stripped)


def _backbone_shape(sd: Mapping) -> str:
    """What a released-layout state dict's shapes say of the backbone's size ("width=128,
    depth=4, patch_size=8, image_size=32"), as far as its keys tell; "" if they do not.
    The number of heads is not in the shapes, so a config cannot be inferred whole."""
    said = []
    if "class_embedding" in sd:
        said.append(f"width={int(sd['class_embedding'].shape[0])}")
    blocks = {k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}
    if blocks:
        said.append(f"depth={len(blocks)}")
    if "conv1.weight" in sd:
        patch = int(sd["conv1.weight"].shape[-1])
        said.append(f"patch_size={patch}")
        if "positional_embedding" in sd:
            side = math.isqrt(int(sd["positional_embedding"].shape[0]) - 1)
            said.append(f"image_size={side * patch}")
    return ", ".join(said)


def export_official(path: str, params: Mapping, cfg, *, module_prefix: bool = False,
                    allow_non_released_shift: bool = False,
                    experiment: Optional[str] = None) -> dict:
    """Writes ``params`` in the authors' layout (``.pth`` or ``.safetensors``); -> the
    state dict written (numpy arrays, keys as in the file).

    The model config goes into the file (``mami_config``), so ``load_official``
    reproduces the function; ``experiment``, the JSON of the run's whole config, goes in
    beside it (``mami_experiment_config``), so the applications read the file with the
    run's preprocessing. A model whose ``shift_input`` is not "router" is refused
    (``ShiftInputError``): the authors' code would run its weights under the released
    shift, another function. ``allow_non_released_shift=True`` writes it anyway (for
    our own loader or ``MaMITorch``, which read the embedded setting).
    """
    validate_config(cfg)
    if cfg.shift_input != RELEASED_SHIFT_INPUT and not allow_non_released_shift:
        raise ShiftInputError(
            f"refusing to export to {path}: the model has shift_input={cfg.shift_input!r}, but "
            f"the authors' code computes the feature shift from the router output "
            f"(shift_input={RELEASED_SHIFT_INPUT!r}), so it would compute a different function "
            "with these weights. Pass allow_non_released_shift=True (CLI: "
            "--allow-non-released-shift) to write it anyway; the file then records "
            f"shift_input={cfg.shift_input!r} for mami_jax's own loader.")
    state = params_to_state_dict(params, cfg)
    if module_prefix:
        state = {PREFIX + k: v for k, v in state.items()}
    extra = {CONFIG_KEY: cfg.to_json()}
    if experiment is not None:
        extra[EXPERIMENT_KEY] = experiment
    torch_io.save_state_dict(path, state, extra=extra)
    return state
