"""Slice sampling, training augmentation and evaluation preprocessing.

Inputs are float32 volumes (S, H, W, C) in [0, 1] from ``decode.open_volume``
(C = 1 grey or 3 colour); outputs are normalised float32 (T, size, size, 3).

Why these choices:

- A series becomes T slices spread evenly over its length: the centre of each of T
  equal segments in evaluation, a uniformly random position inside each segment in
  training (so every part of the volume is seen, never only the middle).
- Crop and resize happen in one PIL call with a source box (``Image.resize(box=...)``),
  on grey data before it is replicated to three channels: about 3x less work than
  resizing RGB, which matters on a 2-core input host.
- Evaluation follows the released model's preprocessing: short side to
  ``resize_size`` (256), centre crop ``image_size`` (224), ImageNet mean/std.
- ``normalization="per_image"`` instead standardises every image (a series as
  a whole) per channel to zero mean and unit variance, the usual per-volume
  z-scoring of MRI. It removes exposure, window and colour-balance changes
  between visits, which a model trained from scratch otherwise learns to match
  on (measured on the fundus phantoms: Rank-1 0.03 -> 0.58 after 400 steps).
  Pretrained CLIP weights expect the ImageNet statistics, so that stays the
  default.
- Training crops (``crop_mode``): "shift" (default) takes the evaluation view
  (short side to ``resize_size``, an ``image_size`` square) displaced by up to
  +-(resize_size - image_size) / 2 resized pixels along each axis, the way person
  re-ID pipelines pad and random-crop: the scale the model sees in training is the
  scale it is evaluated at. "random_resized" is Inception-style RandomResizedCrop
  (area ``crop_scale``, aspect ``crop_ratio``). Medical images are already framed
  by the acquisition, and identity lives in the size and shape of anatomy, which
  zooming of up to 1.4x (area 0.5) blurs: on the MRI phantoms a from-scratch model
  reached Rank-1 0.65 after 400 steps with "shift" and 0.43 with "random_resized"
  (``benchmarks/runlocal_ablation.py``, docs/experiments.md).
- Horizontal flips only for modalities whose left/right carries no identity or
  anatomy (``data.modalities.<m>.flip``): never X-ray or CT (the heart is on the left),
  never fundus (left/right eye is laterality).
- Right-angle rotations and vertical flips (the dihedral group of the square) only
  for modalities with no canonical orientation (``data.modalities.<m>.rotate``: pathology,
  where a tile shows tissue at whatever angle the section was cut): the standard
  invariance of histology models. On the phantoms at 32 px they stop the runlocal model
  from memorising its training tiles (train Rank-1 0.86 -> 0.36 after 1000 steps); at
  64 px with stain normalisation they lift test Rank-1 from 0.54 to 0.71 (400 steps,
  docs/experiments.md#pathology).
- The same crop, flip and erasing rectangle are applied to every slice of a series,
  so the slices stay registered with each other (the slice adapter relies on it).
- Every random number comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

IMAGENET_MEAN = np.asarray((0.485, 0.456, 0.406), np.float32)
IMAGENET_STD = np.asarray((0.229, 0.224, 0.225), np.float32)
NORMALIZATIONS = ("imagenet", "per_image")
CROP_MODES = ("shift", "random_resized")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation parameters (built from the data config)."""

    image_size: int = 224
    resize_size: int = 256   # "shift" crops: the evaluation view, moved by up to half the margin
    crop_mode: str = "shift"  # or "random_resized" (crop_scale, crop_ratio)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    erase_prob: float = 0.25
    erase_area: tuple[float, float] = (0.02, 0.2)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    brightness: float = 0.2
    contrast: float = 0.2
    flip_prob: float = 0.5
    normalization: str = "imagenet"  # or "per_image"

    def __post_init__(self):
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"data.crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.crop_mode == "shift" and self.image_size > self.resize_size:
            raise ValueError(f"image_size {self.image_size} > resize_size {self.resize_size}")
        # absl's --config.data.crop_ratio=2 gives (2,): it and a reversed or negative range
        # failed only inside a training worker, or drew from nonsense without a word
        for name, top in (("crop_scale", 1.0), ("crop_ratio", None), ("erase_area", 1.0),
                          ("erase_ratio", None)):
            _check_range(name, getattr(self, name), top)
        for name, top in (("erase_prob", 1.0), ("brightness", None), ("contrast", 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
                    and (top is None or value <= top)):
                within = f"in [0, {top:g}]" if top is not None else ">= 0"
                why = " (the contrast factor is drawn from 1 +- it)" if name == "contrast" else ""
                raise ValueError(f"data.{name}={value!r}: expected a number {within}{why}")


def _check_range(name: str, value, top: float | None) -> None:
    """``data.NAME``: a (low, high) pair of numbers with 0 < low <= high (<= ``top``)."""
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
          and 0 < value[0] <= value[1] and (top is None or value[1] <= top))
    if not ok:
        bound = f" <= {top:g}" if top is not None else ""
        raise ValueError(f"data.{name}={value!r}: expected (low, high) with 0 < low <= "
                         f"high{bound}")


