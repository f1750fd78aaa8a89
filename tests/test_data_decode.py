"""Decoding every supported format, and the slice sampling / preprocessing transforms.

Each test writes its own tiny file and checks values worked out by hand from the
rules in decode.py's docstring.
"""

import re
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mami_jax.data import transforms
from mami_jax.data.decode import DecodeError, decode, open_volume


def write_dicom(path, arr, photometric="MONOCHROME2", **tags):
    """A CT-class DICOM of ``arr``: (H, W) or (frames, H, W) grey, 16 bits; or, for a
    colour ``photometric`` (RGB, YBR_...), (frames, H, W, 3) uint8, its planes one after the
    other where ``PlanarConfiguration=1`` is among ``tags``."""
    colour = not photometric.startswith("MONOCHROME")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape[-3:-1] if colour else arr.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8 if colour else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
    if arr.ndim == (4 if colour else 3) and arr.shape[0] > 1:
        ds.NumberOfFrames = arr.shape[0]
    for k, v in tags.items():
        setattr(ds, k, v)
    if colour and tags.get("PlanarConfiguration"):
        arr = np.moveaxis(arr, -1, -3)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_png_8bit_grey_is_divided_by_255_and_replicated(tmp_path):
    a = np.array([[0, 51, 255], [102, 204, 17]], np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    x = decode(str(tmp_path / "a.png"))
    assert x.shape == (1, 2, 3, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, :, 0], a / 255.0, rtol=1e-6)
    assert np.array_equal(x[..., 0], x[..., 2])


def test_png_16bit_is_minmax_scaled(tmp_path):
    a = np.array([[1000, 1500], [3000, 5000]], np.uint16)  # a 12-bit range inside 16 bits
    Image.fromarray(a).save(tmp_path / "a.png")
    x = decode(str(tmp_path / "a.png"))[0, :, :, 0]
    np.testing.assert_allclose(x, [[0.0, 0.125], [0.5, 1.0]], atol=1e-6)


def test_a_16_bit_colour_png_reads_as_pillow_gives_it_8_bit_scaled_by_255(tmp_path):
    """Pillow has no 16-bit RGB mode: it hands such a PNG over as 8-bit RGB (each channel's
    high byte). The module's documented rule; a Pillow that one day reads it whole changes
    this number and fails here rather than changing every colour image's scale unsaid."""
    import struct
    import zlib
    values = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in values)

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path = tmp_path / "rgb48.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = open_volume(str(path)).read()
    assert out.shape == (1, 4, 5, 3)
    np.testing.assert_allclose(out[0], (values >> 8) / 255.0, atol=1e-6)


def test_rgb_png_rgba_and_jpeg(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 128, 0, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = decode(str(tmp_path / "a.png"))
    # laid on white as viewers show it: alpha 10 of 255 leaves mostly the white,
    # (c * 10 + 255 * 245) / 255 rounded
    np.testing.assert_allclose(x[0, 0, 0], [1.0, 250 / 255, 245 / 255], atol=1e-6)
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "a.jpg", quality=100)
    y = decode(str(tmp_path / "a.jpg"))
    assert y.shape == (1, 4, 5, 3)
    np.testing.assert_allclose(y[0].mean(axis=(0, 1)), [1.0, 128 / 255, 0.0], atol=3 / 255)


