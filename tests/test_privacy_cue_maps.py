"""``apps.privacy.cues``: the two identity-cue maps on a score whose answer is known.

The score is the mean brightness of one 8 x 8 square of the image (an "identity region");
every other pixel leaves it unchanged. The gradient map must be exactly that square; the
occlusion map (16 px squares every 8 px, filled with the image's mean) must be highest
where the occluding squares cover the region and zero where none does."""

import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.apps.privacy import cues
from mami_jax.apps.privacy.references import References

SIZE, TOP, LEFT, SIDE = 32, 8, 16, 8


def region_score(params, x, offset, refs, key):
    """(B,) mean of the region of x (B, T, H, W, C), times params (1.0)."""
    return params * jnp.mean(x[:, :, TOP:TOP + SIDE, LEFT:LEFT + SIDE, :], axis=(1, 2, 3, 4))


def _refs(b):
    own = [np.zeros((b, 4), np.float32)]
    return References(others=[np.zeros((b, 1, 4), np.float32)], mask=np.ones((b, 1), np.float32),
                      own=own, center=[np.zeros(4, np.float32)])


def _image():
    """One grey image, its region brighter than the rest: occluding the region with the
    image's mean lowers the score."""
    x = np.full((1, 1, SIZE, SIZE, 3), 0.2, np.float32)
    x[:, :, TOP:TOP + SIDE, LEFT:LEFT + SIDE, :] = 0.9
    return x


def test_the_gradient_map_is_the_region_the_score_reads():
    maps = cues.gradient_maps(region_score, 1.0, _image(), np.zeros((1, 3)), _refs(1), smooth=0)
    expected = np.zeros((1, 1, SIZE, SIZE), np.float32)
    expected[:, :, TOP:TOP + SIDE, LEFT:LEFT + SIDE] = 1.0
    np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_the_occlusion_map_is_the_drop_averaged_over_the_squares_covering_each_pixel():
    x = _image()
    maps = cues.occlusion_maps(region_score, 1.0, x, np.zeros((1, 3)), _refs(1), patch=16,
                               stride=8, chunk=4)
    # By hand: squares at tops/lefts 0, 8, 16; the region [8,16) x [16,24) is covered whole
    # by the squares with top in {0, 8} and left in {8, 16}: each drops the score by
    # 0.9 - mean. Any other square that meets the region covers half of it or less.
    fill = float(x.mean())
    full = 0.9 - fill
    drops = np.zeros((SIZE, SIZE))
    cover = np.zeros((SIZE, SIZE))
    for top in (0, 8, 16):
        for left in (0, 8, 16):
            rows = slice(max(top, TOP), min(top + 16, TOP + SIDE))
            cols = slice(max(left, LEFT), min(left + 16, LEFT + SIDE))
            covered = max(0, rows.stop - rows.start) * max(0, cols.stop - cols.start)
            drops[top:top + 16, left:left + 16] += full * covered / SIDE ** 2
            cover[top:top + 16, left:left + 16] += 1
    expected = drops / cover
    np.testing.assert_allclose(maps[0, 0], expected / expected.max(), atol=1e-5)
    assert maps[0, 0, TOP:TOP + SIDE, LEFT:LEFT + SIDE].min() == pytest.approx(1.0)
    assert maps[0, 0, 24:, :8].max() == 0.0          # no square that covers it meets the region


def test_a_score_that_no_pixel_moves_gives_all_zero_maps():
    """A model whose embedding does not depend on the image (a collapsed one): no cue."""
    def flat(params, x, offset, refs, key):
        return jnp.zeros(x.shape[0]) + params
    x = _image()
    for maps in (cues.gradient_maps(flat, 1.0, x, np.zeros((1, 3)), _refs(1), smooth=1.0),
                 cues.occlusion_maps(flat, 1.0, x, np.zeros((1, 3)), _refs(1), 16, 8)):
        assert maps.shape == (1, 1, SIZE, SIZE) and not maps.any()


def test_occlusion_drops_at_the_scale_of_rounding_are_no_cue():
    """A randomly initialised tiny ViT moves its score by ~1e-8 when a square is occluded,
    rounding's scale: scaled to [0, 1] that drew a map whose sign pattern changed with the
    CPU (the CLI test's map was all zero on one machine and not on another)."""
    def rounding(params, x, offset, refs, key):
        return params + 3e-8 * region_score(1.0, x, offset, refs, key)
    maps = cues.occlusion_maps(rounding, 0.0, _image(), np.zeros((1, 3)), _refs(1), 16, 8)
    assert not maps.any()
    def real(params, x, offset, refs, key):
        return params + 3e-6 * region_score(1.0, x, offset, refs, key)
    maps = cues.occlusion_maps(real, 0.5, _image(), np.zeros((1, 3)), _refs(1), 16, 8)
    assert maps[0, 0, TOP:TOP + SIDE, LEFT:LEFT + SIDE].min() == pytest.approx(1.0, abs=1e-3)


def test_every_pixel_is_occluded_also_where_the_stride_does_not_reach_the_edge():
    """30 px, squares of 8 every 4: starts 0 ... 20 left rows and columns 28-29 under no
    square (their map 0, never picked for removal); a last square flush with each far edge
    covers them. A stride beyond the patch (gaps between squares) is refused."""
    assert cues.box_starts(30, 8, 4) == [0, 4, 8, 12, 16, 20, 22]
    assert cues.box_starts(32, 8, 4) == [0, 4, 8, 12, 16, 20, 24]
    assert cues.box_starts(6, 8, 4) == [0]

    def corner(params, x, offset, refs, key):        # reads the last two rows and columns
        return jnp.mean(x[:, :, 28:, 28:, :], axis=(1, 2, 3, 4))
    x = np.full((1, 1, 30, 30, 3), 0.2, np.float32)
    x[:, :, 28:, 28:, :] = 0.9
    maps = cues.occlusion_maps(corner, 1.0, x, np.zeros((1, 3)), _refs(1), patch=8, stride=4)
    assert maps[0, 0, 28:, 28:].min() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="stride at most the patch"):
        cues.occlusion_maps(corner, 1.0, x, np.zeros((1, 3)), _refs(1), patch=4, stride=8)


def test_an_image_without_other_images_of_its_patient_has_no_gradient_cues():
    """Matched with nothing but its own original, an image's score is at its maximum at the
    image: the gradient there is float rounding (6.9e-7 at most on a ViT), which scaled to
    [0, 1] drew a map of noise. Its map is empty; another image of the batch keeps its own."""
    refs = _refs(2)
    refs.mask[1] = 0.0
    x = np.concatenate([_image(), _image()])
    maps = cues.gradient_maps(region_score, 1.0, x, np.zeros((2, 3)), refs, smooth=1.0)
    assert maps[0].max() == pytest.approx(1.0) and not maps[1].any()
    np.testing.assert_array_equal(cues.has_other_images(refs), [True, False])
