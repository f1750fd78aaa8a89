"""Colour fundus photograph phantom (one eye per patient), stored as RGB.

Identity (fixed per patient): which eye, optic disc position, size, shape
and cup, macula position, the retinal vessel tree (arteries and veins grown
from the patient's seed: two temporal arcades curving round the macula and
nasal branches, each forking at its own places), choroidal texture and
pigmentation.

Per visit: pose (rotation +-6 deg, shift +-4%, zoom +-4%), illumination
(brightness, uneven vignetting), camera colour balance and gamma, focus blur,
sensor noise, JPEG quality, and the disease (diabetic retinopathy: red dots
and blot haemorrhages, then hard exudates, then cotton-wool spots), whose
lesions appear at new places each visit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mami_jax.phantoms import common

EXTENT = 1.2
FOV_RADIUS = 0.93


@dataclasses.dataclass(frozen=True)
class Anatomy:
    eye: str                 # "right" or "left"
    disc: tuple              # cx, cy, r, elongation, cup ratio
    macula: tuple            # cx, cy
    pigment: tuple           # RGB base colour
    arteries: np.ndarray     # canonical rasters over [-EXTENT, EXTENT]^2
    veins: np.ndarray
    choroid: np.ndarray


def make_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    eye = "right" if rng.random() < 0.5 else "left"
    sgn = 1.0 if eye == "right" else -1.0
    dx, dy = rng.uniform(0.28, 0.44), rng.uniform(-0.12, 0.1)
    disc = (sgn * dx, dy, rng.uniform(0.1, 0.14), rng.uniform(1.0, 1.2), rng.uniform(0.3, 0.6))
    macula = (sgn * (dx - rng.uniform(0.38, 0.5)), dy + rng.uniform(0.0, 0.1))
    segs = {"a": [], "v": []}
    # right-eye layout (temporal side to the image left); mirrored below for a left eye
    trunks = [(-np.pi / 2 - 0.35, -1.0), (np.pi / 2 + 0.35, 1.0),   # temporal arcades
              (-np.pi / 2 + 0.5, 0.3), (np.pi / 2 - 0.5, -0.3)]     # nasal branches
    for kind, thick in (("v", 0.021), ("a", 0.016)):
        for angle, bend in trunks:
            segs[kind] += common.grow_tree(
                rng, 0.0, 0.0, angle + rng.normal(0, 0.2), thick * rng.uniform(0.85, 1.1),
                step=0.02, min_thickness=0.006, branch_length=(0.12, 0.3),
                branch_angle=(0.5, 1.0), taper=0.74, wander=0.07,
                bend=bend * rng.uniform(1.0, 1.8), bend_decay=0.4, limit=1.05)
    res = int(size * EXTENT)
    maps = {}
    for kind, segments in segs.items():
        placed = [(disc[0] + sgn * x0, disc[1] + y0, disc[0] + sgn * x1, disc[1] + y1, t)
                  for (x0, y0, x1, y1, t) in segments]
        maps[kind] = common.draw_segments(placed, res, EXTENT)
    choroid = common.smooth_noise(rng, (res, res), sigma=res / 30)
    pigment = (rng.uniform(0.75, 0.88), rng.uniform(0.28, 0.38), rng.uniform(0.08, 0.16))
    return Anatomy(eye=eye, disc=disc, macula=macula, pigment=pigment,
                   arteries=maps["a"], veins=maps["v"], choroid=choroid)


def _spots(x, y, rng, count, radius, w, limit=0.8, near=None, spread=0.25):
    """Sum of soft round spots at random places (optionally clustered round ``near``)."""
    out = np.zeros_like(x)
    for _ in range(count):
        if near is None:
            r, a = limit * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            cx, cy = r * np.cos(a), r * np.sin(a)
        else:
            cx, cy = near[0] + rng.normal(0, spread), near[1] + rng.normal(0, spread)
        rad = radius * rng.uniform(0.6, 1.4)
        out = np.maximum(out, common.soft(np.hypot(x - cx, y - cy) - rad, w))
    return out


def render(anat: Anatomy, rng: np.random.Generator, severity: float, size: int) -> np.ndarray:
    """One fundus photograph at one visit, uint8 of shape (size, size, 3)."""
    pose = common.Pose.draw(rng, max_deg=6, max_shift=0.04, max_zoom=0.04)
    x, y = common.anatomy_coords(size, pose)
    w = 1.0 / size
    art = common.sample_field(anat.arteries, [y, x], EXTENT)
    vein = common.sample_field(anat.veins, [y, x], EXTENT)
    chor = common.sample_field(anat.choroid, [y, x], EXTENT)
    cx, cy, r, elong, cup = anat.disc
    disc = common.soft(common.ellipse_sd(x, y, cx, cy, r, r * elong), 2 * w)
    cupm = common.soft(common.ellipse_sd(x, y, cx + 0.2 * r * np.sign(-cx), cy, r * cup, r * cup * elong), 3 * w)
    mx, my = anat.macula
    mac = np.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * 0.11 ** 2))
    fovea = np.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * 0.012 ** 2))

    base = np.array(anat.pigment, np.float32)
    img = base[None, None, :] * (1 + 0.07 * chor[..., None])
    img = img * (1 - np.array([0.3, 0.45, 0.4], np.float32) * mac[..., None])
    img = img + 0.15 * fovea[..., None] * np.array([1, 0.8, 0.5], np.float32)
    img = img * (1 - disc[..., None]) + disc[..., None] * np.array([0.95, 0.72, 0.45], np.float32)
    img = img * (1 - cupm[..., None]) + cupm[..., None] * np.array([1.0, 0.88, 0.65], np.float32)
    img = img * (1 - vein[..., None] * np.array([0.45, 0.7, 0.6], np.float32))
    img = img * (1 - art[..., None] * np.array([0.2, 0.5, 0.4], np.float32))

    if severity > 0:  # diabetic retinopathy, new lesions each visit
        red = _spots(x, y, rng, rng.poisson(5 * severity), 0.011, w)
        red = np.maximum(red, 0.9 * _spots(x, y, rng, rng.poisson(1.5 * severity), 0.03, 2 * w))
        img = img * (1 - red[..., None] * np.array([0.5, 0.75, 0.7], np.float32))
        if severity > 1:
            ex = _spots(x, y, rng, rng.poisson(6 * (severity - 1)), 0.013, w, near=(mx, my), spread=0.18)
            img = img * (1 - ex[..., None]) + ex[..., None] * np.array([0.95, 0.85, 0.35], np.float32)
        if severity > 2:
            cw = _spots(x, y, rng, rng.poisson(2.0 * (severity - 2)) + 1, 0.04, 4 * w, limit=0.6)
            img = img * (1 - 0.7 * cw[..., None]) + 0.7 * cw[..., None] * np.array([0.9, 0.85, 0.75], np.float32)

    # camera: vignetting, exposure, colour balance, gamma, focus, noise, field stop
    px, py = common.pixel_grid(size)
    ox, oy = rng.uniform(-0.25, 0.25, size=2)
    light = np.clip(1 - rng.uniform(0.15, 0.55) * ((px - ox) ** 2 + (py - oy) ** 2), 0.05, None)
    gains = np.exp(rng.uniform(-0.18, 0.18, size=3)).astype(np.float32)
    img = img * light[..., None] * gains * rng.uniform(0.6, 1.25)
    img = np.clip(img, 0, 1) ** common.log_uniform(rng, 0.7, 1.45)
    img = common.blur_or_sharpen(img, rng.uniform(0.0, 1.3) * size / 128)
    img = img + rng.uniform(0.004, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)
    fov = common.soft(np.hypot(px, py) - FOV_RADIUS, 1.5 * w)
    return common.to_uint(np.clip(img, 0, 1) * fov[..., None], np.uint8)
