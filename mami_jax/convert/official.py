"""The authors' released MaMI checkpoint (and our own exports) -> our params.

The released file is ``torch.load(f)["model"]`` with a ``module.`` prefix on
every key (it was saved from a DataParallel wrapper). Our exports are
``{"model": state_dict, "mami_config": cfg_json}`` without the prefix, or a
``.safetensors`` file with the config in its metadata; both are accepted here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from mami_jax.convert import torch_io
from mami_jax.convert.checkpoint_dir import config_from_json
from mami_jax.convert.mapping import ImportReport, state_dict_to_params
from mami_jax.models.config import default_config, validate_config

PREFIX = "module."
CONFIG_KEY = "mami_config"


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


def _embedded_config(obj: Any, path: str) -> Optional[str]:
    if path.endswith(".safetensors"):
        return torch_io.read_safetensors_metadata(path).get(CONFIG_KEY)
    if isinstance(obj, Mapping) and isinstance(obj.get(CONFIG_KEY), str):
        return obj[CONFIG_KEY]
    return None


def load_official(path: str, cfg=None) -> OfficialImport:
    """Reads a released-layout checkpoint file into our params.

    ``cfg`` defaults to the config embedded by our exporter, else the released
    architecture (``default_config()``). Raises ``ConversionError`` listing every
    missing, unexpected and mis-shaped key.
    """
    obj = torch_io.load_file(path)
    sd, stripped = extract_state_dict(obj, path)
    if cfg is not None:
        source = "argument"
    else:
        text = _embedded_config(obj, path)
        cfg, source = ((config_from_json(text, f"{path}:{CONFIG_KEY}"), "file") if text
                       else (default_config(), "default"))
    validate_config(cfg)
    params, report = state_dict_to_params(sd, cfg, source=path)
    return OfficialImport(params, cfg, report, source, stripped)
