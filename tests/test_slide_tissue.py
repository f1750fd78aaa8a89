"""The tissue mask of a slide's thumbnail (``slide_tissue.tissue_mask``) on sections of
pale and dense tissue: Otsu's split of the saturation histogram fell between pale
(eosin-rich) and dense (haematoxylin-rich) tissue, not at the glass, and the pale tissue
was dropped; the threshold is now capped (``MAX_SATURATION``)."""

import numpy as np

from mami_jax.data import slide_tissue
from mami_jax.data.slide_tissue import tissue_mask

H, W = 200, 400
GLASS, PALE, DENSE = (242, 242, 242), (235, 190, 220), (150, 70, 150)


def section(glass_share, seed=0):
    """(H, W, 3) uint8: glass on the left ``glass_share`` of the width, then pale and
    dense tissue in equal parts (with noise, as a scanner's thumbnail); and the columns
    where pale and dense start."""
    rng = np.random.default_rng(seed)
    img = np.empty((H, W, 3))
    glass = int(W * glass_share)
    half = glass + (W - glass) // 2
    img[:, :glass] = rng.normal(GLASS, 3, (H, glass, 3))
    img[:, glass:half] = rng.normal(PALE, 6, (H, half - glass, 3))
    img[:, half:] = rng.normal(DENSE, 12, (H, W - half, 3))
    return np.clip(img, 0, 255).astype(np.uint8), glass, half


def test_pale_tissue_is_kept_beside_dense_tissue_at_20_percent_glass():
    img, glass, half = section(0.2)
    mask = tissue_mask(img)
    assert mask[:, :glass].mean() < 0.005          # glass stays glass
    assert mask[:, glass:half].mean() > 0.9        # pale tissue: was 0 %
    assert mask[:, half:].mean() > 0.99            # dense tissue


def test_a_section_without_glass_is_all_tissue():
    img, _, _ = section(0.0, seed=1)
    assert tissue_mask(img).mean() > 0.95          # was the dense half only


def test_the_cap_leaves_glass_noise_and_a_dark_grey_border_out():
    assert slide_tissue.MIN_SATURATION < slide_tissue.MAX_SATURATION < 0.19   # below pale tissue's
    rng = np.random.default_rng(2)
    img = np.clip(rng.normal(240, 4, (H, W, 3)), 0, 255).astype(np.uint8)   # glass, colour noise
    img[:, :40] = (40, 40, 46)                                               # a scanner's border
    img[50:150, 100:300] = np.clip(rng.normal(DENSE, 12, (100, 200, 3)), 0, 255)
    mask = tissue_mask(img)
    truth = np.zeros((H, W), bool)
    truth[50:150, 100:300] = True
    assert mask[truth].mean() > 0.99 and mask[~truth].mean() < 0.001
