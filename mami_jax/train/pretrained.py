"""Initial weights for training: the authors' released MaMI, or CLIP ViT-B/16 for the backbone.

``config.init.official_checkpoint`` (a .pth of the released model) wins over
``config.init.clip_checkpoint`` (OpenAI CLIP archive or state dict, or a Hugging
Face CLIPVisionModel folder). A configured file that does not exist is an error
that says how to get it, unless ``config.init.require_pretrained`` is False
(then the model keeps its random initialisation, and the log says so).
"""

from __future__ import annotations

import os

import jax
from absl import logging

HOW_TO_GET_CLIP = (
    "CLIP ViT-B/16 weights are not downloaded at run time. On a machine with internet, get the "
    "OpenAI archive (e.g. `python -c \"import clip; clip.load('ViT-B/16')\"` caches "
    "~/.cache/clip/ViT-B-16.pt) or save a Hugging Face model "
    "(`CLIPVisionModel.from_pretrained('openai/clip-vit-base-patch16').save_pretrained(DIR)`), "
    "copy it here and set config.init.clip_checkpoint to its path (OpenAI archives are TorchScript: "
    "also set config.init.allow_torchscript=True, or convert them to a state dict), or set "
    "config.init.require_pretrained=False to train from random initialisation.")


def load_pretrained(params, config):
    """Returns MaMI params with pretrained weights loaded per ``config.init``."""
    init = config.init
    official = os.path.expanduser(init.official_checkpoint) if init.official_checkpoint else ""
    clip = os.path.expanduser(init.clip_checkpoint) if init.clip_checkpoint else ""
    if official:
        if not os.path.exists(official):
            raise FileNotFoundError(f"config.init.official_checkpoint={official} does not exist")
        from mami_jax.convert.official import load_official
        logging.info("initialising every parameter from the released checkpoint %s", official)
        return load_official(official, config.model).params
    if clip and os.path.exists(clip):
        from mami_jax.convert.clip import import_clip
        result = import_clip(clip, config.model, jax.device_get(params),
                             allow_torchscript=bool(init.allow_torchscript))
        logging.info("initialised the backbone from CLIP weights %s (%s): %d tensors loaded, "
                     "%d kept their initialisation", clip, result.source_format,
                     len(result.loaded), len(result.kept))
        return result.params
    if init.require_pretrained:
        where = f"config.init.clip_checkpoint={clip} does not exist. " if clip else \
            "no config.init.clip_checkpoint is set. "
        raise FileNotFoundError(where + HOW_TO_GET_CLIP)
    logging.warning("no pretrained weights configured: training from random initialisation")
    return params
