"""How each library's saved preprocessing settings resize a teacher's picture.

A teacher is fed what its own library's inference transform feeds it, read from the
settings saved beside its weights and turned into ``TeacherSpec`` fields (``size``, the
crop; ``resize_short`` or ``resize_to``, the resize before it; ``resample``; ``crop_offset``,
"round" for the torchvision crops of timm and open_clip):

- transformers (``preprocessor_config.json``, ``processor_resize``): ``size`` resized
  (short side, or a shape), then ``crop_size`` centre-cropped, PIL ``resample`` codes;
- timm (``config.json``'s ``pretrained_cfg``, ``timm_resize``): timm's evaluation
  transform, the short side to ``floor(size / crop_pct)`` in its ``interpolation``, then a
  centre crop of ``input_size`` (``crop_mode`` "center"; "squash" resizes both sides);
- open_clip (``open_clip_config.json``'s ``preprocess_cfg``, ``open_clip_resize``): the
  short side to the tower's ``image_size`` (``resize_mode`` "shortest", bicubic unless
  ``interpolation`` says bilinear), then a centre crop; "squash" resizes straight.

A setting missing from the file keeps the registry's value (the registry holds each
release's published transform); a setting whose pictures would need padding or would
come out in their own shapes cannot be batched and is a ``ResizeSettingError`` naming the
file and the key. The loaders turn it into their ``TeacherLoadError``.
"""

from __future__ import annotations

import dataclasses
import math

from teachers.registry import RESAMPLE_MODES, TeacherSpec


class ResizeSettingError(ValueError):
    """A saved preprocessing setting no teacher input here can follow; names the file."""


#: PIL's resampling codes, as image processors save ``resample``, that a teacher's resize
#: reproduces (torch's antialiased interpolation; nearest without antialiasing).
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def _hw(value, file: str, key: str) -> tuple[int, int] | None:
    """``{"height": H, "width": W}`` -> (H, W); None for a dict without them."""
    if not (isinstance(value, dict) and "height" in value and "width" in value):
        return None
    try:
        return int(value["height"]), int(value["width"])
    except (TypeError, ValueError):
        raise ResizeSettingError(f"{file}: {key} {value}: height and width must be "
                               "integers") from None


def _resample(proc: dict, file: str) -> dict:
    """``resample`` (a PIL code) as the spec's mode; {} when the file has none."""
    if "resample" not in proc:
        return {}
    code = proc["resample"]
    if type(code) is not int or code not in PIL_RESAMPLE:     # bool is no PIL code
        raise ResizeSettingError(f"{file}: resample {code!r} is not supported: PIL codes "
                               f"{', '.join(f'{k} {v}' for k, v in PIL_RESAMPLE.items())}")
    return {"resample": PIL_RESAMPLE[code]}


def _resize_before_crop(proc: dict, file: str, crop: tuple[int, int]) -> dict:
    """The resize of ``size`` before a centre crop to ``crop`` (the spec's fields)."""
    size = proc.get("size")
    if size is None:                 # only a crop: resized straight to it, as before
        return dict(size=crop, resize_short=0, resize_to=())
    hw = _hw(size, file, "size")
    if hw is not None:
        return dict(size=crop, resize_short=0, resize_to=() if hw == crop else hw)
    if isinstance(size, dict) and set(size) == {"shortest_edge"} \
            and type(size["shortest_edge"]) is int and size["shortest_edge"] > 0:
        return dict(size=crop, resize_short=size["shortest_edge"], resize_to=())
    raise ResizeSettingError(f"{file}: size {size!r} is not read: give {{\"shortest_edge\": N}} "
                           "or {\"height\": H, \"width\": W}")


def processor_resize(spec: TeacherSpec, file: str, proc: dict) -> dict:
    """The resize of the image processor settings ``proc`` (read from ``file``) as
    ``TeacherSpec`` fields (size, resize_short, resize_to, resample), so a teacher is fed
    what transformers' ``AutoImageProcessor`` of its folder feeds it: ``size`` resized
    (``{"shortest_edge": N}``: the short side to N, aspect kept; ``{"height", "width"}``:
    to that shape), then centre-cropped to ``crop_size`` where ``do_center_crop``. A file
    with ``crop_size`` and no ``size`` resizes straight to the crop; one with neither
    keeps the registry's resize. Settings that would feed pictures of their own shapes
    (no resize; a short-side resize without a crop) cannot be batched and are errors."""
    changes = _resample(proc, file)
    if proc.get("do_resize") is False:
        raise ResizeSettingError(f"{file}: do_resize false feeds each picture at its own "
                               "shape, which cannot be batched; a teacher needs a resize")
    crop = _hw(proc.get("crop_size"), file, "crop_size")
    centre_crop = proc.get("do_center_crop", True) is not False
    if centre_crop and crop is not None:
        changes.update(_resize_before_crop(proc, file, crop))
    elif "size" in proc or not centre_crop:
        hw = _hw(proc.get("size"), file, "size")
        if hw is None:
            raise ResizeSettingError(f"{file}: size {proc.get('size')!r} without a centre crop "
                                   "(do_center_crop false, or no crop_size) gives pictures of "
                                   "their own shapes, which cannot be batched; give "
                                   "{\"height\": H, \"width\": W} or a crop_size")
        changes.update(size=hw, resize_short=0, resize_to=())
    return _checked(spec, file, changes)