def test_dicom_rescale_then_window(tmp_path):
    p = str(tmp_path / "a.dcm")
    write_dicom(p, np.arange(12, dtype=np.uint16).reshape(3, 4), RescaleSlope=2, RescaleIntercept=-10,
                WindowCenter=5, WindowWidth=11)
    # Rescaled x = 2p - 10; window: 0 if x <= -0.5, 1 if x > 9.5, else (x - 4.5) / 10 + 0.5.
    expected = [[0, 0, 0, 0], [0, 0.05, 0.25, 0.45], [0.65, 0.85, 1.0, 1.0]]
    np.testing.assert_allclose(decode(p)[0, :, :, 0], expected, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID", "BOGUS"])
def test_dicom_voi_lut_function_shapes_the_window(tmp_path, function):
    """VOILUTFunction (PS3.3 C.11.2.1.3): LINEAR_EXACT without the -0.5 / -1 of LINEAR, and
    the SIGMOID some DX and mammography systems store; an undefined term reads as LINEAR."""
    p = str(tmp_path / "a.dcm")
    x = np.array([[0, 80], [100, 130]], np.uint16)
    write_dicom(p, x, WindowCenter=100, WindowWidth=40, VOILUTFunction=function)
    expected = {"LINEAR_EXACT": [[0.0, 0.0], [0.5, 1.0]],      # (x - 100) / 40 + 0.5, clipped
                "SIGMOID": 1 / (1 + np.exp(-4 * (x - 100.0) / 40)),
                "BOGUS": np.clip((x - 99.5) / 39 + 0.5, 0, 1)}[function]
    np.testing.assert_allclose(decode(p)[0, :, :, 0], expected, atol=1e-6)


def test_dicom_monochrome1_inverted_and_minmax_without_window(tmp_path):
    p = str(tmp_path / "a.dcm")
    write_dicom(p, np.array([[-100, 0], [100, 300]], np.int16), photometric="MONOCHROME1")
    # Min-max: [0, .25, .5, 1]; MONOCHROME1 -> 1 - x.
    np.testing.assert_allclose(decode(p)[0, :, :, 0], [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)


@pytest.mark.parametrize("photometric,shape,inverted", [
    ("MONOCHROME2", "INVERSE", True),     # a CR/DX or mammogram stored MONOCHROME2, shown inverted
    ("MONOCHROME1", "INVERSE", True),     # the DX rule for MONOCHROME1: inverted once, not twice
    ("MONOCHROME2", "IDENTITY", False),
    ("MONOCHROME1", "IDENTITY", True)])   # the photometric reading wins
def test_dicom_presentation_lut_shape_inverse_shows_bone_bright(tmp_path, photometric, shape,
                                                                inverted):
    p = str(tmp_path / "a.dcm")
    write_dicom(p, np.array([[-100, 0], [100, 300]], np.int16), photometric=photometric,
                PresentationLUTShape=shape, WindowCenter=100, WindowWidth=401)
    shown = np.clip((np.array([[-100, 0], [100, 300]]) - 99.5) / 400 + 0.5, 0, 1)   # the window
    np.testing.assert_allclose(decode(p)[0, :, :, 0], 1 - shown if inverted else shown,
                               atol=1e-6)


def _padded_ct() -> np.ndarray:
    """8x8 signed CT values: a -2000 padding frame around 0..1000 HU of tissue."""
    a = np.full((8, 8), -2000, np.int16)
    a[2:6, 2:6] = np.linspace(0, 1000, 16).reshape(4, 4).astype(np.int16)
    return a


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("padding", ["value", "range", "unsigned"])
def test_dicom_padding_is_left_out_of_minmax_and_reads_black(tmp_path, photometric, padding):
    """PixelPaddingValue marks pixels outside the scanned field: counted by min-max, the
    -2000 of a CT's padding would squeeze its tissue into the top third of the range."""
    a = _padded_ct()
    tags = {}
    if padding == "range":                       # padding is every value from -2000 to -1500
        a[0, :4] = -1700
        tags = dict(PixelPaddingValue=-2000, PixelPaddingRangeLimit=-1500)
    elif padding == "value":
        tags = dict(PixelPaddingValue=-2000)
    path = str(tmp_path / "a.dcm")
    write_dicom(path, a, photometric=photometric, **tags)
    if padding == "unsigned":                    # signed pixels, the value written as US
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "US", 65536 - 2000)
        ds.save_as(path)
    x = decode(path)[0, ..., 0]
    tissue = (a[2:6, 2:6].astype(np.float32) - 0.0) / 1000.0
    if photometric == "MONOCHROME1":
        tissue = 1.0 - tissue
    np.testing.assert_allclose(x[2:6, 2:6], tissue, atol=1e-6)
    outside = np.ones(a.shape, bool)
    outside[2:6, 2:6] = False
    assert (x[outside] == 0.0).all()


def test_dicom_multiframe_reads_frames_as_slices(tmp_path):
    p = str(tmp_path / "a.dcm")
    frames = np.stack([np.full((2, 2), v, np.uint16) for v in (0, 10, 20)])
    write_dicom(p, frames)
    v = open_volume(p)
    assert v.num_slices == 3
    x = v.read([2, 0])
    np.testing.assert_allclose(x[:, 0, 0, 0], [1.0, 0.0])  # min-max over the frames read


def test_dicom_series_sorted_by_position_then_instance_number(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    # File names and instance numbers disagree with the geometry; geometry wins.
    zs = [30.0, 10.0, 20.0]
    for i, z in enumerate(zs):
        write_dicom(str(folder / f"IM{i}"), np.full((2, 2), int(z), np.uint16),
                    InstanceNumber=i + 1, ImagePositionPatient=[0, 0, z],
                    ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    x = decode(str(folder))
    np.testing.assert_allclose(x[:, 0, 0, 0], [0.0, 0.5, 1.0])  # z = 10, 20, 30
    folder2 = tmp_path / "series2"
    folder2.mkdir()
    for i, n in enumerate([3, 1, 2]):
        write_dicom(str(folder2 / f"{i}.dcm"), np.full((2, 2), n, np.uint16), InstanceNumber=n)
    np.testing.assert_allclose(decode(str(folder2))[:, 0, 0, 0], [0.0, 0.5, 1.0])


def test_slice_folder_natural_order(tmp_path):
    folder = tmp_path / "scan"
    folder.mkdir()
    for n in (1, 2, 10):
        Image.fromarray(np.full((3, 3), n * 20, np.uint8)).save(folder / f"slice_{n}.png")
    (folder / "notes.txt").write_text("not a slice")
    v = open_volume(str(folder))
    assert v.num_slices == 3
    np.testing.assert_allclose(v.read()[:, 0, 0, 0], [20 / 255, 40 / 255, 200 / 255], rtol=1e-6)


def test_a_series_with_an_odd_slice_names_it(tmp_path):
    """The message listed the sizes seen; the user had to open every file to find the
    localizer saved among the slices. Sizes are compared from the headers when the folder
    is opened, whichever slices a read draws; a pixel type is compared in the slices read."""
    folder = tmp_path / "scan"
    folder.mkdir()
    for n in range(1, 6):
        Image.fromarray(np.full((4, 6), n, np.uint8)).save(folder / f"{n}.png")
    Image.fromarray(np.full((2, 6), 9, np.uint8)).save(folder / "3.png")
    Image.fromarray(np.full((2, 6), 9, np.uint8)).save(folder / "4.png")
    Image.fromarray(np.full((4, 6, 3), 9, np.uint8)).save(folder / "5.png")
    with pytest.raises(DecodeError) as e:
        open_volume(str(folder))
    assert str(e.value) == (
        f"{folder}: 2 of the 5 slices differ from the others (4x6): 3.png (2x6), 4.png "
        "(2x6); a series' slices share one size and pixel type: move the odd ones (a "
        "localizer, a thumbnail) out of the folder")
    for n in (3, 4):
        Image.fromarray(np.full((4, 6), n, np.uint8)).save(folder / f"{n}.png")
    with pytest.raises(DecodeError) as e:
        open_volume(str(folder)).read()
    assert str(e.value) == (
        f"{folder}: 1 of the 5 slices read differs from the others (4x6 uint8): 5.png (4x6 "
        "RGB uint8); a series' slices share one size and pixel type: move "
        "the odd ones (a localizer, a thumbnail) out of the folder")
    assert open_volume(str(folder)).read([0, 1, 3]).shape == (3, 4, 6, 1)
    series = tmp_path / "dicom"
    series.mkdir()
    for n in range(3):
        write_dicom(series / f"{n}.dcm", np.zeros((8, 4) if n == 1 else (4, 4), np.uint16),
                    InstanceNumber=n + 1)
    with pytest.raises(DecodeError, match=re.escape(
            f"{series}: 1 of the 3 slices differs from the others (4x4): 1.dcm (8x4)")):
        open_volume(str(series))


def test_a_study_folder_names_a_series_folder_inside_it(tmp_path):
    """A row naming a study exported as STUDY/SERIES/files (or a DICOMDIR's folder) said
    only that the folder held no slices."""
    study = tmp_path / "study"
    for series in ("s2", "s10"):
        (study / series).mkdir(parents=True)
        write_dicom(str(study / series / "IM1"), np.zeros((4, 4), np.uint16), InstanceNumber=1)
    with pytest.raises(DecodeError) as e:
        open_volume(str(study))
    assert str(e.value) == (f"{study}: folder holds no slice images or DICOM files; it holds 2 "
                            "folder(s) (s2, s10): a manifest row names the folder of one "
                            f"series, such as {study / 's2'}")
    (study / "DICOMDIR").write_bytes(b"")
    with pytest.raises(DecodeError, match=re.escape(
            "(s2, s10) and a DICOMDIR (the index of the series in them): a manifest row names")):
        open_volume(str(study)).read()
    assert open_volume(str(study / "s10")).num_slices == 1


def canonical_reference(vol):
    """Expected decode of a volume stored in RAS+ with identity affine."""
    mm = (vol - vol.min()) / (vol.max() - vol.min())
    return np.stack([mm[:, :, k].T[::-1, ::-1] for k in range(vol.shape[2])])


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_axial_slices_in_radiological_display(tmp_path, ext):
    vol = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    p = str(tmp_path / f"v{ext}")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    x = decode(p)
    assert x.shape == (3, 5, 4, 3)
    np.testing.assert_allclose(x[..., 0], canonical_reference(vol), atol=1e-6)
    # Row 0 is the most anterior (largest y), column 0 the patient's right (largest x).
    assert x[1, 0, 0, 0] == pytest.approx((vol[3, 4, 1] - vol.min()) / (vol.max() - vol.min()), abs=1e-6)


def test_a_4d_nifti_is_refused_saying_how_to_split_it_and_a_trailing_1_is_not(tmp_path):
    rng = np.random.default_rng(0)
    series = str(tmp_path / "bold.nii.gz")
    nib.save(nib.Nifti1Image(rng.random((4, 4, 3, 5)).astype(np.float32), np.eye(4)), series)
    with pytest.raises(DecodeError, match=re.escape(
            f"{series}: cannot read NIfTI volume: ValueError: 4-D volume of shape (4, 4, 3, 5), "
            "5 3-D volumes (the time points, echoes or diffusion directions of one series); "
            "a manifest row is one 3-D volume: split it")):
        open_volume(series).read()
    one = str(tmp_path / "one.nii.gz")
    volume = rng.random((4, 4, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume[..., None], np.eye(4)), one)
    np.testing.assert_allclose(decode(one)[..., 0], canonical_reference(volume), atol=1e-6)


def test_nifti_other_orientation_gives_the_same_slices(tmp_path):
    vol = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    # Store as (z, x flipped, y): voxel (k, i', j) = vol[3 - i', j, k].
    stored = np.transpose(vol[::-1], (2, 0, 1)).copy()
    affine = np.zeros((4, 4))
    affine[0, 1] = -1.0  # stored axis 1 runs right-to-left
    affine[1, 2] = 1.0  # stored axis 2 is y
    affine[2, 0] = 1.0  # stored axis 0 is z
    affine[0, 3], affine[3, 3] = 3.0, 1.0
    p = str(tmp_path / "o.nii")
    nib.save(nib.Nifti1Image(stored, affine), p)
    np.testing.assert_allclose(decode(p)[..., 0], canonical_reference(vol), atol=1e-6)
    # Reading selected slices gives the same slices (each subset min-max scaled).
    sub = open_volume(p).read([2, 0])[..., 0]
    ref = vol[:, :, [2, 0]]
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(sub, np.stack([ref[:, :, k].T[::-1, ::-1] for k in range(2)]), atol=1e-6)


def test_analyze_pair_as_shipped_by_oasis(tmp_path):
    vol = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.save(nib.Nifti1Pair(vol, np.eye(4)), str(tmp_path / "mpr-1.nifti.img"))
    x = decode(str(tmp_path / "mpr-1.nifti.img"))
    assert x.shape == (4, 3, 2, 3)
    assert x.min() == 0.0 and x.max() == 1.0


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DecodeError, match="broken.png"):
        decode(str(bad))
    with pytest.raises(DecodeError, match="absent.jpg: no such file"):
        decode(str(tmp_path / "absent.jpg"))
    badnii = tmp_path / "v.nii.gz"
    badnii.write_bytes(b"garbage")
    with pytest.raises(DecodeError, match="v.nii.gz"):
        open_volume(str(badnii)).read()
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "IM0").write_bytes(b"garbage")
    with pytest.raises(DecodeError, match="IM0"):
        decode(str(folder))


@pytest.mark.parametrize("name", ["stack.tif", "cine.png", "cine.gif"])
def test_a_file_of_several_pages_is_refused_not_read_as_its_first(tmp_path, name):
    """PIL shows a multi-page TIFF's or an animation's first page only: read, the other
    pages would vanish without a word (in a protected copy too)."""
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / name
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(DecodeError, match=re.escape(str(path)) + r": \w+ file holds 3 pages; "
                       r"only single-page image files are read"):
        decode(str(path))
    folder = tmp_path / "slices"
    folder.mkdir()
    pages[0].save(folder / "0001.png")
    pages[0].save(folder / "0002.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DecodeError, match="0002.* holds 3 pages"):
        decode(str(folder))
    pages[0].save(tmp_path / "one.tif")             # a TIFF of one page reads as before
    np.testing.assert_allclose(decode(str(tmp_path / "one.tif"))[0, ..., 0] * 255,
                               np.asarray(pages[0], np.float32), atol=1e-3)


def test_an_mpo_jpeg_is_read_as_its_main_picture(tmp_path):
    """A camera's MPO JPEG carries a preview as its second picture: not a second page."""
    main = Image.fromarray(np.full((32, 32, 3), (200, 40, 90), np.uint8))
    preview = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    main.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[preview],
              quality=100, subsampling=0)
    with Image.open(tmp_path / "photo.jpg") as img:
        assert img.format == "MPO" and img.n_frames == 2
    x = decode(str(tmp_path / "photo.jpg"))
    assert x.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(x[0].mean(axis=(0, 1)) * 255, (200, 40, 90), atol=2)


@pytest.mark.parametrize("tag", ["WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "-inf"])
def test_dicom_non_finite_rescale_or_window_tag_is_a_decode_error(tmp_path, tag, value):
    # Windowing with a NaN centre used to give an all-NaN image that no check caught.
    p = str(tmp_path / "scan.dcm")
    tags = dict(WindowCenter=5, WindowWidth=11, RescaleSlope=1, RescaleIntercept=0)
    tags[tag] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns that -inf is no valid DS
        write_dicom(p, np.arange(12, dtype=np.uint16).reshape(3, 4), **tags)
    with pytest.raises(DecodeError, match=rf"^{re.escape(p)}: DICOM tag {tag} is .*not a finite number"):
        decode(p)


def test_dicom_series_with_a_non_finite_tag_names_the_slice_file(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(3):
        write_dicom(str(folder / f"IM{i}"), np.full((2, 2), i, np.uint16), InstanceNumber=i + 1,
                    WindowCenter=1, WindowWidth=4, RescaleSlope=float("nan") if i == 2 else 1)
    with pytest.raises(DecodeError, match=r"IM2: DICOM tag RescaleSlope is 'nan'"):
        decode(str(folder))
    for i in range(3):  # the window is taken from the first slice: its file is named
        write_dicom(str(folder / f"IM{i}"), np.full((2, 2), i, np.uint16), InstanceNumber=i + 1,
                    WindowCenter=float("nan") if i == 0 else 1, WindowWidth=4)
    with pytest.raises(DecodeError, match=r"IM0: DICOM tag WindowCenter is 'nan'"):
        decode(str(folder))


def test_every_reader_output_is_checked_for_non_finite_values(tmp_path, monkeypatch):
    # The final check in Volume.read, whatever reader produced the NaN.
    from mami_jax.data import decode as decode_module
    from mami_jax.data import dicom_pixels

    png = str(tmp_path / "a.png")
    Image.fromarray(np.array([[1000, 1500], [3000, 5000]], np.uint16)).save(png)
    nii = str(tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4)), nii)
    dcm = str(tmp_path / "a.dcm")
    write_dicom(dcm, np.arange(4, dtype=np.uint16).reshape(2, 2))

    def leaky_minmax(arr, ignore=None):
        out = np.zeros(arr.shape, np.float32)
        out.flat[0] = np.nan
        out.flat[-1] = np.inf
        return out
    monkeypatch.setattr(decode_module, "minmax", leaky_minmax)
    monkeypatch.setattr(decode_module, "scale_integer_or_float", leaky_minmax)
    monkeypatch.setattr(dicom_pixels, "minmax", leaky_minmax)
    for path, kind in ((png, "image file"), (nii, "NIfTI volume"), (dcm, "DICOM file")):
        with pytest.raises(DecodeError, match=rf"^{re.escape(path)}: decoded {kind} holds 2 NaN or infinite"):
            open_volume(path).read()


def test_float_image_with_nan_pixels_is_a_decode_error(tmp_path):
    p = str(tmp_path / "f.nii")
    vol = np.ones((2, 2, 2), np.float32)
    vol[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    with pytest.raises(DecodeError, match=rf"^{re.escape(p)}: .*NaN or infinity"):
        decode(p)


# --------------------------------------------------------------------------- transforms


def test_slice_indices_even_and_jittered():
    assert transforms.slice_indices(16, 4).tolist() == [2, 6, 10, 14]  # segment centres
    assert transforms.slice_indices(1, 3).tolist() == [0, 0, 0]
    assert transforms.slice_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = transforms.slice_indices(16, 4, rng)
        assert all(4 * i <= v < 4 * (i + 1) for i, v in enumerate(idx))  # one per segment
    a = transforms.slice_indices(100, 8, np.random.default_rng(5))
    b = transforms.slice_indices(100, 8, np.random.default_rng(5))
    assert a.tolist() == b.tolist()


def test_eval_transform_equals_resize_then_centre_crop():
    # A horizontal ramp 0..1 over 512 x 320: short side 320 -> 256 (scale 0.8), then the
    # centre 224 x 224 covers source columns [116, 396) of 512.
    h, w = 320, 512
    ramp = np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))[None, :, :, None]
    out = transforms.eval_transform(ramp, 256, 224)
    assert out.shape == (1, 224, 224, 3)
    grey = out[0, :, :, 0] * transforms.IMAGENET_STD[0] + transforms.IMAGENET_MEAN[0]
    src_cols = 116 + (np.arange(224) + 0.5) * (280 / 224) - 0.5
    np.testing.assert_allclose(grey[100], src_cols / (w - 1), atol=2e-3)
    # Channels normalised with their own mean/std.
    for c in range(3):
        np.testing.assert_allclose(out[0, :, :, c] * transforms.IMAGENET_STD[c] + transforms.IMAGENET_MEAN[c],
                                   grey, atol=1e-5)


def test_train_transform_deterministic_and_flip_policy():
    cfg = transforms.AugmentConfig(image_size=16, resize_size=16, erase_prob=0.0, brightness=0.0,
                                   contrast=0.0)
    ramp = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))[None, :, :, None]
    flips = []
    for seed in range(12):
        a = transforms.train_transform(ramp, cfg, np.random.default_rng(seed), allow_flip=True)
        b = transforms.train_transform(ramp, cfg, np.random.default_rng(seed), allow_flip=True)
        assert np.array_equal(a, b)
        flips.append(a[0, 0, 0, 0] > a[0, 0, -1, 0])
        never = transforms.train_transform(ramp, cfg, np.random.default_rng(seed), allow_flip=False)
        assert never[0, 0, 0, 0] < never[0, 0, -1, 0]  # ramp keeps its direction
    assert 0 < sum(flips) < 12


