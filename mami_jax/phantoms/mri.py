"""Brain MRI phantom: a series of axial T1-weighted slices, stored as 8-bit images.

Coordinates: x to the image right, y to the image bottom (posterior), z up
the slab (0 = level of the third ventricle, 1 = high convexity); the series
samples the slab with ``slices`` slices.

Identity (fixed per patient): head and skull shape and thickness, scalp
thickness, the lateral ventricles (length, width, spread, frontal-horn and
atrium size, left/right asymmetry), the deep grey nuclei, and the folding
pattern of the cortex (sulci and grey-matter thickness drawn as 3-D random
fields from the patient's seed).

Per visit: head pose (rotation +-4 deg, shift +-3%, zoom +-4%, slab start
+-3%), tissue contrast (grey/white/CSF values), a smooth bias field,
blur or sharpening, Rician-like noise, the 8-bit windowing and gamma, and the
disease (neurodegeneration: ventricles and sulci widen, periventricular
white-matter lesions appear).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mami_jax.phantoms import common

EXTENT = 1.2
Z_RANGE = (-0.2, 1.2)
N_Z, N_DEPTH, N_ANGLE = 24, 16, 256   # the sulcus field: about 30 sulci round a slice
FIELD_RES = 160                         # Cartesian resolution of the patient's fields
MAX_DEPTH = 0.32                       # of the sulcus field, below the brain surface


@dataclasses.dataclass(frozen=True)
class Anatomy:
    head: tuple        # half width, half depth, centre y, scalp, skull
    ventricles: tuple  # per side: (x offset, front y, back y, width, horn bulge, atrium bulge,
                       #            front divergence, back divergence)
    vent_z: tuple      # centre and half height of the ventricles in z
    nuclei: tuple      # caudate/thalamus ellipses (cx, cy, rx, ry)
    fields: np.ndarray  # (2, Z, Y, X): sulcus field (sulci where near 0), sulcus-depth field


def make_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    head = (rng.uniform(0.64, 0.76), rng.uniform(0.8, 0.92), rng.uniform(-0.03, 0.03),
            rng.uniform(0.035, 0.06), rng.uniform(0.025, 0.045))
    width, front, back = rng.uniform(0.035, 0.07), rng.uniform(-0.42, -0.3), rng.uniform(0.22, 0.4)
    vents = []
    for _ in range(2):
        vents.append((rng.uniform(0.05, 0.09), front + rng.uniform(-0.03, 0.03),
                      back + rng.uniform(-0.04, 0.04), width * rng.uniform(0.85, 1.15),
                      rng.uniform(0.0, 0.05), rng.uniform(0.0, 0.07), rng.uniform(0.02, 0.12),
                      rng.uniform(0.05, 0.25)))
    nuclei = ((rng.uniform(0.1, 0.14), rng.uniform(-0.25, -0.15), rng.uniform(0.04, 0.06), rng.uniform(0.07, 0.1)),
              (rng.uniform(0.08, 0.12), rng.uniform(0.0, 0.1), rng.uniform(0.06, 0.09), rng.uniform(0.08, 0.12)))
    # Sulci run radially: a field smooth along depth and fine along the angle,
    # resampled once onto a Cartesian grid at the resting head geometry.
    polar = common.smooth_noise(rng, (N_Z, N_DEPTH, N_ANGLE), sigma=(1.2, 3.0, 1.9))
    fold = common.smooth_noise(rng, (N_Z, FIELD_RES, FIELD_RES), sigma=(2.0, 5.0, 5.0))
    c = (np.arange(FIELD_RES, dtype=np.float32) + 0.5) / FIELD_RES * 2 * EXTENT - EXTENT
    gy, gx = np.meshgrid(c, c, indexing="ij")
    zc = (np.arange(N_Z, dtype=np.float32) + 0.5) / N_Z * (Z_RANGE[1] - Z_RANGE[0]) + Z_RANGE[0]
    geo = _geometry(head, gx[None], gy[None], zc[:, None, None], 0.0)
    angle = (np.arctan2(gy - head[2], gx) / (2 * np.pi) + 0.5) * N_ANGLE
    sulc = common.sample_stack(polar, geo["depth"] / MAX_DEPTH * N_DEPTH - 0.5, angle[None], wrap_x=True)
    return Anatomy(head=head, ventricles=tuple(vents),
                   vent_z=(rng.uniform(0.2, 0.35), rng.uniform(0.25, 0.4)), nuclei=nuclei,
                   fields=np.stack([sulc, fold]))


def _geometry(head, x, y, z, severity) -> dict:
    """Head radius coordinate r (1 at the scalp), its unit, and depth below the brain surface."""
    a, b, cy, scalp, skull = head
    shrink = np.sqrt(np.clip(1 - 0.45 * z * z, 0.2, 1))
    r = np.hypot(x / (a * shrink), (y - cy) / (b * shrink))
    unit = a * shrink
    edge = scalp + skull + 0.015 + 0.012 * severity      # atrophy widens the CSF gap
    return dict(r=r, unit=unit, edge=edge, depth=np.clip((1 - r) * unit - edge, 0, None))


def render(anat: Anatomy, rng: np.random.Generator, severity: float, size: int, slices: int) -> np.ndarray:
    """One MRI series: uint8 volume of shape (slices, size, size)."""
    pose = common.Pose.draw(rng, max_deg=4, max_shift=0.03, max_zoom=0.04)
    x2, y2 = common.anatomy_coords(size, pose)
    x, y = x2[None], y2[None]
    zs = (np.arange(slices, dtype=np.float32) + 0.5) / slices + rng.uniform(-0.03, 0.03)
    z = zs[:, None, None]
    w = 1.5 / size

    geo = _geometry(anat.head, x, y, z, severity)
    r, unit, depth = geo["r"], geo["unit"], geo["depth"]
    scalp, skull, cy = anat.head[3], anat.head[4], anat.head[2]
    head = common.soft((r - 1) * unit, w)
    inside_skull = common.soft((r - 1) * unit + scalp, w)
    brain = common.soft((r - 1) * unit + geo["edge"], w)
    sampler = common.plane_sampler(y2, x2, anat.fields.shape[-2:], EXTENT)
    sulc, fold = sampler(np.stack([common.interp_planes(f, zs, Z_RANGE) for f in anat.fields]))
    gm_thick = 0.055 * (1 + 0.25 * fold)
    sulcus_w = 0.3 + 0.12 * severity
    folded = common.soft(depth - 0.17 - 0.06 * fold, 3 * w)             # sulci reach this deep
    sulci = common.soft(np.abs(sulc) - sulcus_w, 0.15) * folded
    grey = np.maximum(common.soft(depth - gm_thick, w),
                      common.soft(np.abs(sulc) - sulcus_w - 0.9, 0.2) * common.soft(depth - 0.2, 3 * w))
    fissure = common.soft(np.abs(x) - 0.012, w) * (common.soft(depth - 0.25, w)
                                                   + common.soft(0.32 - np.abs(y - cy), 3 * w))
    csf_cortex = np.clip(np.maximum(sulci, fissure), 0, 1)

    vz, vh = anat.vent_z
    vscale = np.sqrt(np.clip(1 - ((z - vz) / vh) ** 2, 0, 1)) * (1 + 0.15 * severity)
    vent = np.zeros(np.broadcast_shapes(x.shape, z.shape), np.float32)
    for sign, (off, front, back, width, horn, atrium, div_f, div_b) in zip((-1, 1), anat.ventricles):
        t = np.clip((y - front) / (back - front), 0, 1)
        xc = sign * (off + div_f * np.clip(1 - t / 0.3, 0, None) ** 2
                     + div_b * np.clip((t - 0.55) / 0.45, 0, None) ** 2)
        ends = np.clip(np.sin(np.pi * t), 0, None) ** 0.35
        half = (width + horn * np.exp(-((t - 0.15) / 0.12) ** 2)
                + atrium * np.exp(-((t - 0.85) / 0.12) ** 2)) * vscale * ends
        inside = common.soft(np.abs(x - xc) - half, w) * common.soft(front - y, w) * common.soft(y - back, w)
        vent = np.maximum(vent, inside * (vscale > 0.05))
    third = common.soft(np.abs(x) - 0.012 * (1 + severity * 0.3), w) \
        * common.soft(np.abs(y + 0.02) - 0.12, w) * (z < vz - 0.1)
    vent = np.maximum(vent, third)
    nuclei = np.zeros_like(vent)
    for (ncx, ncy, nrx, nry), zc in zip(anat.nuclei, (vz, vz - 0.15)):
        for sign in (-1, 1):
            e = common.soft(common.ellipse_sd(x, y, sign * ncx, ncy, nrx, nry), 2 * w)
            nuclei = np.maximum(nuclei, e * np.clip(1 - np.abs(z - zc) / 0.25, 0, 1))

    lesions = np.zeros_like(vent)
    if severity > 0:
        for _ in range(rng.poisson(3 * severity)):
            sign = rng.choice((-1, 1))
            lx, ly, lz = sign * rng.uniform(0.12, 0.25), rng.uniform(-0.3, 0.3), rng.uniform(0.1, 0.7)
            lr = rng.uniform(0.02, 0.045)
            for k in np.nonzero(np.abs(zs - lz) * 0.6 < lr)[0]:
                dz2 = ((zs[k] - lz) * 0.6) ** 2
                blob = common.soft(np.sqrt((x2 - lx) ** 2 + (y2 - ly) ** 2 + dz2) - lr, w)
                np.maximum(lesions[k], blob, out=lesions[k])

    wm_v, gm_v, csf_v = rng.uniform(0.72, 0.88), rng.uniform(0.42, 0.56), rng.uniform(0.06, 0.18)
    fat_v, bone_v = rng.uniform(0.8, 1.0), rng.uniform(0.03, 0.1)
    wm_mask = brain * (1 - grey)
    tissue = (wm_v * wm_mask + gm_v * brain * grey)
    tissue = tissue * (1 - nuclei * wm_mask) + nuclei * wm_mask * (0.5 * (wm_v + gm_v))
    tissue = tissue * (1 - lesions * wm_mask) + lesions * wm_mask * (0.45 * wm_v + 0.1)
    csf = np.clip(np.maximum(csf_cortex * brain, vent) + (inside_skull - brain), 0, 1)
    img = tissue * (1 - csf) + csf_v * csf
    img = img + (head - inside_skull) * fat_v                      # scalp fat
    img = img * (1 - common.soft(np.abs((r - 1) * unit + scalp + skull / 2) - skull / 2, w)) \
        + bone_v * common.soft(np.abs((r - 1) * unit + scalp + skull / 2) - skull / 2, w)

    bias = np.exp(0.25 * common.smooth_noise(rng, (8, 8), sigma=1.5))
    bias = common.plane_sampler(y2 * pose.scale, x2 * pose.scale, bias.shape, 1.3)(bias)
    img = img * bias[None]
    img = common.blur_or_sharpen(img, rng.uniform(-0.8, 1.0) * size / 128, axes=(1, 2))
    sigma = rng.uniform(0.01, 0.05)
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)     # magnitude of complex noise
    top = np.percentile(img[:, ::2, ::2], 99.5) * rng.uniform(0.85, 1.2)
    img = np.clip(img / top, 0, 1) ** common.log_uniform(rng, 0.75, 1.35)
    return common.to_uint(img, np.uint8)
