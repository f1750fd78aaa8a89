"""A teacher's input from a decoded manifest row.

Rows are decoded by the project's own decoder (``mami_jax.data.decode.decode``:
float32 in [0, 1], (S, H, W, 3), grey replicated to three channels; through a
modality's value window where ``teachers.extract --value-window`` gives the run's), so
teachers see the pixels the student is trained on. Then:

- 2-D teachers (``input="image"``): the middle slice ``S // 2`` (the whole image when
  S = 1), resized to the teacher's (H, W) with antialiased bilinear interpolation
  (aspect not kept: the phantoms and most medical crops are square), then
  ``(x - mean) / std`` per channel; returns (3, H, W). Teachers of one size share the
  resize, and a grey image is resized as one channel (``teacher_inputs``): resizing a
  2048-pixel X-ray is a sizeable share of reading it, and the medical bag has three 2-D
  teachers per X-ray.
- volume teachers (``input="volume"``): every slice, one grey channel, resampled to
  the teacher's (D, H, W) with trilinear interpolation, ``(x - mean) / std``; returns
  (1, D, H, W).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from teachers.registry import TeacherSpec


def _resized_middle(decoded: np.ndarray, size: tuple[int, ...]):
    """The middle slice as a torch (3, H, W) tensor at ``size``; a grey slice (C = 1) is
    resized once and shared by the three channels, which is what resizing each of three
    equal channels gives, bit for bit, at a third of the work."""
    import torch
    import torch.nn.functional as F

    picture = decoded[decoded.shape[0] // 2]                      # (H, W, C)
    x = torch.from_numpy(np.ascontiguousarray(picture, np.float32)).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                          antialias=True)
    return x[0].expand(3, -1, -1)


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
    replicates it). 2-D teachers of one input size share one resize of the middle slice."""
    if decoded.ndim != 4 or decoded.shape[-1] not in (1, 3):
        raise ValueError(f"decoded image must be (S, H, W, 1 or 3), got {decoded.shape}")
    resized, out = {}, {}
    for spec in specs:
        if spec.input == "image":
            size = tuple(spec.size)
            if size not in resized:
                resized[size] = _resized_middle(decoded, size)
            out[spec.name] = _normalised(resized[size], spec)
        elif spec.input == "volume":
            out[spec.name] = volume_input(decoded, spec)
        else:
            raise ValueError(f"teacher {spec.name} takes no pixels")
    return out


def teacher_input(decoded: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    """One teacher's input of one decoded row (``teacher_inputs`` of that teacher alone)."""
    return teacher_inputs(decoded, [spec])[spec.name]