def test_rotation_policy_gives_all_eight_symmetries_only_when_allowed():
    cfg = transforms.AugmentConfig(image_size=4, resize_size=4, erase_prob=0.0, brightness=0.0, contrast=0.0)
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) / 15.0
    base = transforms.train_transform(img, cfg, np.random.default_rng(0), allow_flip=False)[0, :, :, 0]
    symmetries = {np.rot90(m, k).tobytes() for m in (base, base[:, ::-1]) for k in range(4)}
    seen = set()
    for seed in range(64):
        out = transforms.train_transform(img, cfg, np.random.default_rng(seed), allow_flip=True,
                                         allow_rotate=True)[0, :, :, 0]
        seen.add(out.tobytes())
        fixed = transforms.train_transform(img, cfg, np.random.default_rng(seed), allow_flip=False,
                                           allow_rotate=False)[0, :, :, 0]
        np.testing.assert_array_equal(fixed, base)
    assert seen == symmetries and len(seen) == 8


def test_random_erase_and_intensity_jitter():
    x = np.ones((2, 20, 20, 3), np.float32)
    erased = transforms.random_erase(x, np.random.default_rng(0), prob=1.0, area=(0.1, 0.1), ratio=(1.0, 1.0))
    zero = erased == 0
    assert zero.sum() == 2 * 6 * 6 * 3  # round(sqrt(40)) = 6; same box on both slices
    assert np.array_equal(zero[0], zero[1])
    y = transforms.intensity_jitter(np.array([0.0, 0.5, 1.0], np.float32), np.random.default_rng(0), 0.0, 0.5)
    c = np.random.default_rng(0).uniform(0.5, 1.5)
    np.testing.assert_allclose(y, np.clip([0.5 - 0.5 * c, 0.5, 0.5 + 0.5 * c], 0, 1), atol=1e-6)


