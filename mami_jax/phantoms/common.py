"""Shared drawing tools for the phantom renderers.

Every renderer works the same way: patient anatomy lives in *anatomy
coordinates* (x to the image right, y to the image bottom, both in [-1, 1]);
each visit draws a pose (rotation, shift, scale), computes for every pixel the
anatomy coordinate it sees, evaluates soft-edged shapes there, and finally
applies the scanner's intensity style. Soft edges (a logistic ramp about one
pixel wide) keep the images free of aliasing at any ``image_size``.

Randomness is always drawn from a generator made by :func:`rng_for` from the
generation seed plus a key naming the purpose (patient, modality, visit), so
each image is reproducible on its own and adding patients or visits leaves the
existing ones byte-identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """A generator for one purpose, independent of every other key."""
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(key)))


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


@dataclasses.dataclass(frozen=True)
class Pose:
    """In-plane pose of the anatomy in the image: radians, shift in [-1, 1] units, zoom."""

    rotation: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0

    @staticmethod
    def draw(rng: np.random.Generator, max_deg: float, max_shift: float, max_zoom: float) -> "Pose":
        return Pose(rotation=np.deg2rad(rng.uniform(-max_deg, max_deg)),
                    shift_x=rng.uniform(-max_shift, max_shift),
                    shift_y=rng.uniform(-max_shift, max_shift),
                    scale=rng.uniform(1.0 - max_zoom, 1.0 + max_zoom))


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of pixel centres in [-1, 1]; arrays of shape (size, size), row = y."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def anatomy_coords(size: int, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates seen by each pixel: the inverse of the pose."""
    x, y = pixel_grid(size)
    x = x - pose.shift_x
    y = y - pose.shift_y
    c, s = np.cos(pose.rotation), np.sin(pose.rotation)
    u = (c * x + s * y) / pose.scale
    v = (-s * x + c * y) / pose.scale
    return u.astype(np.float32), v.astype(np.float32)


def soft(d, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance ``d`` (negative inside).

    A linear ramp from 1 at ``d = -width`` to 0 at ``d = width``: anti-aliased
    edges without a transcendental function per pixel.
    """
    d = np.asarray(d, np.float32)
    return np.clip(np.float32(0.5) - d * np.float32(0.5 / width), 0.0, 1.0)


def ellipse_sd(x, y, cx, cy, rx, ry, angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse (exact for circles)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    return (np.sqrt(u * u + v * v) - 1.0) * np.minimum(rx, ry)


def smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (wraps at the edges)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field / (field.std() + 1e-8)).astype(np.float32)


def sample_field(field: np.ndarray, coords: list[np.ndarray], extent: float = 1.0) -> np.ndarray:
    """Samples ``field`` (pixel centres covering [-extent, extent] per axis) at anatomy coords.

    ``coords`` lists one array per field axis, in the field's axis order (the
    same centre convention as :func:`draw_segments`). Linear interpolation;
    outside the field the nearest edge value is used.
    """
    idx = [(np.asarray(c, np.float32) + extent) / (2 * extent) * n - 0.5
           for c, n in zip(coords, field.shape)]
    return ndimage.map_coordinates(field, idx, order=1, mode="nearest").astype(np.float32)


def plane_sampler(y: np.ndarray, x: np.ndarray, shape: tuple[int, int], extent: float):
    """Bilinear sampling of (..., rows, cols) planes at 2-D anatomy coordinates.

    Returns a function ``sample(planes)`` that reads every leading plane at the
    same (y, x): the index and weight arithmetic is done once, so sampling a
    stack of slices costs one gather per corner. Outside the planes the
    nearest edge value is used (same centre convention as :func:`sample_field`).
    """
    rows, cols = shape
    fy = np.clip((y + extent) / (2 * extent) * rows - 0.5, 0, rows - 1).astype(np.float32)
    fx = np.clip((x + extent) / (2 * extent) * cols - 0.5, 0, cols - 1).astype(np.float32)
    i0 = np.minimum(fy.astype(np.int32), rows - 2)
    j0 = np.minimum(fx.astype(np.int32), cols - 2)
    wy, wx = fy - i0, fx - j0
    flat = (i0 * cols + j0).ravel()
    w00 = ((1 - wy) * (1 - wx)).ravel()
    w01 = ((1 - wy) * wx).ravel()
    w10 = (wy * (1 - wx)).ravel()
    w11 = (wy * wx).ravel()
    out_shape = y.shape

    def sample(planes: np.ndarray) -> np.ndarray:
        lead = planes.shape[:-2]
        p = planes.reshape(lead + (rows * cols,))
        out = (np.take(p, flat, axis=-1) * w00 + np.take(p, flat + 1, axis=-1) * w01
               + np.take(p, flat + cols, axis=-1) * w10 + np.take(p, flat + cols + 1, axis=-1) * w11)
        return out.reshape(lead + out_shape).astype(np.float32, copy=False)

    return sample


def sample_stack(planes: np.ndarray, fy: np.ndarray, fx: np.ndarray, wrap_x: bool = False) -> np.ndarray:
    """Bilinear sampling of plane k of (T, rows, cols) at fractional indices fy[k], fx[k].

    ``fy``/``fx`` have shape (T, H, W) (or broadcast to it) in index units;
    rows clamp at the edges, columns clamp or wrap (``wrap_x``, for angles).
    """
    t, rows, cols = planes.shape
    fy, fx = np.broadcast_arrays(np.asarray(fy, np.float32), np.asarray(fx, np.float32))
    fy = np.clip(fy, 0, rows - 1)
    fx = np.mod(fx, cols) if wrap_x else np.clip(fx, 0, cols - 1)
    i0 = np.minimum(fy.astype(np.int32), rows - 2)
    j0 = np.minimum(fx.astype(np.int32), cols - 1 if wrap_x else cols - 2)
    j1 = np.mod(j0 + 1, cols) if wrap_x else j0 + 1
    wy, wx = fy - i0, fx - j0
    base = (np.arange(t, dtype=np.int32) * (rows * cols)).reshape((t,) + (1,) * (fy.ndim - 1))
    flat = planes.reshape(-1)
    r0, r1 = base + i0 * cols, base + (i0 + 1) * cols
    return ((flat[r0 + j0] * (1 - wx) + flat[r0 + j1] * wx) * (1 - wy)
            + (flat[r1 + j0] * (1 - wx) + flat[r1 + j1] * wx) * wy).astype(np.float32, copy=False)


def interp_planes(volume: np.ndarray, z: np.ndarray, z_range: tuple[float, float]) -> np.ndarray:
    """Linear interpolation of a (Z, rows, cols) volume at positions ``z`` (1-D) in ``z_range``."""
    n = volume.shape[0]
    f = np.clip((np.asarray(z, np.float32) - z_range[0]) / (z_range[1] - z_range[0]) * n - 0.5, 0, n - 1)
    k0 = np.minimum(f.astype(np.int32), n - 2)
    t = (f - k0)[:, None, None].astype(np.float32)
    return volume[k0] * (1 - t) + volume[k0 + 1] * t


def segment_distance(x, y, x0, y0, x1, y1) -> np.ndarray:
    """Distance from points to the segment (x0, y0)-(x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def window(img: np.ndarray, lo: float, hi: float, gamma: float) -> np.ndarray:
    """Display mapping of a scanner: clip to [lo, hi], rescale to [0, 1], apply gamma."""
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0) ** gamma