def slice_indices(num_slices: int, t: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """T indices spread evenly over ``num_slices``; jittered inside each segment if ``rng``.

    Segment i covers [i*S/T, (i+1)*S/T); evaluation takes its centre, training a
    uniform position in it. With S < T indices repeat (a short series is stretched).
    """
    if num_slices < 1 or t < 1:
        raise ValueError(f"need num_slices >= 1 and t >= 1, got {num_slices}, {t}")
    offsets = np.full(t, 0.5) if rng is None else rng.random(t)
    idx = np.floor((np.arange(t) + offsets) * (num_slices / t)).astype(np.int64)
    return np.clip(idx, 0, num_slices - 1)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.5, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """A (left, top, right, bottom) box of random area fraction and aspect ratio.

    Ten tries at area ~ U(scale) * H * W and log-uniform aspect ratio; if none fits,
    the largest centred box with the closest allowed aspect ratio.
    """
    area = float(height * width)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            left = rng.uniform(0.0, width - w)
            top = rng.uniform(0.0, height - h)
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], float(height)
    else:
        w, h = float(width), float(height)
    left, top = (width - w) / 2.0, (height - h) / 2.0
    return (left, top, left + w, top + h)


def center_crop_box(height: int, width: int, resize_size: int, image_size: int):
    """Source box equal to "resize short side to resize_size, centre crop image_size"."""
    if image_size > resize_size:
        raise ValueError(f"image_size {image_size} > resize_size {resize_size}")
    scale = min(height, width) / float(resize_size)  # source pixels per resized pixel
    side = image_size * scale
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return (left, top, left + side, top + side)


def shift_crop_box(height: int, width: int, rng: np.random.Generator, resize_size: int, image_size: int):
    """The ``center_crop_box`` view moved by U(+-margin/2) per axis, margin = resize - image size.

    Offsets are in resized pixels, scaled to the source, and the box is kept inside the
    image (it never is larger: its side is at most the short side).
    """
    left, top, right, bottom = center_crop_box(height, width, resize_size, image_size)
    side = right - left
    half = (resize_size - image_size) / 2.0 * (min(height, width) / float(resize_size))
    left = float(np.clip(left + rng.uniform(-half, half), 0.0, width - side))
    top = float(np.clip(top + rng.uniform(-half, half), 0.0, height - side))
    return (left, top, left + side, top + side)


def resize_box(volume: np.ndarray, box, size: int) -> np.ndarray:
    """Crops ``box`` out of every slice/channel and resizes it to size x size (bilinear).

    PIL's bilinear filter widens its support when shrinking (antialiasing), so a
    2048 px radiograph is not aliased down to 224 px.
    """
    from PIL import Image

    s, _, _, c = volume.shape
    out = np.empty((s, size, size, c), np.float32)
    for i in range(s):
        for ch in range(c):
            img = Image.fromarray(np.ascontiguousarray(volume[i, :, :, ch]), mode="F")
            out[i, :, :, ch] = np.asarray(
                img.resize((size, size), Image.Resampling.BILINEAR, box=tuple(map(float, box))))
    return out


_INV_STD = (1.0 / IMAGENET_STD).astype(np.float32)
_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def to_rgb_normalized(x: np.ndarray) -> np.ndarray:
    """[0,1] (T,H,W,C) with C in {1,3} -> ImageNet-normalised (T,H,W,3): (x - mean) / std.

    Written as x * (1/std) + (-mean/std): the grey channel broadcasts into the three
    outputs in the first pass, with no temporary copies (two passes in all).
    """
    out = np.multiply(x.astype(np.float32, copy=False), _INV_STD)
    out += _SHIFT
    return out