def test_random_resized_crop_box_within_bounds_and_area():
    rng = np.random.default_rng(0)
    for _ in range(50):
        l, t, r, b = transforms.random_resized_crop_box(100, 60, rng, (0.3, 0.6), (0.75, 1.333))
        assert 0 <= l < r <= 60 and 0 <= t < b <= 100
        assert 0.3 * 6000 - 1e-6 <= (r - l) * (b - t) <= 0.6 * 6000 + 1e-6


def test_shift_crop_box_is_the_eval_view_moved_by_half_the_margin():
    # 100 x 60 image, resize 36 / crop 32: 60/36 source px per resized px, side 32 * 60/36,
    # centred at left 3.33, top 23.33; shifts of up to +-2 resized px = +-3.33 source px.
    side = 32 * 60 / 36
    lefts, tops = [], []
    rng = np.random.default_rng(0)
    for _ in range(400):
        l, t, r, b = transforms.shift_crop_box(100, 60, rng, 36, 32)
        np.testing.assert_allclose([r - l, b - t], [side, side], rtol=1e-9)
        lefts.append(l)
        tops.append(t)
    assert 0.0 <= min(lefts) < 0.3 and 6.4 < max(lefts) <= 60 - side + 1e-9
    assert 20.0 <= min(tops) < 20.3 and 26.4 < max(tops) <= 23.3334 + 3.3334
    # no margin: exactly the evaluation box, so the training view is the evaluation view
    assert transforms.shift_crop_box(100, 60, rng, 32, 32) == transforms.center_crop_box(100, 60, 32, 32)


