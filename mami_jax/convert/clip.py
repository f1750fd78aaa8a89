"""CLIP ViT weights -> our backbone; ComPA, slice adapters and head keep their init.

Two sources:

- OpenAI CLIP (``ViT-B-16.pt``): keys under ``visual.`` (``conv1.weight``,
  ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.{i}.{attn.in_proj_*, attn.out_proj, ln_1, mlp.c_fc,
  mlp.c_proj, ln_2}``), fp16. The released MaMI keeps exactly these names for its
  backbone, so after dropping ``visual.`` the backbone rows of the mapping table
  apply unchanged. The OpenAI downloads are TorchScript archives: loading them
  needs ``allow_torchscript=True`` (see ``torch_io``); a plain state-dict file
  (``torch.save(model.state_dict())``) or ``.safetensors`` needs nothing.
- Hugging Face ``CLIPVisionModel`` / ``CLIPModel`` directory (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``, sharded or not). Names are
  renamed to the OpenAI layout by ``HF_RENAMES`` and the separate q/k/v
  projections are fused into ``in_proj`` in q, k, v order. The config must say
  ``hidden_act="quick_gelu"`` (our model always uses QuickGELU; any other
  activation would silently change the function, so it is rejected) and its
  width, depth, heads, patch size, image size and LayerNorm eps must equal ours.

The OpenAI layout says neither its LayerNorm eps nor its number of heads; OpenAI's
ViTs have eps 1e-5 and ``width // 64`` heads, so a model config with others is
rejected as a differing HF config is. A config.json or shard index that is not a
JSON object of what it should hold is a ``ConversionError`` naming the file and key.

Keys that exist in CLIP but not in MaMI's backbone (``ln_post``, ``proj``, the
text tower, ``logit_scale``...) are reported as ignored; a missing, mis-shaped or
unrecognised vision key is an error listing all of them, and so is a used one
holding NaN or inf (``mapping.NonFiniteWeightsError``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

from mami_jax.convert import torch_io
from mami_jax.convert.mapping import (ConversionError, backbone_entries, check_finite,
                                      check_real, flatten_params, to_numpy, unflatten_params)
from mami_jax.runtime.json_object import parse_json_object

# Vision keys of CLIP that MaMI's backbone does not use (after removing "visual.").
CLIP_UNUSED = ("ln_post.weight", "ln_post.bias", "proj")
# What OpenAI CLIP's ViTs compute with and a state dict does not say (clip/model.py:
# LayerNorm's default eps, vision_heads = vision_width // 64).
OPENAI_LAYERNORM_EPS = 1e-5
OPENAI_HEAD_WIDTH = 64

# HF vision key (after "vision_model.") -> OpenAI visual key; q/k/v handled separately.
HF_RENAMES = (
    (r"embeddings\.class_embedding", "class_embedding"),
    (r"embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
     r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
)
_HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
_HF_BUFFERS = ("embeddings.position_ids",)
# Top-level keys of HF CLIP classes that are not part of the vision tower.
_HF_NON_VISION = ("visual_projection.weight", "text_projection.weight", "logit_scale")


@dataclasses.dataclass
class ClipImport:
    params: dict           # full MaMI params: backbone from CLIP, the rest as given
    loaded: list           # our paths replaced by CLIP weights
    kept: list             # our paths that kept their initialisation
    ignored: list          # source keys not used (CLIP-only vision keys, text tower, ...)
    source_format: str     # "openai" or "huggingface"


# ----------------------------------------------------------------------------- sources


def openai_visual(state_dict: Mapping[str, Any], source: str) -> tuple[dict, list]:
    """OpenAI CLIP state dict -> ({visual key without prefix: array}, ignored keys)."""
    visual, ignored = {}, []
    for key, value in state_dict.items():
        if key.startswith("visual."):
            visual[key[len("visual."):]] = value
        else:
            ignored.append(key)
    if not visual:
        raise ConversionError(f"{source}: no 'visual.' keys; is this an OpenAI CLIP checkpoint?",
                              missing=["visual.*"])
    return visual, ignored


def hf_visual(state_dict: Mapping[str, Any], source: str) -> tuple[dict, list]:
    """HF CLIP(Vision)Model state dict -> (OpenAI-layout visual dict, ignored keys).

    ``CLIPModel`` (and ``CLIPVisionModel`` before transformers 5) keys carry a
    ``vision_model.`` prefix; transformers 5's ``CLIPVisionModel`` has none.
    """
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in state_dict) else ""
    visual, ignored, qkv, unknown = {}, [], {}, []
    for key, value in state_dict.items():
        if not key.startswith(prefix) or key in _HF_NON_VISION:
            ignored.append(key)
            continue
        name = key[len(prefix):]
        if name in _HF_BUFFERS:
            ignored.append(key)
            continue
        match = _HF_QKV.fullmatch(name)
        if match:
            layer, proj, kind = match.groups()
            qkv.setdefault((int(layer), kind), {})[proj] = value
            continue
        for pattern, repl in HF_RENAMES:
            if re.fullmatch(pattern, name):
                visual[re.sub(pattern, repl, name)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: unrecognised Hugging Face CLIP vision keys",
                              extra=unknown)
    missing = []
    for (layer, kind), parts in sorted(qkv.items()):
        absent = [p for p in "qkv" if p not in parts]
        if absent:
            missing += [f"vision_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}"
                        for p in absent]
            continue
        fused = np.concatenate([to_numpy(parts[p]) for p in "qkv"], axis=0)
        visual[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    if missing:
        raise ConversionError(f"{source}: incomplete q/k/v projections", missing=missing)
    if not visual:
        raise ConversionError(f"{source}: no CLIP vision keys; is this a Hugging Face CLIP "
                              "model?", missing=["(vision_model.)embeddings.*"])
    return visual, ignored


def check_hf_config(config: Mapping[str, Any], cfg, source: str) -> None:
    """Rejects a HF CLIP config whose function differs from our backbone's."""
    vision = config.get("vision_config", config)
    if not isinstance(vision, Mapping):
        raise ConversionError(f"{source}: 'vision_config' is a {type(vision).__name__}, not "
                              "a JSON object of the vision tower's settings")
    act = vision.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise ValueError(
            f"{source}: hidden_act={act!r}, but MaMI's backbone always uses QuickGELU "
            "(OpenAI CLIP's activation). Importing these weights would change the function; "
            "only quick_gelu checkpoints are accepted.")
    want = {"hidden_size": cfg.width, "num_hidden_layers": cfg.depth,
            "num_attention_heads": cfg.num_heads, "patch_size": cfg.patch_size,
            "image_size": cfg.image_size, "intermediate_size": cfg.width * cfg.mlp_ratio,
            "layer_norm_eps": cfg.layernorm_eps}
    bad = [f"{k}={vision[k]!r} (model config wants {v!r})" for k, v in want.items()
           if k in vision and vision[k] != v]
    if bad:
        raise ValueError(f"{source}: Hugging Face config does not match the model config: "
                         + ", ".join(bad))
    if vision.get("num_channels", 3) != 3:
        raise ValueError(f"{source}: num_channels={vision['num_channels']}, expected 3")


