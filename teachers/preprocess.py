"""A teacher's input from a decoded manifest row.

Rows are decoded by the project's own decoder (``mami_jax.data.decode.decode``:
float32 in [0, 1], (S, H, W, 3), grey replicated to three channels): as the student
reads them (min-max, a DICOM by its own window, or the modality's value window where
``teachers.extract --value-window`` gives the run's), or through the teacher's own
``value_window`` where it has one (CT-FM: Hounsfield units [-1024, 2048], its model
card's scaling; ``teachers.extract`` decodes a row once per distinct window). Then:

- 2-D teachers (``input="image"``): the middle slice ``S // 2`` (the whole image when
  S = 1), resized as the teacher's own image processor resizes (``TeacherSpec``
  ``resize_short`` / ``resize_to`` / ``resample`` / ``crop_offset``), then centre-cropped
  to its (H, W) ``size``, then ``(x - mean) / std`` per channel; returns (3, H, W). The
  default resizes straight to ``size`` with antialiased bilinear interpolation (aspect not
  kept); the released teachers resize the short side keeping the aspect and crop the
  middle, as their library's inference transform does (transformers' processors, timm,
  open_clip; the crop's corner placed as that library places it, ``crop_offset``).
  Teachers of one resize (``TeacherSpec.resize_key``) share it, and a grey image is
  resized as one channel (``teacher_inputs``): resizing a 2048-pixel X-ray is a sizeable
  share of reading it, and the medical bag has three 2-D teachers per X-ray.
- volume teachers (``input="volume"``): every slice, one grey channel, resampled to
  the teacher's (D, H, W) with trilinear interpolation, ``(x - mean) / std``; returns
  (1, D, H, W).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from teachers.registry import TeacherSpec


def short_side_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) with the short side ``short`` and the long side ``int(short * long / short
    side)``, as transformers' ``get_resize_output_image_size`` computes it (aspect kept,
    rounded down), so the centre crop falls on the same pixels."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def resized_shape(spec: TeacherSpec, height: int, width: int) -> tuple[int, int]:
    """The (H, W) a picture of ``height`` x ``width`` is resized to before the crop."""
    if spec.resize_short:
        return short_side_shape(height, width, spec.resize_short)
    return tuple(spec.resize_to or spec.size)


def _resize(x, shape: tuple[int, int], resample: str):
    """``x`` (1, C, H, W) at ``shape`` in torch's ``resample`` mode, antialiased as PIL and
    torchvision resize (nearest has no antialiasing); bicubic overshoots [0, 1] at edges,
    where PIL's and torchvision's 8-bit pictures clip, so it is clipped."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    if resample == "nearest":
        return F.interpolate(x, size=tuple(shape), mode="nearest")
    x = F.interpolate(x, size=tuple(shape), mode=resample, align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0) if resample == "bicubic" else x


def crop_start(margin: int, offset: str) -> int:
    """Where a centre crop starts given the picture's ``margin`` beyond it: ``margin // 2``
    as transformers' ``center_crop`` ("floor"), ``int(round(margin / 2))`` as torchvision's
    ``CenterCrop`` ("round": Python's round, half to even, so 9.5 -> 10 and 10.5 -> 10)."""
    return margin // 2 if offset == "floor" else int(round(margin / 2.0))


def _centre_crop(x, size: tuple[int, ...], offset: str = "floor"):
    """The middle ``size`` of ``x`` (..., H, W), its corner placed as ``crop_start``; a
    picture smaller than the crop is an error (the processors would pad it with black,
    which the loader refuses to configure)."""
    (height, width), (h, w) = x.shape[-2:], tuple(size)
    if (height, width) == (h, w):
        return x
    if h > height or w > width:
        raise ValueError(f"cannot centre-crop {h}x{w} from a {height}x{width} picture")
    top, left = crop_start(height - h, offset), crop_start(width - w, offset)
    return x[..., top:top + h, left:left + w]


def _resized_middle(decoded: np.ndarray, spec: TeacherSpec):
    """The middle slice as a torch (3, H, W) tensor at ``spec.size``: resized as the spec
    says, then centre-cropped. A grey slice (C = 1) is resized once and shared by the three
    channels, which is what resizing each of three equal channels gives, bit for bit, at a
    third of the work."""
    import torch

    picture = decoded[decoded.shape[0] // 2]                      # (H, W, C)
    x = torch.from_numpy(np.ascontiguousarray(picture, np.float32)).permute(2, 0, 1)[None]
    x = _resize(x, resized_shape(spec, *picture.shape[:2]), spec.resample)
    return _centre_crop(x, spec.size, spec.crop_offset)[0].expand(3, -1, -1)


def _normalised(x, spec: TeacherSpec) -> np.ndarray:
    import torch

    mean = torch.tensor(spec.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32)[:, None, None]
    return ((x - mean) / std).numpy()


def volume_input(decoded: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.ascontiguousarray(decoded[..., 0], np.float32))[None, None]
    if tuple(grey.shape[-3:]) != tuple(spec.size):
        grey = F.interpolate(grey, size=tuple(spec.size), mode="trilinear", align_corners=False)
    return ((grey[0] - float(spec.mean[0])) / float(spec.std[0])).numpy()


def teacher_inputs(decoded: np.ndarray, specs: Sequence[TeacherSpec]) -> dict[str, np.ndarray]:
    """Each teacher's input of one decoded row, by teacher name. ``decoded`` is (S, H, W, C)
    with C = 3, or C = 1 for grey as ``decode.open_volume`` reads it (before the decoder
    replicates it). 2-D teachers of one resize (``TeacherSpec.resize_key``: size, short
    side, resize shape, interpolation) share one resize of the middle slice."""
    if decoded.ndim != 4 or decoded.shape[-1] not in (1, 3):
        raise ValueError(f"decoded image must be (S, H, W, 1 or 3), got {decoded.shape}")
    resized, out = {}, {}
    for spec in specs:
        if spec.input == "image":
            key = spec.resize_key()
            if key not in resized:
                resized[key] = _resized_middle(decoded, spec)
            out[spec.name] = _normalised(resized[key], spec)
        elif spec.input == "volume":
            out[spec.name] = volume_input(decoded, spec)
        else:
            raise ValueError(f"teacher {spec.name} takes no pixels")
    return out


def teacher_input(decoded: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    """One teacher's input of one decoded row (``teacher_inputs`` of that teacher alone)."""
    return teacher_inputs(decoded, [spec])[spec.name]