def test_shift_train_transform_without_margin_equals_eval_transform():
    vol = np.random.default_rng(2).random((2, 40, 30, 1)).astype(np.float32)
    cfg = transforms.AugmentConfig(image_size=16, resize_size=16, erase_prob=0.0, brightness=0.0, contrast=0.0)
    tr = transforms.train_transform(vol, cfg, np.random.default_rng(0), allow_flip=False)
    np.testing.assert_allclose(tr, transforms.eval_transform(vol, 16, 16), atol=1e-6)


def test_bad_crop_mode_names_the_key():
    with pytest.raises(ValueError, match="data.crop_mode"):
        transforms.AugmentConfig(crop_mode="zoom")
    with pytest.raises(ValueError, match="image_size 64 > resize_size 32"):
        transforms.AugmentConfig(image_size=64, resize_size=32)


@pytest.mark.parametrize("key, value, message", [
    ("crop_ratio", (2.0,), "data.crop_ratio=(2.0,): expected (low, high) with 0 < low <= high"),
    ("crop_scale", (0.9, 0.1),
     "data.crop_scale=(0.9, 0.1): expected (low, high) with 0 < low <= high <= 1"),
    ("erase_area", (0.0, 0.2),
     "data.erase_area=(0.0, 0.2): expected (low, high) with 0 < low <= high <= 1"),
    ("erase_ratio", (1.0, float("nan")),
     "data.erase_ratio=(1.0, nan): expected (low, high) with 0 < low <= high"),
    ("erase_prob", 7.0, "data.erase_prob=7.0: expected a number in [0, 1]"),
    ("brightness", -1.0, "data.brightness=-1.0: expected a number >= 0"),
    ("contrast", 2.0, "data.contrast=2.0: expected a number in [0, 1] (the contrast factor is "
                      "drawn from 1 +- it)"),
])
def test_an_augmentation_range_out_of_bounds_names_the_key(key, value, message):
    """absl read --config.data.crop_ratio=2 as (2,), which failed only inside a training
    worker; a reversed or negative range drew nonsense without a word."""
    with pytest.raises(ValueError) as e:
        transforms.AugmentConfig(**{key: value})
    assert str(e.value) == message