def standardize_per_image(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """[0,1] (T,H,W,C) -> (T,H,W,3): each channel minus its mean over (T,H,W), over its
    standard deviation (+ ``eps``, so a blank image stays finite); grey replicated to 3."""
    centred = x.astype(np.float32, copy=False) - x.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
    std = np.sqrt(np.mean(np.square(centred), axis=(0, 1, 2), dtype=np.float64))
    centred /= std.astype(np.float32) + np.float32(eps)
    return np.repeat(centred, 3, axis=-1) if centred.shape[-1] == 1 else centred


def check_normalization(normalization: str) -> None:
    """Raises ValueError naming ``data.normalization`` unless it is one of NORMALIZATIONS."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"data.normalization={normalization!r}: expected one of {NORMALIZATIONS}")


def normalize(x: np.ndarray, normalization: str) -> np.ndarray:
    """[0,1] (T,H,W,C) -> model input (T,H,W,3) by ``normalization`` (NORMALIZATIONS)."""
    check_normalization(normalization)
    return to_rgb_normalized(x) if normalization == "imagenet" else standardize_per_image(x)


def display_view(x: np.ndarray, normalization: str) -> np.ndarray:
    """A model input (``normalize``'s output) back in [0, 1] for looking at: ImageNet
    normalisation undone; a per-image standardised input min-max scaled (its own mean
    and spread are gone)."""
    check_normalization(normalization)
    if normalization == "imagenet":
        return np.clip(x * IMAGENET_STD + IMAGENET_MEAN, 0.0, 1.0)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def intensity_jitter(x: np.ndarray, rng: np.random.Generator, brightness: float,
                     contrast: float) -> np.ndarray:
    """x -> clip((x - 0.5) * c + 0.5 + b), c ~ U(1-contrast, 1+contrast), b ~ U(+-brightness)."""
    c = rng.uniform(1.0 - contrast, 1.0 + contrast) if contrast > 0 else 1.0
    b = rng.uniform(-brightness, brightness) if brightness > 0 else 0.0
    return np.clip((x - 0.5) * np.float32(c) + np.float32(0.5 + b), 0.0, 1.0).astype(np.float32)


def random_erase(x: np.ndarray, rng: np.random.Generator, prob: float, area=(0.02, 0.2),
                 ratio=(0.3, 3.3)) -> np.ndarray:
    """With probability ``prob`` sets one random rectangle (same on every slice) to 0.

    Applied after normalisation, so 0 is the mean colour (ImageNet's or the image's own).
    """
    if prob <= 0 or rng.random() >= prob:
        return x
    _, h, w, _ = x.shape
    for _ in range(10):
        target = h * w * rng.uniform(area[0], area[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        eh = int(round(math.sqrt(target / aspect)))
        ew = int(round(math.sqrt(target * aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = int(rng.integers(0, h - eh + 1))
            left = int(rng.integers(0, w - ew + 1))
            x = x.copy()
            x[:, top:top + eh, left:left + ew, :] = 0.0
            return x
    return x


def train_transform(volume: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator,
                    allow_flip: bool, allow_rotate: bool = False) -> np.ndarray:
    """Shifted or random resized crop, optional flip and right-angle rotation, intensity
    jitter, normalisation, erasing."""
    _, h, w, _ = volume.shape
    if cfg.crop_mode == "shift":
        box = shift_crop_box(h, w, rng, cfg.resize_size, cfg.image_size)
    else:
        box = random_resized_crop_box(h, w, rng, cfg.crop_scale, cfg.crop_ratio)
    x = resize_box(volume, box, cfg.image_size)
    if allow_flip and rng.random() < cfg.flip_prob:
        x = x[:, :, ::-1, :]
    if allow_rotate:   # with the horizontal flip above: all 8 symmetries of the square
        x = np.rot90(x, k=int(rng.integers(4)), axes=(1, 2))
    x = intensity_jitter(x, rng, cfg.brightness, cfg.contrast)
    x = normalize(x, cfg.normalization)
    return random_erase(x, rng, cfg.erase_prob, cfg.erase_area, cfg.erase_ratio)


def eval_view(volume: np.ndarray, resize_size: int, image_size: int) -> np.ndarray:
    """Short side to ``resize_size``, centre crop ``image_size``: the evaluation view in
    [0, 1], before normalisation (what a preview shows of the model's input)."""
    _, h, w, _ = volume.shape
    return resize_box(volume, center_crop_box(h, w, resize_size, image_size), image_size)


def eval_transform(volume: np.ndarray, resize_size: int, image_size: int,
                   normalization: str = "imagenet") -> np.ndarray:
    """``eval_view``, normalised."""
    return normalize(eval_view(volume, resize_size, image_size), normalization)


def symmetry_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square (4 rotations, each also mirrored) of (B, T, H, W, C)
    images: for tissue with no orientation, averaging the embedding over them makes
    it invariant, as training with flips and rotations (data.modalities.<m>.rotate) asks."""
    rotations = [np.rot90(images, k, axes=(2, 3)) for k in range(4)]
    return [np.ascontiguousarray(v) for r in rotations for v in (r, r[:, :, :, ::-1])]


def symmetry_mean(embed, images: np.ndarray, symmetric: bool) -> np.ndarray:
    """``embed(images)``, or its mean over the ``symmetry_views`` when ``symmetric``: how
    every embedding pass (JAX and PyTorch) embeds a batch of one modality."""
    views = symmetry_views(images) if symmetric else [images]
    return sum(embed(v) for v in views) / len(views)
