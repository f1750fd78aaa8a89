"""Picture files read as viewers show them: turned by their EXIF Orientation, and laid on
white where they are transparent."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from mami_jax.data import decode as reading
from mami_jax.data.decode import decode


def exif_of(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("ext", ["jpg", "png", "tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_picture_reads_turned_as_its_exif_orientation_shows_it(tmp_path, ext, orientation):
    """A camera's fundus photo stored on its side (Orientation 6) read as stored, on its
    side; every viewer, and ``ImageOps.exif_transpose``, turns it."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :5] = 255                        # a white corner at the stored top left
    stored[-5:, :10, 0] = 200
    path = tmp_path / f"a.{ext}"
    Image.fromarray(stored).save(path, exif=exif_of(orientation),
                                 **({"quality": 100} if ext == "jpg" else {}))
    with Image.open(path) as img:
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB")) / 255.0
    got = decode(str(path))[0]
    assert got.shape == shown.shape
    np.testing.assert_allclose(got, shown, atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_writers_turn_back_undoes_the_readers_turn(orientation):
    a = np.arange(2 * 3 * 2, dtype=np.uint16).reshape(2, 3, 2)
    np.testing.assert_array_equal(reading.stored_turn(reading.upright_turn(a, orientation), orientation), a)


def test_a_transparent_pixel_reads_white_whatever_colour_it_stores(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 255, 0, 255], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    got = np.rint(decode(str(tmp_path / "rgba.png"))[0, 0] * 255)
    # (c * a + 255 * (255 - a)) / 255: transparent red is white, half-transparent black grey
    np.testing.assert_array_equal(got, [[255, 255, 255], [0, 255, 0], [127, 127, 127]])
    picture = reading.read_picture(str(tmp_path / "rgba.png"))
    np.testing.assert_array_equal(picture.colour, rgba[..., :3])
    np.testing.assert_array_equal(picture.alpha, rgba[..., 3])


def test_grey_with_alpha_and_a_palette_or_grey_transparent_colour_lie_on_white(tmp_path):
    Image.fromarray(np.array([[[100, 0], [200, 255]]], np.uint8), "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(decode(str(tmp_path / "la.png"))[0, 0, :, 0], [1.0, 200 / 255],
                               atol=1e-6)
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=0)       # entry 0 (red) transparent
    np.testing.assert_allclose(decode(str(tmp_path / "p.png"))[0, 0], [[1, 1, 1], [0, 0, 1]],
                               atol=1e-6)
    Image.fromarray(np.array([[0, 90]], np.uint8)).save(tmp_path / "l.png", transparency=0)
    np.testing.assert_allclose(decode(str(tmp_path / "l.png"))[0, 0, :, 0], [1.0, 90 / 255],
                               atol=1e-6)
    opaque = np.array([[[10, 20, 30, 255]]], np.uint8)
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_allclose(decode(str(tmp_path / "opaque.png"))[0, 0, 0],
                               np.array([10, 20, 30]) / 255, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_an_uncompressed_grey_tiff_stored_on_its_side_reads_turned_not_scrambled(
        tmp_path, dtype, orientation):
    """Pillow 13, given the file's name, maps an uncompressed grey TIFF into memory at the
    turned size it reports for a quarter-turn Orientation: its rows came out scrambled."""
    stored = (np.arange(4 * 6).reshape(4, 6) * 10).astype(dtype)
    Image.fromarray(stored).save(tmp_path / "a.tif", exif=exif_of(orientation))
    Image.fromarray(stored).save(tmp_path / "a.png", exif=exif_of(orientation))
    with Image.open(tmp_path / "a.png") as img:          # a PNG Pillow turns only when asked
        shown = np.asarray(ImageOps.exif_transpose(img))
    got = reading.read_picture(str(tmp_path / "a.tif"))
    assert got.orientation == orientation
    np.testing.assert_array_equal(got.colour, shown)
    np.testing.assert_array_equal(decode(str(tmp_path / "a.tif")), decode(str(tmp_path / "a.png")))
