"""Chest X-ray phantom (PA view), stored as a 16-bit grey image.

Identity (fixed per patient): thorax width and shoulder slope, both lung
fields (apex height, lateral curvature, diaphragm domes, costophrenic
angles), the cardiac silhouette (left border reach, right border bulge),
aortic knob, clavicle angle and rise, rib spacing and arch (ten posterior and
anterior ribs per side), hilar vessel markings, vertebra spacing, a sideways
spine curve, breast shadows (half the patients), and for 30% a device
(a pacemaker with its lead, or sternal wires).

Per visit: pose (rotation +-3 deg, shift +-3%, zoom +-4%), inspiration depth,
exposure window and gamma, detector blur or edge enhancement, quantum noise,
collimation margins, and the disease (a lobar opacity at a patient-specific
place, later a pleural effusion and an enlarging heart).

The picture is an attenuation map shown as a radiograph: bone, heart and
abdomen white, aerated lung dark, air outside the body black.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mami_jax.phantoms import common

N_RIBS = 10
EXTENT = 1.2  # the canonical rasters cover [-EXTENT, EXTENT]^2 so posed views stay inside


@dataclasses.dataclass(frozen=True)
class Anatomy:
    width: float
    shoulder_y: float
    lungs: tuple          # per side (image left, image right): dict of shape values
    heart: dict
    knob: tuple           # cx, cy, r
    spine_period: float
    spine_phase: float
    ribs: tuple           # per side: tuple of (y0, a, b, half_thickness)
    clavicles: tuple      # per side: (y0, rise, wiggle)
    lesion: tuple         # side, x', y of the disease's favourite place
    markings: np.ndarray  # hilar vessel markings, canonical raster
    scoliosis: tuple      # amplitude, phase of a sideways spine curve
    breasts: float        # 0 none, else the density of the breast shadows
    device: tuple         # ("none",) | ("pacemaker", x, y, lead bend) | ("wires", n, y0, gap)


def make_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    width = rng.uniform(0.68, 0.92)
    lungs = []
    for _ in range(2):
        lungs.append(dict(
            medial=rng.uniform(0.07, 0.12),
            lateral=width - rng.uniform(0.05, 0.10),
            lat_curv=rng.uniform(0.05, 0.6),
            lat_y=rng.uniform(-0.05, 0.25),
            apex_y=rng.uniform(-0.8, -0.5),
            apex_x=rng.uniform(0.22, 0.36),
            apex_k=rng.uniform(2.0, 4.5),
            base_y=rng.uniform(0.3, 0.62),
            dome=rng.uniform(0.03, 0.22),
        ))
    heart = dict(top=rng.uniform(-0.2, 0.05), reach=rng.uniform(0.26, 0.52),
                 power=rng.uniform(0.4, 1.4), bulge=rng.uniform(0.06, 0.26),
                 bulge_y=rng.uniform(0.05, 0.4))
    ribs = []
    spacing = rng.uniform(0.095, 0.12)
    curv, rise = rng.uniform(0.8, 1.6), rng.uniform(-0.8, -0.3)
    for side in range(2):
        top = lungs[side]["apex_y"] + rng.uniform(-0.02, 0.04)
        ribs.append(tuple(
            (top + i * spacing + rng.uniform(-0.012, 0.012),
             rise + rng.uniform(-0.06, 0.06),
             curv + rng.uniform(-0.1, 0.1),
             rng.uniform(0.022, 0.032)) for i in range(N_RIBS)))
    clav_y = rng.uniform(-0.66, -0.5)
    clavicles = tuple((clav_y + rng.uniform(-0.02, 0.02), rng.uniform(0.0, 0.2),
                       rng.uniform(-0.04, 0.04)) for _ in range(2))
    side = int(rng.integers(2))
    lung = lungs[side]
    lesion = (side, rng.uniform(lung["medial"] + 0.12, lung["lateral"] - 0.1),
              rng.uniform(lung["apex_y"] + 0.25, lung["base_y"] - 0.15))
    segments = []
    for sign in (-1, 1):
        hx, hy = sign * rng.uniform(0.13, 0.19), rng.uniform(-0.1, 0.05)
        for base in (-1.2, -0.6, 0.0, 0.6, 1.1):
            angle = base if sign > 0 else np.pi - base
            segments += common.grow_tree(
                rng, hx, hy, angle + rng.normal(0, 0.15), 0.011, step=0.025, min_thickness=0.004,
                branch_length=(0.06, 0.14), branch_angle=(0.35, 0.7), taper=0.78, wander=0.06)
    markings = common.draw_segments(segments, int(size * EXTENT), EXTENT)
    u = rng.random()
    if u < 0.15:
        device = ("pacemaker", rng.choice((-1, 1)) * rng.uniform(0.3, 0.5), rng.uniform(-0.62, -0.42),
                  rng.uniform(-0.15, 0.15))
    elif u < 0.3:
        device = ("wires", int(rng.integers(3, 7)), rng.uniform(-0.4, -0.2), rng.uniform(0.08, 0.13))
    else:
        device = ("none",)
    return Anatomy(width=width, shoulder_y=rng.uniform(-0.84, -0.7), lungs=tuple(lungs),
                   heart=heart, knob=(rng.uniform(0.07, 0.1), rng.uniform(-0.36, -0.26),
                                      rng.uniform(0.045, 0.06)),
                   spine_period=rng.uniform(0.085, 0.11), spine_phase=rng.uniform(0, 1),
                   ribs=tuple(ribs), clavicles=clavicles, lesion=lesion, markings=markings,
                   scoliosis=(rng.uniform(-0.07, 0.07), rng.uniform(0, 2 * np.pi)),
                   breasts=rng.uniform(0.05, 0.14) if rng.random() < 0.5 else 0.0, device=device)


def _lung_mask(xs, y, lung, breath, w):
    """Soft mask of one lung in side coordinates (xs grows laterally)."""
    base = lung["base_y"] + breath
    medial = lung["medial"] + 0.06 * np.clip(-y - 0.25, 0, None)
    lateral = lung["lateral"] - lung["lat_curv"] * (y - lung["lat_y"]) ** 2
    half = 0.55 * (lung["lateral"] - lung["medial"])
    centre = 0.5 * (lung["lateral"] + lung["medial"])
    floor = base - lung["dome"] * np.clip(1 - ((xs - centre) / half) ** 2, 0, None)
    k = np.where(xs < lung["apex_x"], lung["apex_k"], 0.6 * lung["apex_k"])
    apex = lung["apex_y"] + k * (xs - lung["apex_x"]) ** 2
    return (common.soft(medial - xs, w) * common.soft(xs - lateral, w)
            * common.soft(y - floor, w) * common.soft(apex - y, w))


def _heart(x, y, h, grow, w):
    """Cardiac silhouette: widens from the knob down to the diaphragm, apex to image right."""
    t = np.clip((y - h["top"]) / (0.55 - h["top"]), 0, 1)
    left = 0.08 + (h["reach"] * grow - 0.08) * t ** h["power"]
    right = -0.07 - h["bulge"] * grow * np.exp(-((y - h["bulge_y"]) / 0.2) ** 2)
    return (common.soft(x - left, 2 * w) * common.soft(right - x, 2 * w)
            * common.soft(h["top"] - y, 3 * w) * common.soft(y - 0.62, 4 * w))


def render(anat: Anatomy, rng: np.random.Generator, severity: float, size: int) -> np.ndarray:
    """One radiograph of ``anat`` at one visit, as uint16 of shape (size, size)."""
    pose = common.Pose.draw(rng, max_deg=3, max_shift=0.03, max_zoom=0.04)
    x, y = common.anatomy_coords(size, pose)
    w = 1.5 / size
    amp, phase = anat.scoliosis
    xm = x - amp * np.sin(np.pi * (y + 1) * 0.8 + phase)   # midline structures follow the spine
    breath = rng.uniform(-0.04, 0.04)

    sy = anat.shoulder_y
    yt = y - np.where(y < 0.3, 0.18 * (x / anat.width) ** 2, 0.0)
    body = common.soft(((np.abs(x) / anat.width) ** 6
                        + np.abs((yt - 0.35) / (0.35 - sy)) ** 6) ** (1 / 6) - 1, 2 * w)
    body = np.maximum(body, common.soft(np.abs(x) - 0.19, 2 * w) * common.soft(sy + 0.1 - y, w))
    thick = body * np.sqrt(np.clip(1 - (x / (anat.width + 0.05)) ** 2, 0, 1))

    lungs = np.zeros_like(x)
    floor = np.ones_like(x)
    ribs = np.zeros_like(x)
    clav = np.zeros_like(x)
    for side, sign in enumerate((-1, 1)):
        xs = sign * x
        lung = anat.lungs[side]
        lungs = np.maximum(lungs, _lung_mask(xs, y, lung, breath, w))
        floor = np.where(xs > 0, lung["base_y"] + breath, floor)
        x_end = lung["lateral"]
        inside = common.soft(0.03 - xs, w) * common.soft(xs - x_end - 0.05, w)
        for (y0, a, b, t) in anat.ribs[side]:
            post = common.soft(np.abs(y - (y0 + a * xs + b * xs * xs)) - t, w) * inside
            y_end = y0 + a * x_end + b * x_end * x_end
            ya = y_end + 0.5 * (x_end - xs) + 0.3 * (x_end - xs) ** 2
            ant = common.soft(np.abs(y - ya) - 0.8 * t, w) * common.soft(0.15 - xs, w) \
                * common.soft(xs - x_end, w)
            ribs = np.maximum(ribs, np.maximum(post, 0.5 * ant))
        y0, rise, wig = anat.clavicles[side]
        t = np.clip((xs - 0.06) / 0.55, 0, 1)
        yc = y0 - rise * t + wig * np.sin(2 * np.pi * t)
        clav = np.maximum(clav, common.soft(np.abs(y - yc) - 0.028, w)
                          * common.soft(0.06 - xs, w) * common.soft(xs - 0.62, w))

    heart = _heart(x, y, anat.heart, 1.0 + 0.05 * severity, w)
    kx, ky, kr = anat.knob
    mediastinum = np.maximum(common.soft(np.abs(xm - 0.01) - 0.085, 2 * w),
                             common.soft(common.ellipse_sd(x, y, kx, ky, kr, kr), 2 * w))
    mediastinum = np.maximum(mediastinum, heart) * body
    trachea = common.soft(np.abs(xm + 0.01) - 0.03, w) * common.soft(y + 0.3, 2 * w) * body
    spine = common.soft(np.abs(xm) - 0.055, w) * (0.7 + 0.3 * np.cos(
        2 * np.pi * (y / anat.spine_period + anat.spine_phase))) * body
    lungs = lungs * (1 - mediastinum) * body
    below = common.soft(floor - y, 3 * w)  # the abdomen hides the lower ribs
    ribs = ribs * (1 - 0.7 * below) * body
    markings = common.sample_field(anat.markings, [y, x], EXTENT) * lungs

    disease = np.zeros_like(x)
    if severity > 0:  # lobar opacity, then an effusion at the base of the same side
        side, lx, ly = anat.lesion
        sign = (-1, 1)[side]
        r = 0.1 + 0.05 * severity
        disease += 0.13 * min(severity, 2.0) * np.exp(-((sign * x - lx) ** 2 + (y - ly) ** 2) / (2 * r * r))
        if severity > 1.5:
            level = anat.lungs[side]["base_y"] + breath - 0.12 * (severity - 1.5)
            disease += 0.3 * common.soft(level - y, 3 * w) * common.soft(-sign * x, w)
        disease *= lungs

    extra = np.zeros_like(x)
    if anat.breasts:
        for sign in (-1, 1):
            extra += anat.breasts * common.soft(common.ellipse_sd(x, y, sign * 0.42, 0.42, 0.32, 0.26), 6 * w)
    if anat.device[0] == "pacemaker":
        _, px, py, bend = anat.device
        extra += 0.9 * common.soft(common.ellipse_sd(x, y, px, py, 0.07, 0.05), w)
        t = np.clip((y - py) / (0.3 - py), 0, 1)
        lead_x = px + (0.1 - px) * t + bend * np.sin(np.pi * t)
        extra += 0.5 * common.soft(np.abs(x - lead_x) - 0.008, w) * common.soft(py - y, w) * common.soft(y - 0.3, w)
    elif anat.device[0] == "wires":
        _, n, y0, gap = anat.device
        for i in range(n):
            ring = np.abs(common.ellipse_sd(xm, y, 0.0, y0 + i * gap, 0.03, 0.018))
            extra += 0.8 * common.soft(ring - 0.006, w)
    att = (0.55 * thick + extra + 0.1 * body - 0.4 * lungs * np.sqrt(thick + 0.05) + 0.15 * below * body
           + 0.22 * mediastinum - 0.07 * trachea + 0.12 * spine
           + 0.13 * ribs + 0.2 * clav * body + 0.06 * markings + disease)
    img = np.clip(att / 0.85, 0, 1)

    lo, hi = rng.uniform(-0.1, 0.25), rng.uniform(0.7, 1.15)
    img = common.window(img, lo, hi, common.log_uniform(rng, 0.55, 1.8))
    img = common.blur_or_sharpen(img, rng.uniform(-1.2, 1.0) * size / 128)
    img = img + rng.uniform(0.005, 0.04) * rng.standard_normal(img.shape, dtype=np.float32)
    margins = (rng.uniform(0, 0.06, size=4) * size).astype(int) * (rng.random(4) < 0.25)
    img[:margins[0]] = 1.0  # collimation: unexposed margins read as white
    img[size - margins[1]:] = 1.0
    img[:, :margins[2]] = 1.0
    img[:, size - margins[3]:] = 1.0
    return common.to_uint(np.clip(img, 0, 1) * rng.uniform(0.75, 1.0), np.uint16)