def test_large_jpeg_decodes_at_reduced_scale_only_when_allowed(tmp_path):
    yy, xx = np.mgrid[0:800, 0:1000]
    img = ((np.sin(yy / 40) + np.cos(xx / 60)) * 60 + 128).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "a.png")
    assert open_volume(str(tmp_path / "a.jpg")).read().shape == (1, 800, 1000, 1)
    # Short side >= 200 allows 1/4 scale (800 / 4 = 200); 1/8 would be 100 < 200.
    small = open_volume(str(tmp_path / "a.jpg"), min_short_side=200).read()
    assert small.shape == (1, 200, 250, 1)
    np.testing.assert_allclose(small[0, :, :, 0], img[2::4, 2::4] / 255.0, atol=0.08)  # same picture
    assert open_volume(str(tmp_path / "a.jpg"), min_short_side=300).read().shape == (1, 400, 500, 1)
    assert open_volume(str(tmp_path / "a.png"), min_short_side=200).read().shape == (1, 800, 1000, 1)
    # a camera's MPO JPEG (a preview as second picture) is a JPEG too
    Image.fromarray(img).save(tmp_path / "m.jpg", format="MPO", save_all=True,
                              append_images=[Image.fromarray(img[::8, ::8])], quality=95)
    assert open_volume(str(tmp_path / "m.jpg"), min_short_side=200).read().shape == (1, 200, 250, 1)