def _checked(spec: TeacherSpec, file: str, changes: dict) -> dict:
    """``changes``, once the spec they give is valid (e.g. a resize covering the crop)."""
    try:
        dataclasses.replace(spec, **changes)
    except ValueError as e:
        raise ResizeSettingError(f"{file}: {e}") from None
    return changes


def _interpolation(value, file: str, key: str, allowed=RESAMPLE_MODES) -> str:
    if value not in allowed:
        raise ResizeSettingError(f"{file}: {key} {value!r} is not supported: one of "
                                 f"{list(allowed)}")
    return value


def _keep_ratio_error(file: str, key: str, size, mode: str, library: str) -> ResizeSettingError:
    """A non-square input with a short-side resize: the libraries resize by both sides'
    ratio then (``ResizeKeepRatio``), which the teachers' input does not reproduce."""
    return ResizeSettingError(f"{file}: a non-square {key} {list(size)} with {mode} resizes "
                              f"by both sides' ratio ({library}'s ResizeKeepRatio), which is "
                              "not reproduced")


def _registry_crop_pct(spec: TeacherSpec) -> float | None:
    """The registry's crop fraction (crop side / resized short side); None where the
    registry resizes straight to the crop."""
    return spec.size[0] / spec.resize_short if spec.resize_short else None


def timm_resize(spec: TeacherSpec, file: str, pretrained: dict, size: tuple[int, int]) -> dict:
    """timm's evaluation transform (``transforms_imagenet_eval``) for the crop ``size`` as
    ``TeacherSpec`` fields: ``crop_pct``, ``interpolation`` and ``crop_mode`` of the
    ``pretrained_cfg`` read from ``file``, the registry's where the file has none."""
    changes = {"size": tuple(size), "crop_offset": "round"}      # torchvision's CenterCrop
    if "interpolation" in pretrained:
        changes["resample"] = _interpolation(pretrained["interpolation"], file,
                                             "pretrained_cfg.interpolation")
    crop_pct = pretrained.get("crop_pct")
    if crop_pct is None:
        crop_pct = _registry_crop_pct(spec)
    elif isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) \
            or not 0 < crop_pct <= 1:
        raise ResizeSettingError(f"{file}: pretrained_cfg.crop_pct {crop_pct!r} is not a "
                                 "fraction in (0, 1]")
    mode = pretrained.get("crop_mode") or "center"
    if crop_pct is None:             # the registry resizes straight to the crop
        return _checked(spec, file, dict(changes, resize_short=0, resize_to=()))
    scaled = tuple(math.floor(v / crop_pct) for v in size)     # timm's scale_size
    if mode == "squash":
        return _checked(spec, file, dict(changes, resize_short=0,
                                         resize_to=() if scaled == tuple(size) else scaled))
    if mode != "center":
        raise ResizeSettingError(f"{file}: pretrained_cfg.crop_mode {mode!r} is not "
                                 "supported: 'center' or 'squash' ('border' pads)")
    if scaled[0] != scaled[1]:
        raise _keep_ratio_error(file, "input_size", size, "crop_mode 'center'", "timm")
    return _checked(spec, file, dict(changes, resize_short=scaled[0], resize_to=()))


#: open_clip's inference interpolations (its "random" is bicubic at inference).
OPEN_CLIP_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "random": "bicubic"}


def open_clip_resize(spec: TeacherSpec, file: str, preprocess: dict,
                     size: tuple[int, int]) -> dict:
    """open_clip's inference transform (``image_transform(is_train=False)``) for the image
    tower's ``size`` as ``TeacherSpec`` fields, from the ``preprocess_cfg`` read from
    ``file``: ``resize_mode`` "shortest" (its default: short side to the size, then a
    centre crop) or "squash" (straight to the size); ``interpolation`` bicubic by default."""
    how = preprocess.get("interpolation", "bicubic")
    changes = {"size": tuple(size), "crop_offset": "round", "resample": OPEN_CLIP_INTERPOLATION[
        _interpolation(how, file, "preprocess_cfg.interpolation", tuple(OPEN_CLIP_INTERPOLATION))]}
    mode = preprocess.get("resize_mode", "shortest")
    if mode == "squash":
        return _checked(spec, file, dict(changes, resize_short=0, resize_to=()))
    if mode != "shortest":
        raise ResizeSettingError(f"{file}: preprocess_cfg.resize_mode {mode!r} is not "
                                 "supported: 'shortest' or 'squash' ('longest' pads)")
    if size[0] != size[1]:
        raise _keep_ratio_error(file, "image_size", size, "resize_mode 'shortest'", "open_clip")
    return _checked(spec, file, dict(changes, resize_short=size[0], resize_to=()))
