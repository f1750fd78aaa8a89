"""How a transformers image processor's saved value settings map a teacher's input values.

A processor scales the 8-bit picture by ``rescale_factor`` (``do_rescale``, 1/255 by
default), then normalises it, ``(x - image_mean) / image_std`` (``do_normalize``). The
teachers read every picture in [0, 1] (``x = pixel / 255``) and normalise with the spec's
``mean`` and ``std``, so a processor's scale ``s = 255 * rescale_factor`` (255 without
rescaling: the processor feeds 0..255) folds into them exactly:
``(s x - m) / d = (x - m / s) / (d / s)``. Without ``do_normalize`` the mean is 0 and the
std 1 before the fold. A folder saying nothing keeps transformers' defaults (rescale by
1/255, normalise), which is what the loaders did before these keys were read.
"""

from __future__ import annotations

import math

from teachers.resize_settings import ResizeSettingError


def _per_channel(value, file: str, key: str) -> tuple[float, ...]:
    """A processor's mean or std: one number for all channels or one per channel."""
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (not isinstance(values, (list, tuple)) or len(values) not in (1, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in values)):
        raise ResizeSettingError(f"{file}: {key} is {value!r}, not a number or one per channel "
                                 "(3)")
    return tuple(float(v) for v in values) * (3 if len(values) == 1 else 1)


def processor_mean_std(proc: dict, file: str,
                       default: tuple[tuple[float, ...], tuple[float, ...]]) -> dict:
    """``{"mean": ..., "std": ...}`` for a spec fed pictures in [0, 1], from the processor
    settings ``proc`` read from ``file`` (``default``, the registry's, where the file
    names no mean and std); a setting no input here can follow is a ResizeSettingError
    naming the file and the key."""
    if proc.get("do_normalize", True) is False:
        mean, std = (0.0,) * 3, (1.0,) * 3
    elif "image_mean" in proc or "image_std" in proc:
        if "image_mean" not in proc or "image_std" not in proc:
            missing = "image_std" if "image_mean" in proc else "image_mean"
            raise ResizeSettingError(f"{file}: {missing} is not set beside the other; the "
                                     "processor normalises with both")
        mean = _per_channel(proc["image_mean"], file, "image_mean")
        std = _per_channel(proc["image_std"], file, "image_std")
        if min(std) <= 0:
            raise ResizeSettingError(f"{file}: image_std is {proc['image_std']!r}; a std is "
                                     "above 0")
    else:
        mean, std = tuple(default[0]), tuple(default[1])
    scale = 255.0
    if proc.get("do_rescale", True) is not False:
        factor = proc.get("rescale_factor", 1 / 255)
        if (not isinstance(factor, (int, float)) or isinstance(factor, bool)
                or not math.isfinite(factor) or factor <= 0):
            raise ResizeSettingError(f"{file}: rescale_factor is {factor!r}, not a number "
                                     "above 0")
        scale = 255.0 * float(factor)
    if abs(scale - 1.0) < 1e-9:
        return {"mean": mean, "std": std}
    return {"mean": tuple(m / scale for m in mean), "std": tuple(d / scale for d in std)}