def test_a_modality_of_larger_views_decodes_jpegs_no_smaller_than_they_need(tmp_path):
    """data.jpeg_min_short_side (448) was one floor for every modality: a pathology block at
    image_size 448 / resize_size 512 read a 1800 px JPEG decoded at 450 px and upsampled
    (view 0.35 off the full-resolution one in normalised units, mean 0.080). Each
    modality's floor is now raised to its resize_size and twice its crop: 896 here, 1/2
    scale, 0.074 off (mean 0.021)."""
    from mami_jax.data import example_reader
    from mami_jax.data.config import default_data_config
    from mami_jax.data.manifest import ManifestRow
    yy, xx = np.mgrid[0:1800, 0:1800]
    img = (127 + 60 * np.sin(xx / 2.3) * np.cos(yy / 3.1) + 40 * np.sin(xx / 9.0)).clip(
        0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "tile.jpg", quality=95)
    cfg = default_data_config()
    cfg.modalities.pathology.image_size, cfg.modalities.pathology.resize_size = 448, 512
    row = ManifestRow("d:p1", "p", "s", "0", "pathology", "d", "", str(tmp_path / "tile.jpg"),
                      "test")
    reader = example_reader.ExampleReader([row], cfg)
    assert reader._open(row).read().shape == (1, 900, 900, 1)       # 1/2 scale, >= 896
    cfg.jpeg_min_short_side = 0
    full = example_reader.ExampleReader([row], cfg).read(0, 1, None)
    difference = np.abs(reader.read(0, 1, None) - full)
    assert difference.max() < 0.1 and difference.mean() < 0.03
    settings = reader.settings
    assert example_reader.jpeg_short_side_floor(448, settings["pathology"]) == 896
    assert example_reader.jpeg_short_side_floor(448, settings["xray"]) == 448   # 256 / 224
    assert example_reader.jpeg_short_side_floor(None, settings["pathology"]) is None