def _read_json_object(path: str, holds: str) -> dict:
    """The JSON object in ``path``; ``ConversionError`` naming the file when it is not one
    (cut short, a list): ``json.load``'s own error named neither file nor key."""
    with open(path, "rb") as f:
        return parse_json_object(f.read(), path, holds, ConversionError)


def _shard_names(index_path: str) -> list:
    """The weight files a sharded HF checkpoint's index names (its ``weight_map``: key ->
    file); ``ConversionError`` naming the index and the key when it has none."""
    weight_map = _read_json_object(index_path, "shard index values").get("weight_map")
    if (not isinstance(weight_map, Mapping)
            or not all(isinstance(v, str) for v in weight_map.values())):
        raise ConversionError(f"{index_path}: no 'weight_map' object (state-dict key -> "
                              "weight file name); not a Hugging Face shard index")
    return sorted(set(weight_map.values()))


def read_hf_directory(directory: str) -> tuple[dict, dict]:
    """-> (state dict, config.json) of a HF model directory, read as data only."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory}: no config.json; not a Hugging Face model directory")
    config = _read_json_object(config_path, "model config values")
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            shards = _shard_names(index_path)
            state = {}
            for shard in shards:
                state.update(_plain_state_dict(torch_io.load_file(os.path.join(directory, shard)),
                                               os.path.join(directory, shard)))
            return state, config
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return _plain_state_dict(torch_io.load_file(path), path), config
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _plain_state_dict(obj, source) -> dict:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
        raise torch_io.CheckpointFileError(f"{source}: not a flat state dict of tensors")
    return dict(obj)


def load_clip_visual(source: str, cfg, *, allow_torchscript: bool = False):
    """-> (OpenAI-layout visual dict, ignored keys, format) from a file or HF directory."""
    if os.path.isdir(source):
        state, config = read_hf_directory(source)
        check_hf_config(config, cfg, os.path.join(source, "config.json"))
        visual, ignored = hf_visual(state, source)
        return visual, ignored, "huggingface"
    state = _plain_state_dict(torch_io.load_file(source, allow_torchscript=allow_torchscript),
                              source)
    if any(k.startswith("vision_model.") or k.startswith("embeddings.patch_embedding")
           for k in state):
        # its config.json (activation, layer-norm eps, sizes) decides the function it
        # computes: without it, QuickGELU and 1e-5 were assumed unsaid
        beside = os.path.join(os.path.dirname(os.path.abspath(source)), "config.json")
        if not os.path.isfile(beside):
            raise FileNotFoundError(
                f"{source}: Hugging Face CLIP weights without their config.json beside them "
                "(its hidden_act and layer_norm_eps decide what the model computes); give "
                "the model's folder")
        check_hf_config(_read_json_object(beside, "model config values"), cfg, beside)
        visual, ignored = hf_visual(state, source)
        return visual, ignored, "huggingface"
    visual, ignored = openai_visual(state, source)
    check_openai_config(cfg, source)
    return visual, ignored, "openai"


def check_openai_config(cfg, source: str) -> None:
    """Rejects a model config under which OpenAI-layout weights compute another function,
    as ``check_hf_config`` rejects one that differs from a HF config: the state dict does
    not say its LayerNorm eps nor its number of heads (a model config with other values
    imported them without a word). Every CLIP of this layout has eps 1e-5: another is an
    error. OpenAI's ViTs have 64-wide heads, but open_clip's larger ones (ViT-H/14: 16
    heads of 80) share the layout, so other heads are a warning on stderr, not a refusal."""
    if cfg.layernorm_eps != OPENAI_LAYERNORM_EPS:
        raise ValueError(f"{source}: OpenAI CLIP layout does not match the model config: "
                         f"layernorm_eps={OPENAI_LAYERNORM_EPS!r} (model config wants "
                         f"{cfg.layernorm_eps!r})")
    heads = cfg.width // OPENAI_HEAD_WIDTH
    if cfg.num_heads != heads:
        print(f"warning: {source}: OpenAI's CLIP ViTs have {OPENAI_HEAD_WIDTH}-wide heads "
              f"(num_heads {heads} at width {cfg.width}), the model config has "
              f"{cfg.num_heads}: right only for weights trained with {cfg.num_heads} heads "
              "(open_clip's larger ViTs), which the state dict cannot tell",
              file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- merge


def merge_backbone(params: Mapping, visual: Mapping[str, Any], cfg, *, source: str = "CLIP",
                   ignored=()) -> ClipImport:
    """Replaces the backbone leaves of ``params`` by the OpenAI-layout ``visual`` weights."""
    rows = backbone_entries(cfg)
    by_key = {e.theirs: e for e in rows}
    missing = [e.theirs for e in rows if e.theirs not in visual]
    check_real({k: v for k, v in visual.items() if k in by_key}, source)
    extra = [k for k in visual if k not in by_key and k not in CLIP_UNUSED]
    mismatched = [(k, tuple(v.shape), by_key[k].their_shape) for k, v in visual.items()
                  if k in by_key and tuple(v.shape) != by_key[k].their_shape]
    if missing or extra or mismatched:
        raise ConversionError(
            f"{source}: CLIP vision weights do not fit the backbone of the model config "
            f"(width={cfg.width}, depth={cfg.depth}, patch_size={cfg.patch_size}, "
            f"image_size={cfg.image_size})", missing, extra, mismatched)
    flat = {k: np.asarray(v) for k, v in flatten_params(params).items()}
    absent = [e.ours for e in rows if e.ours not in flat]
    if absent:
        raise ConversionError("params lack backbone entries", missing=absent)
    with np.errstate(over="ignore"):  # values beyond float32's range: check_finite below
        values = {e.theirs: to_numpy(visual[e.theirs]).astype(np.float32) for e in rows}
    check_finite(values, source)
    loaded = []
    for e in rows:
        flat[e.ours] = np.ascontiguousarray(e.transform.inv(values[e.theirs]))
        loaded.append(e.ours)
    kept = [p for p in flat if p not in set(loaded)]
    ignored = list(ignored) + [f"visual.{k}" for k in visual if k in CLIP_UNUSED]
    return ClipImport(unflatten_params(flat), loaded, kept, ignored, "")


def import_clip(source: str, cfg, params: Mapping, *, allow_torchscript: bool = False
                ) -> ClipImport:
    """CLIP weights from ``source`` (file or HF directory) into a copy of ``params``."""
    return merge_clip(params, load_clip_visual(source, cfg, allow_torchscript=allow_torchscript),
                      cfg, source)


def merge_clip(params: Mapping, loaded: tuple, cfg, source: str) -> ClipImport:
    """``load_clip_visual``'s ``loaded`` (visual weights, ignored keys, format) of ``source``
    into a copy of ``params``: apart, so a caller can check the source before it makes the
    parameters."""
    visual, ignored, fmt = loaded
    result = merge_backbone(params, visual, cfg, source=source, ignored=ignored)
    result.source_format = fmt
    return result
