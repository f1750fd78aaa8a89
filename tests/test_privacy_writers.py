"""mami_jax.apps.privacy.writers: a protected image keeps its input's format, shape and
metadata, decodes to original + change (to the format's rounding), and the input file
stays byte-identical."""

import hashlib
import re
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from mami_jax.apps.privacy.writers import WriteError, write_protected
from mami_jax.data.decode import open_volume
from mami_jax.data.transforms import slice_indices
from tests.test_data_decode import write_dicom


def digest(path):
    if os.path.isdir(path):
        return {n: digest(os.path.join(path, n)) for n in sorted(os.listdir(path))}
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def roundtrip(path, out, t=1, amplitude=0.03, seed=0):
    """Writes a random change of the first T read slices; returns (read, change, re-read)."""
    volume = open_volume(str(path))
    idx = slice_indices(volume.num_slices, t)
    x = volume.read(idx)
    rng = np.random.default_rng(seed)
    change = np.clip(x + rng.uniform(-amplitude, amplitude, x.shape), 0, 1) - x
    before = digest(str(path))
    write_protected(str(path), idx, change.astype(np.float32), str(out))
    assert digest(str(path)) == before        # the input is never modified
    return x, change, open_volume(str(out)).read(idx)


def test_png_8bit_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(20, 230, (24, 20), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    x, change, back = roundtrip(tmp_path / "g.png", tmp_path / "out" / "g.png")
    with Image.open(tmp_path / "out" / "g.png") as img:
        assert (img.format, img.mode, img.size) == ("PNG", "L", (20, 24))
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6
    rgb = rng.integers(20, 230, (16, 18, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    x, change, back = roundtrip(tmp_path / "c.png", tmp_path / "out" / "c.png")
    with Image.open(tmp_path / "out" / "c.png") as img:
        assert (img.mode, img.size) == ("RGB", (18, 16))
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("compression, written", [
    ("raw", "raw"), ("tiff_lzw", "tiff_lzw"), ("tiff_adobe_deflate", "tiff_adobe_deflate"),
    ("jpeg", "tiff_adobe_deflate")])
def test_a_tiff_keeps_a_lossless_compression_and_replaces_a_lossy_one(tmp_path, compression,
                                                                      written):
    """Pathology tiles are often JPEG-compressed TIFF: the copy is deflated (lossless, so
    the change is kept), not written raw; a lossless compression stays."""
    yy, xx = np.mgrid[0:64, 0:64]
    rgb = np.stack([yy * 3, xx * 3, (xx + yy) * 2], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "t.tif", compression=compression)
    x, change, back = roundtrip(tmp_path / "t.tif", tmp_path / "o.tif")
    with Image.open(tmp_path / "o.tif") as img:
        assert (img.format, img.mode, img.info.get("compression")) == ("TIFF", "RGB", written)
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_png_with_alpha_keeps_its_alpha_channel(tmp_path, mode):
    """The reader lays the picture on white (the model sees grey or RGB); the copy gets its
    alpha back as it was, and the colour under it reads, laid on white, as the original
    plus the change, as far as its transparency lets a change show: a pixel of alpha a
    shows values in [1 - a/255, 1] only (a fully transparent one is white whatever it
    stores)."""
    rng = np.random.default_rng(2)
    colour = [Image.fromarray(rng.integers(20, 230, (12, 14), dtype=np.uint8))
              for _ in range(len(mode) - 1)]
    alpha = rng.integers(0, 256, (12, 14), dtype=np.uint8)
    alpha[0, :4] = 0, 255, 128, 5
    Image.merge(mode, colour + [Image.fromarray(alpha)]).save(tmp_path / "a.png")
    x, change, back = roundtrip(tmp_path / "a.png", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert (img.mode, img.size) == (mode, (14, 12))
        np.testing.assert_array_equal(np.asarray(img.getchannel("A")), alpha)
    floor = (1.0 - alpha / 255.0)[None, :, :, None]
    assert np.abs(back - np.clip(x + change, floor, 1.0)).max() <= 0.5 / 255 + 1e-6
    opaque = alpha == 255
    assert np.abs(back - (x + change))[0][opaque].max() <= 0.5 / 255 + 1e-6
    assert np.all(back[0][alpha == 0] == 1.0)


@pytest.mark.parametrize("ext", ["jpg", "png", "tif"])
def test_a_copy_keeps_the_exif_orientation_and_no_other_exif_tag(tmp_path, ext):
    """A camera's photo stored on its side (EXIF Orientation 6): viewers turn the copy as
    they turn the original; the camera's make and serial number are not copied."""
    rgb = np.random.default_rng(2).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0xA431] = 6, "FundusCam", "SN-12345"
    Image.fromarray(rgb).save(tmp_path / f"a.{ext}", exif=exif)
    roundtrip(tmp_path / f"a.{ext}", tmp_path / "out" / f"a.{ext}")
    with Image.open(tmp_path / "out" / f"a.{ext}") as img:
        kept = img.getexif()
    assert kept.get(0x0112) == 6
    assert 0x010F not in kept and 0xA431 not in kept
    assert "SN-12345" not in open(tmp_path / "out" / f"a.{ext}", "rb").read().decode("latin-1")


@pytest.mark.parametrize("ext", ["png", "tif", "jpg"])
def test_a_copy_of_an_exif_turned_picture_reads_back_as_the_original_plus_the_change(tmp_path,
                                                                                   ext):
    """The change is made on the upright picture the model reads (a camera's photo stored
    on its side, Orientation 6); the copy stores it turned back, at the input's stored size
    and with its tag, so that the reader and viewers show it upright as the original plus
    the change: not turned twice (a TIFF, which Pillow turns as it loads, was), not on its
    side. Its budget is kept as the copy reads."""
    from PIL import ImageOps
    from mami_jax.apps.privacy.written_budget import write_within_budget
    yy, xx = np.mgrid[0:16, 0:24]
    rgb = np.stack([yy * 12, xx * 8, (xx + yy) * 5], -1).astype(np.uint8)   # stored 24 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"a.{ext}"
    Image.fromarray(rgb).save(path, exif=exif, **({"quality": 100} if ext == "jpg" else {}))
    out = tmp_path / "out" / f"a.{ext}"
    x, change, back = roundtrip(path, out)
    assert x.shape == back.shape == (1, 24, 16, 3)          # shown upright: 16 wide
    with Image.open(path) as img:
        size = img.size
    with Image.open(out) as img:
        assert img.size == size and img.getexif().get(0x0112) == 6     # stored as the input
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB")) / 255.0
    np.testing.assert_allclose(shown, back[0], atol=1e-6)
    error = back - (x + change)
    if ext == "jpg":       # quality 100: the coder's error, far below the change
        assert np.sqrt(np.mean(error ** 2)) < 0.25 * np.sqrt(np.mean(change ** 2))
    else:
        assert np.abs(error).max() <= 0.5 / 255 + 1e-6
    epsilon = 0.01
    written = write_within_budget(str(path), [0], change.astype(np.float32), str(out), epsilon)
    assert written.rms <= epsilon * (1 + 1e-4)
    again = open_volume(str(out)).read([0])
    assert again.shape == x.shape
    assert np.sqrt(np.mean((again - x) ** 2)) <= epsilon * (1 + 1e-4)


def test_a_turned_picture_with_alpha_keeps_its_stored_alpha_and_reads_as_changed(tmp_path):
    """Alpha and colour are turned back together: the copy's alpha is the input's, as
    stored, and the copy reads upright as the original plus the change where its
    transparency lets the change show."""
    rng = np.random.default_rng(3)
    rgba = rng.integers(20, 230, (8, 12, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 256, (8, 12), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png", exif=exif)
    x, change, back = roundtrip(tmp_path / "a.png", tmp_path / "out.png")
    assert x.shape == back.shape == (1, 12, 8, 3)
    with Image.open(tmp_path / "out.png") as img:
        assert img.size == (12, 8)
        np.testing.assert_array_equal(np.asarray(img.getchannel("A")), rgba[..., 3])
    floor = (1.0 - np.rot90(rgba[..., 3], -1) / 255.0)[None, :, :, None]
    assert np.abs(back - np.clip(x + change, floor, 1.0)).max() <= 0.5 / 255 + 1e-6


def test_png_16bit_keeps_its_minmax_range(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(1000, 5000, (20, 20)).astype(np.uint16)
    a[0, 0], a[5, 5] = 1000, 5000
    Image.fromarray(a).save(tmp_path / "x.png")
    x, change, back = roundtrip(tmp_path / "x.png", tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as img:
        assert img.mode.startswith("I;16") and img.size == (20, 20)
        stored = np.asarray(img)
    assert stored.min() == 1000 and stored.max() == 5000
    err = np.abs(back - (x + change))
    err[0, 0, 0], err[0, 5, 5] = 0, 0     # the two range-keeping pixels
    assert err.max() <= 0.5 / 4000 + 1e-6


def test_jpeg_stays_jpeg_and_keeps_most_of_the_change(tmp_path):
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(40, 200, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "f.jpg", quality=95)
    volume = open_volume(str(tmp_path / "f.jpg"))
    x = volume.read([0])
    change = np.zeros_like(x)
    change[:, 8:24, 8:24, :] = 0.05          # a smooth change, as a protection is
    write_protected(str(tmp_path / "f.jpg"), [0], change, str(tmp_path / "o.jpg"))
    with Image.open(tmp_path / "o.jpg") as img:
        assert img.format == "JPEG" and img.size == (32, 32)
    got = open_volume(str(tmp_path / "o.jpg")).read([0]) - x
    assert abs(got[:, 10:22, 10:22].mean() - 0.05) < 0.01


def test_dicom_keeps_every_tag_and_applies_the_window(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.integers(100, 1400, (16, 16)).astype(np.int16)   # inside the window
    path = str(tmp_path / "a.dcm")
    write_dicom(path, a, PatientName="Doe^Jane", PatientID="X123", RescaleSlope=2,
                RescaleIntercept=-1000, WindowCenter=500, WindowWidth=3001,
                StudyInstanceUID="1.2.3.4")
    x, change, back = roundtrip(path, tmp_path / "o.dcm")
    src, out = pydicom.dcmread(path), pydicom.dcmread(str(tmp_path / "o.dcm"))
    for tag in ("PatientName", "PatientID", "StudyInstanceUID", "SOPClassUID", "RescaleSlope",
                "RescaleIntercept", "WindowCenter", "WindowWidth", "Rows", "Columns"):
        assert out.get(tag) == src.get(tag), tag
    assert out.pixel_array.dtype == src.pixel_array.dtype and out.pixel_array.shape == (16, 16)
    # one stored step is 2 rescaled units = 2/3000 of the window
    assert np.abs(back - (x + change)).max() <= 1.01 / 3000 * 2
    assert not np.array_equal(out.pixel_array, src.pixel_array)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT"])
def test_pixels_the_files_own_window_clips_show_the_change(tmp_path, function):
    """A pixel the VOI window clips (rescaled value outside the window) reads 0 or 1
    however far outside it lies: scaling the change by the window's width left a pixel 300
    units below the window below it (change lost, 0.07 off), though the protection was
    measured with it. The copy decodes to original + change on every pixel, inverted
    (MONOCHROME1) included."""
    rng = np.random.default_rng(21)
    a = rng.integers(600, 1600, (16, 16)).astype(np.uint16)     # rescaled 200 ... 2200
    path = str(tmp_path / "w.dcm")
    write_dicom(path, a, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-1000,
                WindowCenter=600, WindowWidth=2001, VOILUTFunction=function)
    x = open_volume(path).read([0])
    rescaled = a * 2.0 - 1000
    clipped = (rescaled < -402) | (rescaled > 1602)            # by more than a stored step
    assert 50 < clipped.sum() < 200
    change = np.where(rng.random(x.shape) < 0.5, 0.04, -0.04).astype(np.float32)
    write_protected(path, [0], change, str(tmp_path / "o.dcm"))
    back = open_volume(str(tmp_path / "o.dcm")).read([0])
    want = np.clip(x + change, 0, 1)
    assert np.abs(back - want)[0, clipped, 0].max() <= 1.01 / 1000      # one stored step
    assert np.abs(back - want).max() <= 1.01 / 1000
    moved_in = clipped & (want[0, :, :, 0] != x[0, :, :, 0])
    assert moved_in.sum() > 20 and (back != x)[0, moved_in, 0].all()


@pytest.mark.parametrize("series", [False, True])
def test_a_dicom_copy_is_a_new_image_of_the_same_study(tmp_path, series):
    """Its pixels differ, so it is a new instance (a PACS that holds the original would
    drop a copy under the same SOPInstanceUID as a duplicate, or replace the original): new
    instance and series UIDs, the same in every file of a series and on every run, DERIVED,
    and the original named as its source; the unread slices keep their stored pixels."""
    rng = np.random.default_rng(13)
    a = rng.integers(0, 1000, (3, 8, 8)).astype(np.uint16)
    if series:
        path = tmp_path / "series"
        path.mkdir()
        for i in range(3):
            write_dicom(str(path / f"IM{i}"), a[i], InstanceNumber=i + 1, SeriesInstanceUID="1.2.9",
                        StudyInstanceUID="1.2.8", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
        files = [str(path / f"IM{i}") for i in range(3)]
    else:
        path = tmp_path / "frames.dcm"
        write_dicom(str(path), a, SeriesInstanceUID="1.2.9", StudyInstanceUID="1.2.8",
                    ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
        files = [str(path)]
    x = open_volume(str(path)).read([1])
    change = np.full_like(x, 0.01)
    copies = []
    for run in ("a", "b"):
        write_protected(str(path), [1], change, str(tmp_path / run))
        copies.append(sorted(os.path.join(tmp_path / run, n) for n in os.listdir(tmp_path / run))
                      if series else [str(tmp_path / run)])
    for original, copy_a, copy_b in zip(files, *copies):
        src, out = pydicom.dcmread(original), pydicom.dcmread(copy_a)
        assert out.SOPInstanceUID != src.SOPInstanceUID
        assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID \
            == pydicom.dcmread(copy_b).SOPInstanceUID                  # the same on every run
        assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert (out.SeriesInstanceUID != "1.2.9", out.StudyInstanceUID) == (True, "1.2.8")
        assert list(out.ImageType) == ["DERIVED", "PRIMARY", "AXIAL"]
    if series:
        assert len({pydicom.dcmread(c).SeriesInstanceUID for c in copies[0]}) == 1
        for i in (0, 2):                                  # unread: the stored pixels as they were
            assert pydicom.dcmread(copies[0][i]).PixelData == pydicom.dcmread(files[i]).PixelData
        assert open_volume(str(tmp_path / "a")).num_slices == 3      # one series, read as one


@pytest.mark.parametrize("series", [False, True])
def test_dicom_padding_stays_padding_and_out_of_the_minmax_range(tmp_path, series):
    """The reader leaves padding out of min-max and reads it black: the copy keeps every
    padding pixel as stored and scales the change by the tissue's range alone."""
    from tests.test_data_decode import _padded_ct
    second = _padded_ct() // 2                         # tissue 0..500, padding kept
    second[_padded_ct() == -2000] = -2000
    a = np.stack([_padded_ct(), second])
    if series:
        path = tmp_path / "series"
        path.mkdir()
        for i in range(2):
            write_dicom(str(path / f"IM{i}"), a[i], InstanceNumber=i + 1,
                        PixelPaddingValue=-2000)
        files = [str(path / f"IM{i}") for i in range(2)]
    else:
        path = tmp_path / "frames.dcm"
        write_dicom(str(path), a, PixelPaddingValue=-2000)
        files = [str(path)]
    x, change, back = roundtrip(path, tmp_path / "copy", t=2, amplitude=0.05, seed=3)
    inside = np.zeros(a.shape[1:], bool)
    inside[2:6, 2:6] = True
    # one stored step is 1/1000 of the tissue's range (-2000 not counted); the pixels that
    # hold the range's extremes (0 and 1000 HU, in the first slice) keep their values
    extreme = np.isin(x, (0.0, 1.0))[..., 0]
    moved = inside & ~extreme
    np.testing.assert_allclose(back[moved], (x + change)[moved], atol=0.51 / 1000)
    np.testing.assert_array_equal(back[extreme & inside], x[extreme & inside])
    assert (back[:, ~inside] == 0).all()
    copies = [str(tmp_path / "copy" / os.path.basename(f)) for f in files] if series \
        else [str(tmp_path / "copy")]
    stored = np.concatenate([pydicom.dcmread(c).pixel_array.reshape(-1, 8, 8) for c in copies])
    assert (stored[:, ~inside] == -2000).all()
    assert not (stored[:, inside] == -2000).any()


def test_no_pixel_is_moved_onto_the_padding_value(tmp_path):
    """A change that would take a pixel onto PixelPaddingValue would make it read as padding
    (black): that pixel keeps its stored value, every other pixel takes the change."""
    a = np.full((8, 8), 0, np.uint16)                 # padding 0 around values 1..16
    a[2:6, 2:6] = np.arange(1, 17).reshape(4, 4)
    path = str(tmp_path / "a.dcm")
    write_dicom(path, a, PixelPaddingValue=0, WindowCenter=50, WindowWidth=101)
    x = open_volume(path).read([0])
    change = np.zeros_like(x)
    change[0, 2:6, 2:6] = -0.02                        # -2 stored units: 1 and 2 would reach 0
    write_protected(path, [0], change, str(tmp_path / "o.dcm"))
    out = pydicom.dcmread(str(tmp_path / "o.dcm")).pixel_array
    expected = a.astype(np.int64)
    expected[2:6, 2:6] -= 2
    expected[expected <= 0] = a[expected <= 0]           # the padding and the two kept pixels
    np.testing.assert_array_equal(out, expected)
    assert (out[2:6, 2:6] > 0).all()


def _icon(pixels: np.ndarray):
    from pydicom.dataset import Dataset
    icon = Dataset()
    icon.Rows, icon.Columns = pixels.shape
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = pixels.astype(np.uint8).tobytes()
    return icon


def test_a_dicom_copy_carries_no_icon_of_the_unprotected_pixels(tmp_path):
    """An IconImageSequence is a thumbnail of the image as it was: kept, the protected copy
    would carry its original inside. Removed from every file of the copy (the unread
    slices' too) and from inside sequences."""
    from pydicom.dataset import Dataset
    rng = np.random.default_rng(5)
    a = rng.integers(0, 1000, (3, 16, 16)).astype(np.uint16)
    thumb = (a[:, ::4, ::4] // 4).astype(np.uint8)
    path = tmp_path / "series"
    path.mkdir()
    for i in range(3):
        referenced = Dataset()
        referenced.IconImageSequence = [_icon(thumb[i])]
        write_dicom(str(path / f"IM{i}"), a[i], InstanceNumber=i + 1, SeriesInstanceUID="1.2.9",
                    IconImageSequence=[_icon(thumb[i])], ReferencedImageSequence=[referenced])
    x = open_volume(str(path)).read([1])
    write_protected(str(path), [1], np.full_like(x, 0.01), str(tmp_path / "copy"))
    for i in range(3):
        out = pydicom.dcmread(str(tmp_path / "copy" / f"IM{i}"))
        assert "IconImageSequence" not in out
        assert "IconImageSequence" not in out.ReferencedImageSequence[0]
        with open(tmp_path / "copy" / f"IM{i}", "rb") as f:
            assert thumb[i].tobytes() not in f.read()
    assert "IconImageSequence" in pydicom.dcmread(str(path / "IM0"))   # the input untouched


@pytest.mark.parametrize("signed", [False, True])
def test_a_12_bit_dicom_stays_inside_its_bits(tmp_path, signed):
    """A change past what BitsStored holds is clipped there: written beyond it, the value
    is read with its high bits dropped (a bright pixel came back black)."""
    top = 2047 if signed else 4095
    a = np.full((8, 8), top - 100, np.int16 if signed else np.uint16)
    a[0, 0], a[1, 1] = top, top - 2000
    path = str(tmp_path / "b12.dcm")
    write_dicom(path, a, WindowCenter=top - 1000, WindowWidth=4000, BitsStored=12, HighBit=11)
    x = open_volume(path).read([0])
    change = np.zeros_like(x)
    change[0, 0, 0], change[0, 2, 2] = 0.01, 0.05         # +40 and +200 stored units
    write_protected(path, [0], change, str(tmp_path / "o.dcm"))
    out = pydicom.dcmread(str(tmp_path / "o.dcm")).pixel_array
    assert (out[0, 0], out[2, 2]) == (top, top)               # clipped, not wrapped
    back = open_volume(str(tmp_path / "o.dcm")).read([0])
    assert back[0, 0, 0, 0] == pytest.approx(x[0, 0, 0, 0]) and back[0, 2, 2, 0] >= x[0, 2, 2, 0]


@pytest.mark.parametrize("series", [False, True])
def test_frames_of_other_ranges_keep_their_own_extremes(tmp_path, series):
    """Two frames (a multi-frame file, or a series) read together share one min-max range;
    the frame that holds neither extreme keeps its own (the first writer set its darkest
    and brightest pixel to the other frame's: a change of 597 stored units for none)."""
    rng = np.random.default_rng(12)
    a = np.stack([rng.integers(100, 400, (8, 8)), rng.integers(0, 1000, (8, 8))]).astype(np.uint16)
    if series:
        path = tmp_path / "series"
        path.mkdir()
        for i in range(2):
            write_dicom(str(path / f"IM{i}"), a[i], InstanceNumber=i + 1,
                        ImagePositionPatient=[0, 0, float(i)],
                        ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    else:
        path = tmp_path / "frames.dcm"
        write_dicom(str(path), a)
    x = open_volume(str(path)).read([0, 1])
    write_protected(str(path), [0, 1], np.zeros_like(x), str(tmp_path / "same"))
    np.testing.assert_array_equal(open_volume(str(tmp_path / "same")).read([0, 1]), x)
    x, change, back = roundtrip(path, tmp_path / "changed", t=2)
    step = 1.0 / (int(a.max()) - int(a.min()))                 # one stored unit
    assert np.sort(np.abs(back - (x + change)).ravel())[-3] <= 0.5 * step + 1e-6


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("planar, photometric", [(1, "RGB"), (0, "YBR_FULL"), (1, "YBR_FULL")])
def test_colour_dicom_is_written_in_its_own_layout(tmp_path, frames, planar, photometric):
    """pixel_array interleaves colour planes and converts YBR to RGB: a file whose planes
    follow one another (PlanarConfiguration 1) gets its changed pixels written as planes,
    and a YBR file's copy holds the RGB it decodes to, saying so (both came out scrambled)."""
    rgb = np.random.default_rng(7).integers(0, 256, (frames, 8, 10, 3)).astype(np.uint8)
    path = str(tmp_path / "c.dcm")
    write_dicom(path, rgb, photometric, PlanarConfiguration=planar)
    volume = open_volume(path)
    x = volume.read(list(range(volume.num_slices)))
    change = np.clip(x + np.random.default_rng(8).uniform(-0.03, 0.03, x.shape), 0, 1) - x
    write_protected(path, list(range(volume.num_slices)), change.astype(np.float32),
                    str(tmp_path / "o.dcm"))
    back = open_volume(str(tmp_path / "o.dcm")).read(list(range(volume.num_slices)))
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6
    out = pydicom.dcmread(str(tmp_path / "o.dcm"))
    assert (out.PhotometricInterpretation, out.PlanarConfiguration) == ("RGB", planar)


@pytest.mark.parametrize("tags", [dict(photometric="MONOCHROME1"),
                                  dict(PresentationLUTShape="INVERSE"),
                                  dict(WindowCenter=1000, WindowWidth=800, VOILUTFunction="SIGMOID"),
                                  dict(WindowCenter=1000, WindowWidth=800,
                                       VOILUTFunction="LINEAR_EXACT")])
def test_an_inverted_or_curved_dicom_changes_as_asked(tmp_path, tags):
    a = np.full((8, 8), 1000, np.uint16)
    a[0, 0], a[7, 7] = 0, 4000
    path = str(tmp_path / "m.dcm")
    write_dicom(path, a, **tags)
    x = open_volume(path).read([0])
    change = np.zeros_like(x)
    change[0, 3, 3] = 0.05   # a curved window (SIGMOID) is followed to first order
    write_protected(path, [0], change, str(tmp_path / "o.dcm"))
    back = open_volume(str(tmp_path / "o.dcm")).read([0])
    assert abs(back[0, 3, 3, 0] - x[0, 3, 3, 0] - 0.05) < 1e-3


@pytest.mark.parametrize("name", ["SC_rgb_small_odd_big_endian.dcm", "MR_small_bigendian.dcm"])
def test_a_big_endian_dicom_is_copied_little_endian_with_the_change(tmp_path, name):
    """Explicit VR Big Endian (retired, still in archives): 8-bit pixels in an OW element
    are stored word-swapped, and a copy that kept the big-endian syntax but wrote the
    pixels in memory order read back scrambled (0.64 off). The copy is written Explicit
    VR Little Endian, every other element's value as it was."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian
    path = tmp_path / name
    path.write_bytes(open(get_testdata_file(name), "rb").read())
    x, change, back = roundtrip(path, tmp_path / "o.dcm")
    out, src = pydicom.dcmread(str(tmp_path / "o.dcm")), pydicom.dcmread(str(path))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    new_image = ("PixelData", "SOPInstanceUID", "SeriesInstanceUID", "ImageType",
                 "DerivationDescription", "SourceImageSequence")
    kept = [e.keyword for e in src if e.keyword not in new_image]
    assert [out[k].value for k in kept if k in out] == [src[k].value for k in kept]
    step = 1 / 255 if x.shape[-1] == 3 else 1.0 / (float(src.WindowWidth) - 1)
    inside = (x + change > 0) & (x + change < 1) & (x > 0) & (x < 1)
    assert np.abs(back - (x + change))[inside].max() <= 0.5 * step + 1e-6


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "liver_expb_1frame.dcm"])
def test_a_1_bit_dicom_stays_1_bit_packed(tmp_path, name):
    """A 1-bit image (a binary mask, a segmentation frame): the copy packs eight pixels a
    byte as the element says; written one a byte it could not be read back."""
    from pydicom.data import get_testdata_file
    path = tmp_path / name
    path.write_bytes(open(get_testdata_file(name), "rb").read())
    x, change, back = roundtrip(path, tmp_path / "o.dcm", amplitude=0.9)
    out = pydicom.dcmread(str(tmp_path / "o.dcm"))
    assert out.BitsAllocated == 1 and len(out.PixelData) == -(-out.Rows * out.Columns // 8)
    assert np.abs(back - (x + change)).max() <= 0.5 + 1e-6
    assert 0 < (back != x).mean() < 1        # pixels flipped where the change passed 0.5


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_a_compressed_dicom_is_copied_uncompressed_with_the_change(tmp_path, name):
    """JPEG-LS (grey MR) and JPEG Lossless (colour), from pydicom's bundled files: the copy
    holds the changed pixels uncompressed and says so."""
    from pydicom.data import get_testdata_file
    path = tmp_path / name
    path.write_bytes(open(get_testdata_file(name), "rb").read())
    x, change, back = roundtrip(path, tmp_path / "o.dcm")
    out = pydicom.dcmread(str(tmp_path / "o.dcm"))
    assert not out.file_meta.TransferSyntaxUID.is_compressed
    src = pydicom.dcmread(str(path))
    assert (out.Rows, out.Columns, out.PatientName) == (src.Rows, src.Columns, src.PatientName)
    if x.shape[-1] == 3:
        assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6
    else:   # windowed: pixels the window saturates cannot show a change
        inside = (x > 0) & (x < 1) & (x + change > 0) & (x + change < 1)
        assert inside.mean() > 0.5
        step = 1.0 / (float(src.WindowWidth) - 1)
        assert np.abs(back - (x + change))[inside].max() <= 0.5 * step + 1e-6


def test_an_enhanced_multiframe_dicom_changes_the_frames_read_through_their_own_rescale(
        tmp_path):
    """Frames stored out of anatomical order, each with its own slope: slice i's change
    lands in the frame that slice i reads, in that frame's stored units."""
    from tests.test_data_dicom_pixels import write_enhanced_dicom
    rng = np.random.default_rng(9)
    stored = rng.integers(200, 900, (3, 12, 12)).astype(np.uint16)
    path = str(tmp_path / "enhanced.dcm")
    write_enhanced_dicom(path, stored, depths=[20.0, 0.0, 10.0], slopes=[1, 2, 4],
                         intercepts=[0, -100, 50], window=(1500, 3001))
    volume = open_volume(path)
    x = volume.read([0, 1, 2])
    change = np.zeros_like(x)
    change[0] = 0.01                                          # slice 0: stored frame 1
    write_protected(path, [0, 1, 2], change, str(tmp_path / "o.dcm"))
    out = pydicom.dcmread(str(tmp_path / "o.dcm")).pixel_array.astype(int)
    np.testing.assert_array_equal(out[[0, 2]], stored[[0, 2]])
    np.testing.assert_array_equal(out[1] - stored[1], np.full((12, 12), 15))   # 30 / slope 2
    back = open_volume(str(tmp_path / "o.dcm")).read([0, 1, 2])
    np.testing.assert_allclose(back - x, change, atol=0.5 * 2 / 3000 + 1e-6)


def test_a_float_dicom_map_keeps_its_pixels_float(tmp_path):
    """A parametric map (an ADC map: FloatPixelData): the copy's change lands in the float
    element (written as PixelData, the copy could not be saved at all)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.30"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    adc = np.random.default_rng(6).uniform(0, 3e-3, (8, 8)).astype(np.float32)
    ds.FloatPixelData = adc.tobytes()
    path = str(tmp_path / "adc.dcm")
    ds.save_as(path, enforce_file_format=True)
    x, change, back = roundtrip(path, tmp_path / "o.dcm")
    out = pydicom.dcmread(str(tmp_path / "o.dcm"))
    assert "FloatPixelData" in out and "PixelData" not in out
    assert np.sort(np.abs(back - (x + change)).ravel())[-3] <= 1e-6  # the range's 2 pixels kept


@pytest.mark.parametrize("falling", [False, True])
def test_a_voi_lut_dicom_is_changed_through_the_tables_slope(tmp_path, falling):
    """An X-ray whose display curve is a VOI lookup table (a gamma of 4096 entries, rising
    or falling): each pixel's change goes back through the table's local slope, its sign
    included, so the copy reads as original + change to about one step of the table."""
    from tests.test_data_dicom_pixels import voi_lut_item
    table = np.rint(65535 * (np.arange(4096) / 4095.0) ** 0.5)
    table = table[::-1] if falling else table
    rng = np.random.default_rng(3)
    a = rng.integers(800, 3500, (16, 16)).astype(np.uint16)
    path = str(tmp_path / "lut.dcm")
    write_dicom(path, a, VOILUTSequence=[voi_lut_item(table, 0)])
    x, change, back = roundtrip(path, tmp_path / "o.dcm", amplitude=0.02)
    steepest = float(np.max(np.abs(np.diff(table))) / 65535)   # one stored unit, at most
    assert np.abs(back - (x + change)).max() <= steepest
    assert pydicom.dcmread(str(tmp_path / "o.dcm")).VOILUTSequence[0].LUTDescriptor[0] == 4096


@pytest.mark.parametrize("windowed", [True, False])
def test_a_modality_lut_dicom_is_changed_through_the_tables_slope(tmp_path, windowed):
    """Stored values through a modality lookup table (a square-root curve, in place of a
    rescale): each pixel's change goes back through the table's slope at its stored value,
    and through min-max the copy keeps its range, so it reads as original + change to
    about one stored step."""
    from tests.test_data_dicom_pixels import add_modality_lut
    table = np.rint(4000 * np.sqrt(np.arange(4096) / 4095.0))
    a = np.random.default_rng(5).integers(800, 3500, (16, 16)).astype(np.uint16)
    path = str(tmp_path / "mlut.dcm")
    write_dicom(path, a, **({"WindowCenter": 2800, "WindowWidth": 2000} if windowed else {}))
    add_modality_lut(path, table, first=0)
    x, change, back = roundtrip(path, tmp_path / "o.dcm", amplitude=0.02)
    inside = (x > 0) & (x < 1) & (x + change > 0) & (x + change < 1)
    assert inside.mean() > 0.5
    width = 1999.0 if windowed else float(np.ptp(table[a]))
    step = float(np.max(np.diff(table[800:3500]))) / width      # one stored unit, at most
    assert np.abs(back - (x + change))[inside].max() <= step + 1e-6
    assert np.abs(change[inside]).mean() > 5 * step                 # a change that shows
    assert pydicom.dcmread(str(tmp_path / "o.dcm")).ModalityLUTSequence[0].LUTDescriptor[0] == 4096


def test_a_palette_dicom_becomes_the_rgb_it_showed_with_the_change(tmp_path):
    from tests.test_data_dicom_pixels import write_palette_dicom
    rng = np.random.default_rng(5)
    indices = rng.integers(0, 256, (12, 10))
    red, green, blue = (rng.integers(0, 65536, 256) for _ in range(3))
    path = str(tmp_path / "p.dcm")
    write_palette_dicom(path, indices, red, green, blue)
    x, change, back = roundtrip(path, tmp_path / "o.dcm")
    out = pydicom.dcmread(str(tmp_path / "o.dcm"))
    assert (out.PhotometricInterpretation, out.SamplesPerPixel, out.BitsStored) == ("RGB", 3, 16)
    assert "RedPaletteColorLookupTableData" not in out and "PaletteColorLookupTableUID" not in out
    lo, hi = min(map(np.min, (red, green, blue))), max(map(np.max, (red, green, blue)))
    assert np.abs(back - (x + change)).max() <= 0.5 / (hi - lo) + 1e-6


def test_a_dark_8_bit_palette_becomes_8_bit_rgb_read_as_the_original(tmp_path):
    """The copy reads at the scale the original reads at (its palette's 8 bits): a copy
    stored as 16-bit RGB would be read by min-max, another picture than the original."""
    from tests.test_data_dicom_pixels import write_palette_dicom
    rng = np.random.default_rng(6)
    indices = rng.integers(0, 64, (12, 10))
    red, green, blue = (rng.integers(10, 128, 64) for _ in range(3))
    path = str(tmp_path / "p8.dcm")
    write_palette_dicom(path, indices, red, green, blue, bits=8)
    x, change, back = roundtrip(path, tmp_path / "o8.dcm")
    assert x.max() < 128 / 255 + 1e-6
    out = pydicom.dcmread(str(tmp_path / "o8.dcm"))
    assert (out.PhotometricInterpretation, out.BitsStored, out.pixel_array.dtype) == (
        "RGB", 8, np.uint8)
    assert np.abs(back - np.clip(x + change, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_a_12_bit_rgb_dicom_copy_stays_within_its_bits_and_reads_by_them(tmp_path):
    from tests.test_data_dicom_pixels import write_rgb12_dicom
    rgb = np.random.default_rng(7).integers(1500, 4096, (1, 6, 5, 3)).astype(np.uint16)
    path = str(tmp_path / "rgb12.dcm")
    write_rgb12_dicom(path, rgb)
    x, change, back = roundtrip(path, tmp_path / "o12.dcm", amplitude=0.1)
    assert x.max() > 0.99                       # 4095 / 4095: read by BitsStored
    assert pydicom.dcmread(str(tmp_path / "o12.dcm")).pixel_array.max() <= 4095
    assert np.abs(back - np.clip(x + change, 0, 1)).max() <= 0.5 / 4095 + 1e-6


def test_nifti_keeps_affine_and_header(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(-500, 1500, (12, 10, 6)).astype(np.int16)
    affine = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = b"phantom scan"
    path = str(tmp_path / "v.nii.gz")
    nib.save(img, path)
    x, change, back = roundtrip(path, tmp_path / "o.nii.gz", t=2)
    out = nib.load(str(tmp_path / "o.nii.gz"))
    np.testing.assert_array_equal(out.affine, img.affine)
    assert out.shape == data.shape and out.get_data_dtype() == np.int16
    assert out.header["descrip"].tobytes().rstrip(b"\0") == b"phantom scan"
    np.testing.assert_array_equal(out.header["pixdim"], nib.load(path).header["pixdim"])
    err = np.abs(back - (x + change))
    assert np.sort(err.ravel())[-3] <= 0.5 / 1999 + 1e-6   # all but the range-keeping pixels
    # slices the model does not read are unchanged
    read = set(slice_indices(open_volume(path).num_slices, 2).tolist())
    others = [i for i in range(open_volume(path).num_slices) if i not in read]
    np.testing.assert_array_equal(open_volume(str(tmp_path / "o.nii.gz")).read(others).shape,
                                  open_volume(path).read(others).shape)


def test_nifti_keeps_its_scaling_so_the_values_stay_physical(tmp_path):
    """A CT NIfTI stores HU as uint16 + scl_inter (-1024 here) and scl_slope: the copy keeps
    both, so its values are the input's HU plus the change, not the bare stored numbers
    (nibabel moves the loaded header's scaling to its data proxy; the first writer copied
    the header's empty fields and wrote every value 1024 HU too high)."""
    rng = np.random.default_rng(6)
    stored = rng.integers(0, 3000, (10, 8, 4)).astype(np.uint16)
    img = nib.Nifti1Image(stored, np.eye(4))
    img.header.set_slope_inter(0.5, -1024.0)
    path = str(tmp_path / "ct.nii.gz")
    nib.save(img, path)
    hu = np.asanyarray(nib.load(path).dataobj)
    x = open_volume(path).read([0, 1])
    write_protected(path, [0, 1], np.zeros_like(x), str(tmp_path / "o.nii.gz"))
    out = nib.load(str(tmp_path / "o.nii.gz"))
    assert (out.dataobj.slope, out.dataobj.inter) == (0.5, -1024.0)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), hu)   # no change: the same HU


def test_a_float_nifti_keeps_the_range_of_the_slices_read(tmp_path):
    """A float volume has its extremes once, here in slices the model does not read: the
    pixels that keep the reader's min-max range must be among the read ones, or every
    read pixel shifts (it came out 0.019 off for a change of 0.02)."""
    data = np.random.default_rng(9).normal(0, 100, (12, 10, 6)).astype(np.float32)
    data[0, 0, 0], data[1, 1, 5] = -1000.0, 1000.0      # the volume's extremes, unread
    path = str(tmp_path / "f.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    read = [2, 3]
    assert 0 not in read and 5 not in read
    x = open_volume(path).read(read)
    change = np.clip(x + np.random.default_rng(10).uniform(-0.02, 0.02, x.shape), 0, 1) - x
    write_protected(path, read, change.astype(np.float32), str(tmp_path / "o.nii.gz"))
    back = open_volume(str(tmp_path / "o.nii.gz")).read(read)
    assert np.sort(np.abs(back - (x + change)).ravel())[-3] <= 1e-5   # all but 2 pixels


@pytest.mark.parametrize("make, name", [(nib.Nifti1Pair, "p.img"), (nib.AnalyzeImage, "a.hdr")])
def test_a_nifti_or_analyze_pair_is_written_as_a_pair(tmp_path, make, name):
    """OASIS ships Analyze .hdr/.img pairs: the copy is a pair too (it was refused:
    the header file was left in the staging folder)."""
    data = np.random.default_rng(11).integers(0, 1000, (10, 8, 4)).astype(np.int16)
    path = tmp_path / "in" / name
    path.parent.mkdir()
    nib.save(make(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    x, change, back = roundtrip(path, tmp_path / "out" / name, t=2)
    stem = os.path.splitext(name)[0]
    # (nibabel reads an Analyze pair as SPM's and adds its .mat: the affine it read)
    assert {f"{stem}.hdr", f"{stem}.img"} <= set(os.listdir(tmp_path / "out"))
    assert np.sort(np.abs(back - (x + change)).ravel())[-3] <= 0.5 / 950


def test_slice_folder_changes_only_the_read_slices(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(6)
    for i in range(5):
        Image.fromarray(rng.integers(10, 240, (12, 12), dtype=np.uint8)).save(folder / f"s_{i}.png")
    x, change, back = roundtrip(folder, tmp_path / "out" / "series", t=2)
    assert sorted(os.listdir(tmp_path / "out" / "series")) == sorted(os.listdir(folder))
    read = set(slice_indices(5, 2).tolist())
    for i in range(5):
        same = digest(str(folder / f"s_{i}.png")) == digest(str(tmp_path / "out" / "series" / f"s_{i}.png"))
        assert same == (i not in read)
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("ext", ["webp", "jp2", "j2k", "pgm", "ppm"])
def test_a_folder_of_slices_in_any_format_a_copy_keeps_is_read_and_copied(tmp_path, ext):
    """One such file was read, a folder of them refused as holding 'no slice images'."""
    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(4):
        grey = rng.integers(10, 240, (12, 10), dtype=np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, -1) if ext == "ppm" else grey).save(
            folder / f"s_{i}.{ext}", **({"lossless": True} if ext == "webp" else {}))
    assert open_volume(str(folder)).num_slices == 4
    x, change, back = roundtrip(folder, tmp_path / "out" / "series", t=2)
    assert sorted(os.listdir(tmp_path / "out" / "series")) == sorted(os.listdir(folder))
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6


def test_refuses_to_write_over_its_input(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(WriteError, match="a.png: refusing to write the protected image over its input"):
        write_protected(str(tmp_path / "a.png"), [0], np.zeros((1, 4, 4, 1), np.float32),
                        str(tmp_path / "a.png"))


@pytest.mark.parametrize("kind", ["slices", "series"])
def test_a_folder_copy_holds_its_slices_only_and_names_what_it_left_out(tmp_path, kind):
    """A note beside the slices may name the patient and the protection does not reach
    it: the copy leaves it out, and ``files_left_out`` says which files, for protect's
    count and warning."""
    from mami_jax.apps.privacy.writers import files_left_out, left_out_warning
    folder = tmp_path / kind
    folder.mkdir()
    for i in range(3):
        if kind == "slices":
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(folder / f"s_{i}.png")
        else:
            write_dicom(str(folder / f"IM{i}"), np.full((6, 6), i, np.uint16), InstanceNumber=i + 1)
    (folder / "notes.txt").write_text("scanned by dr x\n")
    (folder / "Thumbs.db").write_bytes(bytes(range(256)))
    (folder / ".DS_Store").write_bytes(b"\0")
    roundtrip(folder, tmp_path / "out" / kind, t=2)
    slices = {"slices": ["s_0.png", "s_1.png", "s_2.png"], "series": ["IM0", "IM1", "IM2"]}[kind]
    assert sorted(os.listdir(tmp_path / "out" / kind)) == slices
    assert files_left_out(str(folder)) == ["Thumbs.db", "notes.txt"]
    assert files_left_out(str(tmp_path / "out" / kind)) == []
    records = [{"image_id": "b", "files_not_copied": 2}, {"image_id": "a", "files_not_copied": 1},
               {"image_id": "c", "files_not_copied": 0}, {"image_id": "from_an_older_log"}]
    assert left_out_warning(records[2:]) is None
    assert left_out_warning(records) == (
        "warning: 3 file(s) beside the slices of 2 folder(s) were not copied (notes, "
        "thumbnails: the protection does not reach them): a, b; protect_report.json counts "
        "them per image")


def test_a_camera_mpo_photo_is_copied_as_one_jpeg_at_the_best_quality(tmp_path):
    """Saved as "MPO" at PIL's default quality (75) the change was lost in the coding
    (mean error 0.16 for a change of 0.015), and the second picture, a preview of the
    unprotected photo, went along."""
    rng = np.random.default_rng(8)
    photo = Image.fromarray(rng.integers(20, 230, (32, 40, 3), dtype=np.uint8))
    photo.save(tmp_path / "photo.jpg", format="MPO", save_all=True,
               append_images=[photo.resize((10, 8))], quality=100, subsampling=0)
    x, change, back = roundtrip(tmp_path / "photo.jpg", tmp_path / "o.jpg")
    with Image.open(tmp_path / "o.jpg") as img:
        assert img.format == "JPEG" and getattr(img, "n_frames", 1) == 1
    assert np.abs(back - (x + change)).mean() < 0.005


@pytest.mark.parametrize("name", ["f.webp", "f.jp2"])
def test_webp_and_jpeg2000_copies_are_lossless(tmp_path, name):
    rgb = np.random.default_rng(9).integers(20, 230, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / name, **({"lossless": True} if "webp" in name else {}))
    x, change, back = roundtrip(tmp_path / name, tmp_path / f"o_{name}")
    assert np.abs(back - (x + change)).max() <= 0.5 / 255 + 1e-6


def test_a_format_a_copy_cannot_keep_is_refused_naming_it_before_anything_is_written(tmp_path):
    """A GIF holds at most 256 colours: its copy would keep the palette's rounding, not the
    change (0.19 off on a random image)."""
    from mami_jax.apps.privacy.copy_formats import check_writable
    rgb = np.random.default_rng(10).integers(20, 230, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "a.gif")
    Image.fromarray(rgb).save(tmp_path / "b.png")
    write_dicom(str(tmp_path / "c.dcm"), np.zeros((4, 4), np.uint16))
    check_writable([str(tmp_path / "b.png"), str(tmp_path / "c.dcm"), str(tmp_path)])
    with pytest.raises(ValueError, match=re.escape(
            f"cannot write protected copies in GIF: 1 image(s), e.g. {tmp_path / 'a.gif'}: "
            "the change would not survive that format; convert them to PNG")):
        check_writable([str(tmp_path / "b.png"), str(tmp_path / "a.gif")])
    x = open_volume(str(tmp_path / "a.gif")).read([0])
    with pytest.raises(WriteError, match=re.escape(f"{tmp_path / 'a.gif'}: cannot write a "
                                                   "protected copy in GIF")):
        write_protected(str(tmp_path / "a.gif"), [0], np.zeros_like(x), str(tmp_path / "o.gif"))
    assert not (tmp_path / "o.gif").exists()
