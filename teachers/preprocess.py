"""A teacher's input from a decoded manifest row.

Rows are decoded by the project's own decoder (``mami_jax.data.decode.decode``:
float32 in [0, 1], (S, H, W, 3), grey replicated to three channels), so teachers
see exactly the pixels the student is trained on. Then:

- 2-D teachers (``input="image"``): the middle slice ``S // 2`` (the whole image when
  S = 1), resized to the teacher's (H, W) with antialiased bilinear interpolation
  (aspect not kept: the phantoms and most medical crops are square), then
  ``(x - mean) / std`` per channel; returns (3, H, W).
- volume teachers (``input="volume"``): every slice, one grey channel, resampled to
  the teacher's (D, H, W) with trilinear interpolation, ``(x - mean) / std``; returns
  (1, D, H, W).
"""

from __future__ import annotations

import numpy as np

from teachers.registry import TeacherSpec


def image_input(decoded: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    picture = decoded[decoded.shape[0] // 2]                      # (H, W, 3)
    x = torch.from_numpy(np.ascontiguousarray(picture, np.float32)).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(spec.size):
        x = F.interpolate(x, size=tuple(spec.size), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(spec.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32)[:, None, None]
    return ((x[0] - mean) / std).numpy()


def volume_input(decoded: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.ascontiguousarray(decoded[..., 0], np.float32))[None, None]
    if tuple(grey.shape[-3:]) != tuple(spec.size):
        grey = F.interpolate(grey, size=tuple(spec.size), mode="trilinear", align_corners=False)
    return ((grey[0] - float(spec.mean[0])) / float(spec.std[0])).numpy()


def teacher_input(decoded: np.ndarray, spec: TeacherSpec) -> np.ndarray:
    if decoded.ndim != 4 or decoded.shape[-1] != 3:
        raise ValueError(f"decoded image must be (S, H, W, 3), got {decoded.shape}")
    if spec.input == "image":
        return image_input(decoded, spec)
    if spec.input == "volume":
        return volume_input(decoded, spec)
    raise ValueError(f"teacher {spec.name} takes no pixels")
