"""Macenko stain normalisation on tiles rendered from known stain maps (Beer-Lambert)."""

import numpy as np
import pytest

from mami_jax.data import stain

H_TRUE = np.array([0.650, 0.704, 0.286])
E_TRUE = np.array([0.072, 0.990, 0.105])


def stain_maps(size=48, seed=0):
    """Haematoxylin (round nuclei) and eosin (smooth) concentrations; a strip of empty glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    hema = np.zeros((size, size))
    for cx, cy in rng.uniform(0, size, (25, 2)):
        hema = np.maximum(hema, ((xx - cx) ** 2 + (yy - cy) ** 2 < 9).astype(float))
    eos = (0.5 + 0.3 * np.sin(xx / 3.0)) * (1 - hema)   # nuclei: haematoxylin only
    glass = xx < size // 8
    hema[glass], eos[glass] = 0, 0
    return hema, eos


def render(hema, eos, h_vec, e_vec, h_amount, e_amount, white):
    h_vec, e_vec = (np.asarray(v) / np.linalg.norm(v) for v in (h_vec, e_vec))
    od = hema[..., None] * h_vec * h_amount + eos[..., None] * e_vec * e_amount
    return np.clip(np.asarray(white) * np.exp(-od), 0, 1).astype(np.float32)


def test_two_stainings_of_one_tissue_normalise_to_the_same_tile():
    hema, eos = stain_maps()
    a = render(hema, eos, H_TRUE, E_TRUE, 1.0, 0.6, (1.0, 1.0, 1.0))
    b = render(hema, eos, H_TRUE + [0.05, -0.08, 0.1], E_TRUE + [0.1, 0.0, -0.05], 1.9, 0.3,
               (0.92, 0.97, 1.0))
    assert np.abs(a - b).mean() > 0.08                     # the stainings differ a lot
    na, nb = stain.macenko_normalize(a), stain.macenko_normalize(b)
    assert na.dtype == np.float32 and na.shape == a.shape
    assert np.abs(na - nb).mean() < 0.01                   # ... and not after normalising
    # A pure haematoxylin pixel comes out in the reference haematoxylin colour.
    nucleus = np.argwhere((hema == 1))[0]
    od = -np.log(np.clip(na[tuple(nucleus)], 1e-6, 1))
    ref = stain.REFERENCE_STAINS[:, 0]
    assert od @ ref / np.linalg.norm(od) / np.linalg.norm(ref) > 0.99
    # Its concentration is scaled to the reference 99th percentile of haematoxylin.
    np.testing.assert_allclose(np.linalg.norm(od), stain.REFERENCE_MAX_CONCENTRATION[0], rtol=0.05)


def test_blank_glass_is_returned_unchanged_and_grey_input_is_refused():
    glass = np.full((16, 16, 3), 0.97, np.float32)
    np.testing.assert_array_equal(stain.macenko_normalize(glass), glass)
    with pytest.raises(ValueError, match="RGB"):
        stain.macenko_normalize(np.zeros((16, 16, 1), np.float32))
    with pytest.raises(ValueError, match="RGB slices"):
        stain.normalize_slices(np.zeros((16, 16, 3), np.float32))