@pytest.mark.parametrize("key, value", [("flip", None), ("rotate", None), ("slices", 0)])
def test_reader_names_a_bad_modality_setting(tmp_path, key, value):
    from mami_jax.data import example_reader
    from mami_jax.data.config import default_data_config
    from mami_jax.data.manifest import ManifestRow
    cfg = default_data_config()
    cfg.modalities.pathology[key] = value
    row = ManifestRow("d:p1", "p", "s", "0", "pathology", "d", "", str(tmp_path / "x.png"), "train")
    with pytest.raises(ValueError, match=f"data.modalities.pathology.{key}="):
        example_reader.ExampleReader([row], cfg)


def test_an_image_past_pils_bomb_guard_says_to_cut_it_into_tiles(tmp_path, monkeypatch):
    """PIL refuses more than twice MAX_IMAGE_PIXELS (179 M pixels by default: a 14k x 14k
    pathology region); the message says what to do, not only that it could be an attack."""
    from PIL import Image as PILImage
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "region.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DecodeError, match=re.escape(
            f"{tmp_path / 'region.png'}: Image size (256 pixels) exceeds limit of 200 pixels, "
            "PIL's guard against decompression bombs: a whole slide or a large region is read "
            "as tiles, one manifest row each")):
        open_volume(str(tmp_path / "region.png")).read()


def _png(path, samples: np.ndarray, colour_type: int, bits: int):
    """A PNG written byte by byte (unfiltered rows): Pillow cannot write 16-bit grey+alpha."""
    import struct
    import zlib
    height = samples.shape[0]
    raw = samples.astype(">u2" if bits == 16 else np.uint8).tobytes()
    row = len(raw) // height

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = b"".join(b"\0" + raw[i * row:(i + 1) * row] for i in range(height))
    header = struct.pack(">IIBBBBB", samples.shape[1], height, bits, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                + chunk(b"IEND", b""))


def test_a_16_bit_grey_png_with_alpha_is_refused_not_read_by_its_upper_byte(tmp_path):
    """Pillow reads a 16-bit grey+alpha PNG by its upper 8 bits: a 12-bit radiograph read
    in [0.004, 0.059] with 15 grey levels. An 8-bit one is read as before."""
    grey = np.random.default_rng(0).integers(300, 4096, (10, 12)).astype(np.uint16)
    _png(tmp_path / "la16.png", np.stack([grey, np.full_like(grey, 65535)], -1), 4, 16)
    with pytest.raises(DecodeError, match=re.escape(
            f"{tmp_path / 'la16.png'}: a 16-bit grey PNG with an alpha channel, of which Pillow "
            "reads only the upper 8 bits")):
        open_volume(str(tmp_path / "la16.png")).read()
    small = (grey // 16).astype(np.uint8)
    _png(tmp_path / "la8.png", np.stack([small, np.full_like(small, 255)], -1), 4, 8)
    np.testing.assert_allclose(open_volume(str(tmp_path / "la8.png")).read()[0, ..., 0],
                               small / 255.0, atol=1e-6)
