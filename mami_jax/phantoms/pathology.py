"""H&E pathology tile phantom, stored as RGB.

Each visit is a new biopsy: the tile shows a fresh piece of tissue at a
random place and in a random orientation, so nothing is aligned between a
patient's tiles. What persists is the patient's tissue (the identity):
- architecture: sheets, nests (small cell islands parted by stroma), cords
  (nuclei in lines) or glands (a ring of nuclei round each lumen, lumen size);
- nuclei: size (four levels) and its spread, elongation and how aligned
  neighbours are, spread evenly or in tight clusters, smooth or lobulated outline, chromatin (solid, vesicular rim with a
  nucleolus, or speckled), darkness relative to the cytoplasm, a clear halo
  round the nucleus or none;
- visible cell borders (squamous-like) or none; stroma share, fibre spacing
  and waviness; cytoplasm staining.
Nuclear coverage stays in a narrow band for every patient (density falls
as size grows), so the share of dark pixels does not give the patient away.

Per visit: which tissue is cut (positions, layout, cellularity +-10%, empty
glass at the tissue edge or fat vacuoles), orientation, the stain
(haematoxylin and eosin colour vectors and amounts, Beer-Lambert mixing),
white balance and gamma, focus blur, noise, and the disease (inflammation:
a focus of lymphocytes, more with each stage).

Why the stain varies so much and the tissue so little (phantoms version 2): the
stain hides the identity from intensity statistics (nearest neighbour on mean
and histograms: Rank-1 0.17 on the 64 px test split, 0.89 with the stain held
fixed), while a pipeline that normalises stain (``data.modalities.pathology.stain_normalize``)
sees the tissue. Version 1 had three nuclear sizes, no clustering factor and
cellularity -25/+30% per visit, with which the runlocal model stayed at 0.51
against 0.71 for version 2 (64 px, stain-normalised, 400 steps).

Version 3 draws the tissue layout (islands, glands, nuclear clusters, vacuoles,
fibre warp, inflammatory foci) 1.5x larger relative to the nuclei
(``LAYOUT_SCALE``): in version 2 a nest's correlation length was one to two
nuclear diameters and a gland's lumen a few, so the architecture hardly showed as such.

Field of view (``render(..., field)``): a tile can show more than the standard
field at the same magnification. A 64 px standard tile holds a few dozen nuclei,
too few for one tile to pin down its patient's nuclear statistics: the runlocal
configuration renders pathology 2 fields wide (128 px at the magnification of a
64 px tile; ``phantoms.pathology_field``); what that changed: docs/experiments.md#pathology.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import spatial

from mami_jax.phantoms import common

H_VEC = np.array([0.650, 0.704, 0.286], np.float32)  # haematoxylin optical density (Ruifrok & Johnston)
E_VEC = np.array([0.072, 0.990, 0.105], np.float32)  # eosin
ARCHITECTURES = ("sheet", "nests", "cords", "glands")
#: Size of the tissue layout (islands, glands, nuclear clusters, vacuoles, fibre warp,
#: inflammatory foci) relative to the nuclei, against version 2 (phantoms version 3).
LAYOUT_SCALE = 1.5


@dataclasses.dataclass(frozen=True)
class Anatomy:
    architecture: str
    radius: float        # mean nucleus radius in pixels at 128 px
    radius_cv: float
    elongation: float    # long / short axis
    alignment: float     # 0 random orientation, 1 all along the local direction
    clustering: float    # 0 nuclei spread evenly, 1 in tight clusters of a few
    vesicular: float     # 0 solid chromatin, 1 open rim with nucleolus
    speckle: float
    darkness: float      # haematoxylin amount of a nucleus
    borders: float       # strength of visible cell membranes
    halo: float          # clear space round each nucleus (0 none)
    lobes: float         # irregular, lobulated nuclear outline (0 smooth)
    lumen_radius: float
    islands: float       # size of the cellular islands between stroma (share of the tile)
    coverage: float      # nuclear area share of the cellular areas
    stroma: float        # stroma area share
    fibre_period: float  # pixels at 128 px
    fibre_wave: float
    cytoplasm: float     # eosin in cytoplasm


def _pick(rng, options, jitter=0.1):
    """One of a few well-separated values, give or take ``jitter`` (relative)."""
    return float(options[int(rng.integers(len(options)))] * rng.uniform(1 - jitter, 1 + jitter))


def make_anatomy(rng: np.random.Generator, size: int) -> Anatomy:
    """The patient's tissue. Most factors take one of a few clearly different values, so that
    two patients rarely look alike even though their tiles are never aligned."""
    arch = ARCHITECTURES[int(rng.integers(len(ARCHITECTURES)))]
    chromatin = int(rng.integers(3))        # solid, vesicular with nucleolus, speckled
    return Anatomy(architecture=arch, radius=_pick(rng, (2.6, 4.0, 6.0, 9.0), 0.08),
                   radius_cv=rng.uniform(0.05, 0.25),
                   elongation=_pick(rng, (1.1, 1.7, 2.7), 0.05),
                   alignment=_pick(rng, (0.1, 0.9), 0.1),
                   clustering=float(rng.random() < 0.5),
                   vesicular=rng.uniform(0.7, 1.0) if chromatin == 1 else 0.0,
                   speckle=rng.uniform(0.6, 1.0) if chromatin == 2 else 0.0,
                   # open chromatin gets darker rims: the mean stain of a nucleus does not tell the type
                   darkness=rng.uniform(0.6, 0.75) if chromatin == 0 else rng.uniform(0.85, 1.0),
                   borders=rng.uniform(0.5, 1.0) if rng.random() < 0.4 else 0.0,
                   halo=rng.uniform(0.3, 0.6) if rng.random() < 0.35 else 0.0,
                   lobes=rng.uniform(0.2, 0.35) if rng.random() < 0.35 else 0.0,
                   lumen_radius=_pick(rng, (0.12, 0.25)),
                   islands=rng.uniform(0.04, 0.07) if arch == "nests" else rng.uniform(0.09, 0.14),
                   coverage=rng.uniform(0.2, 0.3),
                   stroma=rng.uniform(0.35, 0.55) if arch in ("nests", "cords") else rng.uniform(0.05, 0.3),
                   fibre_period=_pick(rng, (5.0, 10.0, 16.0)), fibre_wave=rng.uniform(0.5, 3.0),
                   cytoplasm=rng.uniform(0.3, 0.5))


def _stamp(canvas, cx, cy, rx, ry, angle, weight, rim, nucleolus, speckle_field,
           lobes=0.0, phase=0.0, halo=None, halo_strength=0.0):
    """Adds one nucleus (ellipse in pixels) to ``canvas``, evaluated on its bounding box only.

    ``lobes`` makes the outline irregular (three to four bulges); with ``halo``
    (an eosin canvas) a clear ring round the nucleus is cut out of the cytoplasm.
    """
    size = canvas.shape[0]
    r = max(rx, ry) * (1 + lobes) + 2 + (3 if halo is not None else 0)
    c0, c1 = max(0, int(cx - r)), min(size, int(cx + r) + 2)
    r0, r1 = max(0, int(cy - r)), min(size, int(cy + r) + 2)
    if c0 >= c1 or r0 >= r1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    d = common.ellipse_sd(xx, yy, cx, cy, rx, ry, angle)
    if lobes > 0:
        th = np.arctan2(yy - cy, xx - cx)
        d = d - lobes * min(rx, ry) * np.cos(3.5 * th + phase)
    prof = common.soft(d, 0.8) - rim * 0.65 * common.soft(d + 1.3, 0.8)
    if halo is not None:
        ring = common.soft(d - 2.5, 0.8)
        halo[r0:r1, c0:c1] *= 1 - halo_strength * ring
    if nucleolus > 0:
        prof = prof + nucleolus * common.soft(np.hypot(xx - cx, yy - cy) - 1.0, 0.6)
    if speckle_field is not None:
        prof = prof * (1.0 - 0.5 * speckle_field[r0:r1, c0:c1])
    np.maximum(canvas[r0:r1, c0:c1], weight * prof, out=canvas[r0:r1, c0:c1])


def _candidates(anat, rng, n, fibres, span):
    """Candidate nucleus centres (in [-1, 1]) for the free (non-gland) nuclei."""
    if anat.clustering:   # a few nuclei round each of n/4 centres, spread ~2.5 radii
        centres = rng.uniform(-1.05, 1.05, size=(max(1, 6 * n // 4), 2))
        spread = 2.5 * anat.radius / 128 * 2 * span
        pts = centres[rng.integers(len(centres), size=6 * n)] + rng.normal(0, spread, size=(6 * n, 2))
    else:
        pts = rng.uniform(-1.05, 1.05, size=(6 * n, 2))
    if anat.architecture == "cords":   # keep those on the crests of the fibre pattern
        size = fibres.shape[0]
        ij = np.clip(((pts + 1) / 2 * size).astype(int), 0, size - 1)
        pts = pts[fibres[ij[:, 1], ij[:, 0]] > 0.8]
    return pts


def render(anat: Anatomy, rng: np.random.Generator, severity: float, size: int,
           field: float = 1.0) -> np.ndarray:
    """One H&E tile at one visit, uint8 of shape (size, size, 3).

    ``field``: the tile's side in units of the standard field of view, at the same
    magnification. The standard tile (``field=1``) shows ``size`` pixels of tissue at
    ``size / 128`` pixels per design pixel; ``field=1.5`` shows 1.5x the side (2.25x the
    nuclei) at the magnification of a ``size / 1.5`` px standard tile. Identity here is a
    statistic of the nuclei, so the number of nuclei per tile sets how well one tile
    identifies its patient (``benchmarks/phantom_baselines.py``).
    """
    if field <= 0:
        raise ValueError(f"pathology field must be > 0, got {field}")
    k = size / (128.0 * field)   # pixels per design pixel
    span = LAYOUT_SCALE / field   # tissue-layout lengths in units of the tile's half side
    x, y = common.pixel_grid(size)
    w = 1.5 / size
    lumens = np.zeros_like(x)
    centres = []
    if anat.architecture == "glands":
        for _ in range(rng.poisson(2.5 / span ** 2) + 1):
            cx, cy = rng.uniform(-1, 1, size=2)
            lr = anat.lumen_radius * rng.uniform(0.7, 1.3) * span
            a, e = rng.uniform(0, np.pi), rng.uniform(1.0, 1.5)
            centres.append((cx, cy, lr * e, lr / e, a))
            lumens = np.maximum(lumens, common.soft(common.ellipse_sd(x, y, cx, cy, lr * e, lr / e, a), w))
    glass = np.zeros_like(x)   # empty glass this time: the tissue edge and/or fat vacuoles
    if rng.random() < 0.3:
        edge_dir = rng.uniform(0, 2 * np.pi)
        along = x * np.cos(edge_dir) + y * np.sin(edge_dir) \
            + 0.08 * common.smooth_noise(rng, (size, size), sigma=size / 8 * span)
        glass = np.maximum(glass, common.soft(rng.uniform(0.5, 1.0) - along, 3 * w))
    for _ in range(rng.poisson(0.5 / span ** 2)):
        cx, cy = rng.uniform(-1, 1, size=2)
        glass = np.maximum(glass, common.soft(np.hypot(x - cx, y - cy) - rng.uniform(0.05, 0.12) * span, w))
    empty = np.maximum(lumens, glass)
    layout = common.smooth_noise(rng, (size, size), sigma=size * anat.islands * span)
    stroma = common.soft(layout - np.quantile(layout, anat.stroma), 0.25) * (1 - empty)
    direction = rng.uniform(0, np.pi)
    warp = common.smooth_noise(rng, (size, size), sigma=size / 12 * span)
    phase = (x * np.cos(direction) + y * np.sin(direction)) * size / (anat.fibre_period * k) * np.pi
    fibres = 0.5 + 0.5 * np.sin(phase + anat.fibre_wave * warp)
    speckle = np.clip(common.smooth_noise(rng, (size, size), sigma=0.7 * k) * 0.5 + 0.5, 0, 1) * anat.speckle

    hema = np.zeros((size, size), np.float32)
    # stroma is as eosinophilic as the cytoplasm on average: its share shows as texture, not tone
    eos = (anat.cytoplasm + stroma * 0.3 * (fibres - 0.5)) * (1 - empty)
    eos = eos * (1 + 0.15 * common.smooth_noise(rng, (size, size), sigma=2 * k))

    r_mean = anat.radius * k
    cellular = float(np.mean((1 - stroma) * (1 - empty)))
    n = max(1, int(anat.coverage * rng.uniform(0.9, 1.1) * size * size * cellular / (np.pi * r_mean ** 2)))
    placed = []   # (px, py, angle) in [-1, 1] coordinates

    def place(px, py, angle):
        ix = int(np.clip((px + 1) / 2 * size, 0, size - 1))
        iy = int(np.clip((py + 1) / 2 * size, 0, size - 1))
        if empty[iy, ix] > 0.5 or (stroma[iy, ix] > 0.5 and rng.random() < 0.85):
            return
        rad = r_mean * max(0.4, 1 + anat.radius_cv * rng.standard_normal())
        e = anat.elongation * rng.uniform(0.9, 1.1)
        _stamp(hema, (px + 1) / 2 * size, (py + 1) / 2 * size, rad * np.sqrt(e), rad / np.sqrt(e),
               angle, anat.darkness * rng.uniform(0.85, 1.0), anat.vesicular, 0.5 * anat.vesicular, speckle,
               lobes=anat.lobes, phase=rng.uniform(0, 2 * np.pi),
               halo=eos if anat.halo else None, halo_strength=anat.halo)
        placed.append((px, py))

    for (cx, cy, rx, ry, a) in centres:           # epithelial ring round each lumen
        per = max(3, int(2 * np.pi * max(rx, ry) * size / 2 / (2.2 * r_mean)))
        ca, sa = np.cos(a), np.sin(a)
        for t in np.linspace(0, 2 * np.pi, per, endpoint=False) + rng.uniform(0, 1):
            px = (rx + 1.3 * r_mean / size * 2) * np.cos(t)
            py = (ry + 1.3 * r_mean / size * 2) * np.sin(t)
            place(ca * px - sa * py + cx, sa * px + ca * py + cy, t + a)
    for (px, py) in _candidates(anat, rng, n, fibres, span):
        if len(placed) >= n:
            break
        ix = int(np.clip((px + 1) / 2 * size, 0, size - 1))
        iy = int(np.clip((py + 1) / 2 * size, 0, size - 1))
        along = direction + 0.8 * warp[iy, ix]
        place(px, py, along + (1 - anat.alignment) * rng.uniform(-np.pi / 2, np.pi / 2))
    if anat.borders > 0 and len(placed) >= 2:    # cell membranes: where two nearest nuclei tie
        pix = np.stack([x.ravel(), y.ravel()], axis=1)
        d, _ = spatial.cKDTree(np.array(placed)).query(pix, k=2)
        gap = ((d[:, 1] - d[:, 0]) * size / 2).reshape(size, size)
        eos = eos + anat.borders * 0.5 * common.soft(gap - 1.0, 0.6) * (1 - stroma) * (1 - empty)
    for _ in range(rng.poisson(4 * field ** 2)):  # fibroblasts in the stroma
        px, py = rng.uniform(0, size, size=2)
        if stroma[int(py), int(px)] > 0.5:
            _stamp(hema, px, py, 5 * k, 1.3 * k, direction + 0.8 * warp[int(py), int(px)], 0.8, 0, 0, None)
    if severity > 0:      # inflammation: a focus of small dark round lymphocytes
        focus = rng.uniform(0.15, 0.85, size=2) * size
        for _ in range(rng.poisson(8 * severity)):
            px, py = np.clip(focus + rng.normal(0, 0.15 * size * span, size=2), 0, size - 1)
            _stamp(hema, px, py, 2.4 * k, 2.2 * k, 0.0, 1.0, 0, 0, None)

    h_vec = H_VEC + rng.normal(0, 0.06, 3).astype(np.float32)
    e_vec = E_VEC + rng.normal(0, 0.06, 3).astype(np.float32)
    h_vec, e_vec = (np.abs(v) / np.linalg.norm(v) for v in (h_vec, e_vec))
    od = (hema[..., None] * h_vec * rng.uniform(0.6, 2.2) + eos[..., None] * e_vec * rng.uniform(0.2, 1.2)
          + 0.03 * (1 - empty)[..., None])
    img = np.exp(-od) * np.exp(rng.uniform(-0.1, 0.04, 3)).astype(np.float32)
    img = img ** common.log_uniform(rng, 0.7, 1.4)
    img = common.blur_or_sharpen(img, rng.uniform(0.2, 0.7) * k)
    img = img + rng.uniform(0.005, 0.02) * rng.standard_normal(img.shape, dtype=np.float32)
    return common.to_uint(np.clip(img, 0, 1), np.uint8)
