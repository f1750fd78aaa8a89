"""Chest CT phantom: a series of axial slices in Hounsfield units (int16).

Coordinates: x to the image right (the patient's left, radiological
convention), y to the image bottom (posterior), z down the slab (0 = upper
chest near the aortic arch, 1 = lower heart). The series covers the slab with
``slices`` slices.

Identity (fixed per patient): body outline (width, depth, squareness), the
two lung outlines (size, position, an irregular lobulation of each), heart
size/position/tilt and where it starts in z, ascending and descending aorta,
pulmonary trunk, trachea and carina level, vertebra with its canal, the rib
positions round the chest wall, the sternum, and the pulmonary vessel tree
(a 3-D random curve network drawn from the patient's seed).

Per visit: slab start (+-4% of its length), table position, in-plane pose
(rotation +-3 deg, shift +-3%) and field of view (fitted to the body's
size, as operators do, +-6%; also in the voxel spacing), body fat (weight change),
inspiration depth (lung size and density), contrast enhancement of the
blood, reconstruction kernel (blur or sharpen), noise, calibration offset, and the disease (a nodule at a
patient-specific place that grows, ground-glass opacity, then an effusion).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mami_jax.phantoms import common

EXTENT = 1.2          # vessel fields cover [-EXTENT, EXTENT] in x, y
Z_RANGE = (-0.2, 1.2)  # and this range in z
UNIT_MM = 200.0        # one anatomy unit in millimetres (a chest is about 1.5 units wide)
SLAB_MM = 160.0        # length of the slab covered by the series


@dataclasses.dataclass(frozen=True)
class Anatomy:
    body: tuple                 # half width, half depth, centre y, squareness
    fat: float
    lungs: tuple                # per side: (cx, cy, rx, ry, harmonics amplitudes, phases)
    heart: tuple                # cx, cy, rx, ry, angle, z start
    aorta: tuple                # ascending (x, y, r), descending (x, y, r), arch z
    pulmonary: tuple            # x, y, r, z from, z to
    trachea: tuple              # x, y, r, carina z
    spine: tuple                # y, r, z phase
    ribs: tuple                 # angles (radians) of rib crossings at z=0, per-rib drift
    vessel_fields: np.ndarray   # (2, Z, Y, X) smooth noise; vessels where both are near 0
    nodule: tuple               # x, y, z


def make_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    a, b = rng.uniform(0.70, 0.84), rng.uniform(0.46, 0.58)
    body = (a, b, rng.uniform(-0.02, 0.06), rng.uniform(2.2, 3.2))
    lungs = []
    for sign in (-1, 1):
        lungs.append((sign * rng.uniform(0.28, 0.36), rng.uniform(-0.02, 0.08),
                      rng.uniform(0.19, 0.25), rng.uniform(0.3, 0.38),
                      tuple(rng.uniform(0.0, 0.06, size=4).tolist()),
                      tuple(rng.uniform(0, 2 * np.pi, size=4).tolist())))
    heart = (rng.uniform(0.04, 0.12), rng.uniform(-0.14, -0.04), rng.uniform(0.2, 0.27),
             rng.uniform(0.16, 0.22), rng.uniform(-0.7, -0.2), rng.uniform(0.25, 0.45))
    aorta = ((rng.uniform(0.0, 0.08), rng.uniform(-0.2, -0.1), rng.uniform(0.055, 0.075)),
             (rng.uniform(0.07, 0.14), rng.uniform(0.18, 0.26), rng.uniform(0.045, 0.06)),
             rng.uniform(0.05, 0.2))
    pulmonary = (rng.uniform(0.1, 0.18), rng.uniform(-0.16, -0.06), rng.uniform(0.05, 0.07),
                 rng.uniform(0.2, 0.3), rng.uniform(0.4, 0.5))
    trachea = (rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.06), rng.uniform(0.04, 0.055),
               rng.uniform(0.2, 0.4))
    spine = (rng.uniform(0.28, 0.36), rng.uniform(0.075, 0.095), rng.uniform(0, 1))
    n_ribs = 7
    ribs = (tuple(rng.uniform(0, 2 * np.pi, size=n_ribs).tolist()), rng.uniform(0.8, 1.6),
            tuple(rng.uniform(-0.3, 0.3, size=n_ribs).tolist()))
    res = max(32, size // 2)
    depth = max(16, res // 2)
    fields = np.stack([common.smooth_noise(rng, (depth, res, res), sigma=(depth / 30, res / 36, res / 36))
                       for _ in range(2)])
    side = int(rng.integers(2))
    lx, ly, lrx, lry = lungs[side][:4]
    nodule = (lx + rng.uniform(-0.4, 0.4) * lrx, ly + rng.uniform(-0.5, 0.5) * lry, rng.uniform(0.25, 0.75))
    return Anatomy(body=body, fat=rng.uniform(0.03, 0.08), lungs=tuple(lungs), heart=heart, aorta=aorta,
                   pulmonary=pulmonary, trachea=trachea, spine=spine, ribs=ribs,
                   vessel_fields=fields, nodule=nodule)


def _circle(x, y, cx, cy, r, w):
    return common.soft(np.hypot(x - cx, y - cy) - r, w)


def render(anat: Anatomy, rng: np.random.Generator, severity: float, size: int, slices: int):
    """One CT series: (HU volume int16 of shape (slices, size, size), voxel spacing (mm) z, y, x)."""
    pose = common.Pose.draw(rng, max_deg=3, max_shift=0.03, max_zoom=0.0)
    # the operator fits the field of view to the body (its area), give or take 6%
    fit = np.sqrt(0.77 * 0.52 / (anat.body[0] * anat.body[1]))
    pose = dataclasses.replace(pose, scale=fit * rng.uniform(0.94, 1.06))
    x2, y2 = common.anatomy_coords(size, pose)
    x, y = x2[None], y2[None]
    z = ((np.arange(slices, dtype=np.float32) + 0.5) / slices + rng.uniform(-0.04, 0.04))[:, None, None]
    w = 1.5 / size

    a, b, by, sq = anat.body
    fat = anat.fat * rng.uniform(0.6, 1.5)
    taper = 1.0 + 0.06 * z
    ell = ((np.abs(x) / (a * taper)) ** sq + np.abs((y - by) / (b * taper)) ** sq) ** (1 / sq)
    body = common.soft(ell - 1, w)
    inner = common.soft(ell - 1 + fat / b, w)          # inside the fat layer
    cage = common.soft(ell - 1 + (fat + 0.05) / b, w)  # inside the muscle layer

    breath = rng.uniform(0.96, 1.04)
    lungs = np.zeros(np.broadcast_shapes(x.shape, z.shape), np.float32)
    for (cx, cy, rx, ry, amp, ph) in anat.lungs:
        grow = breath * (0.88 + 0.18 * z)
        th = np.arctan2(y - cy, (x - cx) * np.sign(cx))
        wobble = 1 + sum(amp[k] * np.cos((k + 2) * th + ph[k]) for k in range(4))
        d = np.hypot((x - cx) / (rx * grow), (y - cy) / (ry * grow)) / wobble - 1
        lungs = np.maximum(lungs, common.soft(d * rx, w))
    hx, hy, hrx, hry, hang, hz = anat.heart
    hgrow = np.sqrt(np.clip((z - hz) / 0.3, 0, 1)) * (1 + 0.04 * severity)
    heart = common.soft(common.ellipse_sd(x, y, hx, hy, hrx * hgrow + 1e-3, hry * hgrow + 1e-3, hang), w) \
        * (hgrow > 0.05)
    (ax, ay, ar), (dx, dy, dr), arch_z = anat.aorta
    aorta = _circle(x, y, dx, dy, dr, w) * np.ones_like(z)
    aorta = np.maximum(aorta, _circle(x, y, ax, ay, ar, w) * ((z > arch_z) & (z < hz + 0.2)))
    arch = common.soft(np.abs(y - ay - (dy - ay) * np.clip((x - ax) / (dx - ax), 0, 1)) - ar, w) \
        * common.soft(np.abs(x - 0.5 * (ax + dx)) - 0.5 * abs(dx - ax), w)
    aorta = np.maximum(aorta, arch * (np.abs(z - arch_z) < 0.05))
    px, py, pr, pz0, pz1 = anat.pulmonary
    pulm = _circle(x, y, px, py, pr, w) * ((z > pz0) & (z < pz1))
    blood = np.maximum(np.maximum(heart, aorta), pulm)
    tx, ty, tr, carina = anat.trachea
    airway = _circle(x, y, tx, ty, tr, w) * (z < carina)
    for sign in (-1, 1):
        bx = tx + sign * 0.12 * np.clip((z - carina) / 0.1, 0, 1.0)
        airway = np.maximum(airway, _circle(x, y, bx, ty + 0.02, 0.7 * tr, w) * (z >= carina) * (z < carina + 0.15))
    sy, sr, sphase = anat.spine
    vert = _circle(x, y, 0.0, sy, sr, w)
    canal = _circle(x, y, 0.0, sy + sr + 0.045, 0.035, w)
    process = common.soft(np.abs(x) - 0.02, w) * common.soft(np.abs(y - sy - sr - 0.12) - 0.07, w)
    ring = common.soft(np.abs(np.hypot(x, y - sy) - sr) - 0.012, w) * vert   # cortical bone
    disc_level = (np.cos(2 * np.pi * (z / 0.22 + sphase)) > 0.8).astype(np.float32)

    # ribs: oblique cross-sections just inside the muscle layer, moving round with z
    angles, drift, jitter = anat.ribs
    th_body = np.arctan2((y - by) / b, x / a)
    rib_layer = common.soft(np.abs(ell - (1 - (fat + 0.035) / b)) - 0.025, w)
    ribs = np.zeros_like(lungs)
    k_idx, r_idx, c_idx = np.nonzero(rib_layer)  # only the thin layer where ribs can be
    if k_idx.size:
        t = (np.asarray(angles, np.float32)[None, :] + drift * z[:, 0, 0][:, None]
             + np.asarray(jitter, np.float32)[None, :])                  # (slices, ribs)
        t = np.concatenate([t, -t], axis=1)[k_idx]                      # both sides
        th = np.broadcast_to(th_body, rib_layer.shape)[k_idx, r_idx, c_idx][:, None]
        dth = np.abs(np.mod(th - t + np.float32(np.pi), np.float32(2 * np.pi)) - np.float32(np.pi))
        ribs[k_idx, r_idx, c_idx] = common.soft(dth.min(axis=1) - 0.07, 0.02) \
            * rib_layer[k_idx, r_idx, c_idx]
    sternum = common.soft(common.ellipse_sd(x, y, 0.0, by - b * 1.03 + fat + 0.04, 0.06, 0.03), w) \
        * (z > 0.1)

    # pulmonary vessels: where two smooth 3-D fields both cross zero
    sampler = common.plane_sampler(y2, x2, anat.vessel_fields.shape[-2:], EXTENT)
    n1, n2 = (sampler(common.interp_planes(f, z[:, 0, 0], Z_RANGE)) for f in anat.vessel_fields)
    vessels = np.exp(-(n1 * n1 + n2 * n2) / 0.08)

    lungs = lungs * cage * (1 - common.soft(common.ellipse_sd(x, y, hx, hy, hrx * hgrow + 0.03,
                                                              hry * hgrow + 0.03, hang), w))
    lungs = lungs * (1 - np.maximum(aorta, pulm)) * (1 - vert)

    lung_hu = rng.uniform(-900, -700)
    enhance = rng.uniform(0, 300)
    hu = np.full(lungs.shape, -1000.0, np.float32)
    hu = hu + body * (1000 - 100)                      # fat
    hu = hu + inner * (100 + 45)                       # muscle and organs
    hu = hu + lungs * (lung_hu - 45) + lungs * vessels * 0.9 * (40 - lung_hu)
    hu = hu + blood * (enhance + 5)
    hu = hu + airway * (-1000 - 45) * (1 - lungs)
    hu = hu + vert * (1 - disc_level) * 180 + ring * 500 + process * 550 - canal * 35
    hu = hu + ribs * 600 * body + sternum * 350

    if severity > 0:
        nx, ny, nz = anat.nodule
        nr = 0.02 + 0.02 * severity
        blob = common.soft(np.sqrt((x - nx) ** 2 + (y - ny) ** 2 + ((z - nz) * 0.5) ** 2) - nr, w)
        hu = hu + blob * lungs * (30 - lung_hu)
        ggo = np.clip(n1 * 0.7 + 1.2 - 0.6 * severity, 0, 1)
        hu = hu + lungs * (1 - ggo) * 80 * severity
        if severity > 1.5:
            side = 1 if nx > 0 else -1
            level = by + b * taper - fat - 0.05 - 0.12 * (severity - 1.5)
            fluid = lungs * common.soft(level - y, 2 * w) * (side * x > 0)
            hu = hu + fluid * (15 - lung_hu)

    table_y = rng.uniform(0.7, 0.86) / pose.scale
    table = common.soft(np.abs(y2 - table_y - 0.08 * x2 ** 2) - 0.012, w) * (1 - body)
    hu = hu + table * 800 + rng.uniform(-40, 40)
    hu = common.blur_or_sharpen(hu, rng.uniform(-0.8, 0.9) * size / 128, axes=(1, 2))
    hu = hu + rng.uniform(8, 60) * rng.standard_normal(hu.shape, dtype=np.float32)
    fov_mm = 2 * UNIT_MM / pose.scale
    spacing = (SLAB_MM / slices, fov_mm / size, fov_mm / size)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), spacing