def blur_or_sharpen(img: np.ndarray, amount: float, axes=(0, 1)) -> np.ndarray:
    """``amount`` > 0 blurs with that sigma (pixels); < 0 unsharp-masks with strength -amount."""
    sigma = [0.0] * img.ndim
    if amount > 0:
        for a in axes:
            sigma[a] = amount
        return ndimage.gaussian_filter(img, sigma)
    if amount < 0:
        for a in axes:
            sigma[a] = 1.0
        return img + (-amount) * (img - ndimage.gaussian_filter(img, sigma))
    return img


def to_uint(img01: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] float to an unsigned integer image, rounded and clipped."""
    top = np.iinfo(dtype).max
    return np.clip(np.rint(np.asarray(img01, np.float64) * top), 0, top).astype(dtype)


def grow_tree(rng: np.random.Generator, x: float, y: float, angle: float, thickness: float, *,
              step: float, min_thickness: float, branch_length: tuple[float, float],
              branch_angle: tuple[float, float], taper: float, wander: float,
              bend: float = 0.0, bend_decay: float = 1.0, limit: float = 0.97,
              max_segments: int = 2000) -> list[tuple]:
    """Grows a branching vessel tree; returns segments (x0, y0, x1, y1, half_thickness).

    A branch walks in steps of ``step`` with a random turn (sd ``wander``
    radians) plus a steady ``bend`` (children keep ``bend_decay`` of it); after a length drawn from
    ``branch_length`` it forks in two, the children turning by an angle drawn
    from ``branch_angle`` to either side and thinning by ``taper``. Branches
    stop when thinner than ``min_thickness`` or outside radius ``limit``.
    """
    segments: list[tuple] = []
    stack = [(x, y, angle, thickness, bend)]
    while stack and len(segments) < max_segments:
        x, y, a, t, b = stack.pop()
        length = rng.uniform(*branch_length)
        walked = 0.0
        while walked < length:
            a += b * step + rng.normal(0.0, wander)
            nx, ny = x + step * np.cos(a), y + step * np.sin(a)
            segments.append((x, y, nx, ny, t))
            x, y = nx, ny
            walked += step
            if x * x + y * y > limit * limit:
                break
        else:
            t_child = t * taper
            if t_child >= min_thickness:
                split = rng.uniform(*branch_angle)
                share = rng.uniform(0.2, 0.8)
                b_child = b * bend_decay
                stack.append((x, y, a + split * share, t_child, b_child))
                stack.append((x, y, a - split * (1 - share), t_child * rng.uniform(0.75, 1.0), b_child))
    return segments


def draw_segments(segments, size: int, extent: float, supersample: int = 4) -> np.ndarray:
    """Rasterises segments into a (size, size) map over [-extent, extent]^2 (pixel centres).

    Each segment is a round-capped tube of its half thickness, drawn with
    PIL at ``supersample`` times the resolution and box-filtered down, which
    anti-aliases the edges; this is orders of magnitude faster than
    evaluating distances in numpy for hundreds of small segments.
    """
    from PIL import Image, ImageDraw

    big = size * supersample
    scale = big / (2 * extent)
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for (x0, y0, x1, y1, t) in segments:
        p0 = ((x0 + extent) * scale - 0.5, (y0 + extent) * scale - 0.5)
        p1 = ((x1 + extent) * scale - 0.5, (y1 + extent) * scale - 0.5)
        r = t * scale
        width = max(1, int(round(2 * r)))
        draw.line([p0, p1], fill=255, width=width)
        for (px, py) in (p0, p1):
            draw.ellipse([px - r, py - r, px + r, py + r], fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, np.float32) / 255.0
