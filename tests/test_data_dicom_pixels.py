"""mami_jax.data.dicom_pixels: the DICOM files hospital archives hold read as the model
should see them: compressed transfer syntaxes, files without a meta header, VOI lookup
tables, palette colour, and one clear error for what cannot be read.

Compressed files come from pydicom's own bundled test files (installed with pydicom),
each compared with the same image stored uncompressed."""

import importlib.util
import os
import re

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from mami_jax.data.decode import DecodeError, decode, open_volume
from tests.test_data_decode import write_dicom


def bundled(name):
    return get_testdata_file(name)


@pytest.mark.parametrize("compressed, plain", [
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),      # JPEG-LS lossless (gdcm)
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),          # JPEG 2000 lossless
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),             # JPEG Lossless, process 14 (gdcm)
])
def test_compressed_dicom_reads_as_its_uncompressed_twin(compressed, plain):
    a, b = decode(bundled(compressed)), decode(bundled(plain))
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_a_syntax_no_installed_decoder_reads_is_one_line_naming_file_and_remedy():
    path = bundled("JPGExtended.dcm")          # 12-bit JPEG: only pylibjpeg-libjpeg reads it
    if importlib.util.find_spec("libjpeg") is not None:
        assert decode(path).shape == (1, 1024, 256, 3)
        return
    with pytest.raises(DecodeError) as err:
        decode(path)
    message = str(err.value)
    assert message.startswith(f"{path}: no installed decoder reads its pixel data, "
                              "compressed as JPEG Extended")
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message and "gdcm:" in message
    assert "\n" not in message


def test_a_syntax_without_a_decoder_says_what_to_install_and_a_damaged_file_says_so(tmp_path):
    """High-Throughput JPEG 2000 (only pylibjpeg-openjpeg decodes it) against a JPEG 2000
    stream whose header is broken (pydicom's bundled file): the first asks for a package,
    the second for another copy of the file, and neither for the 12-bit JPEG remedy."""
    ds = pydicom.dcmread(bundled("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
    htj2k = str(tmp_path / "htj2k.dcm")
    ds.save_as(htj2k)
    if importlib.util.find_spec("openjpeg") is None:
        with pytest.raises(DecodeError) as err:
            decode(htj2k)
        message = str(err.value)
        assert message.startswith(f"{htj2k}: no installed decoder reads its pixel data, "
                                  "compressed as High-Throughput JPEG 2000")
        assert "pylibjpeg-openjpeg" in message and "install what a plugin above requires" \
            in message and "12-bit" not in message and "damaged" not in message
    damaged = bundled("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(DecodeError, match=r"JPEG 2000 Image Compression .*; every installed "
                                          r"decoder failed on it, so the file is likely damaged$"):
        decode(damaged)


def test_a_dicom_object_without_pixels_says_what_it_is():
    path = bundled("rtplan.dcm")
    with pytest.raises(DecodeError, match=rf"^{re.escape(path)}: holds no pixel data "
                                          r"\(RT Plan Storage\); only images"):
        decode(path)


@pytest.mark.parametrize("implicit", [True, False])
def test_a_file_without_meta_header_reads_with_the_encoding_it_was_read_with(tmp_path, implicit):
    src = str(tmp_path / "with_meta.dcm")
    write_dicom(src, np.arange(12, dtype=np.uint16).reshape(3, 4) * 100)
    ds = pydicom.dcmread(src)
    ds.file_meta, ds.preamble = FileMetaDataset(), None     # an ACR-NEMA style file
    bare = str(tmp_path / "bare.dcm")
    ds.save_as(bare, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert open(bare, "rb").read(132)[128:132] != b"DICM"
    np.testing.assert_array_equal(decode(bare), decode(src))


def voi_lut_item(table, first, bits=16, as_bytes=False):
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    if as_bytes:
        item.add_new("LUTData", "OW", np.asarray(table, "<u2").tobytes())
    else:
        item.add_new("LUTData", "US", [int(v) for v in table])
    return item


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_voi_lut_sequence_maps_rescaled_values_through_its_table(tmp_path, as_bytes):
    # Table of 5 entries for rescaled values 100..104 (quadratic display curve, 12 bits in
    # a 16-bit descriptor); stored 45..57 with slope 2, intercept 10 -> rescaled 100..124.
    p = str(tmp_path / "lut.dcm")
    stored = np.array([[44, 45, 46], [47, 48, 60]], np.uint16)
    write_dicom(p, stored, RescaleSlope=2, RescaleIntercept=10,
                VOILUTSequence=[voi_lut_item([0, 100, 400, 900, 1600], 100, 16, as_bytes)])
    # rescaled: 98 (below first: entry 0), 100, 102, 104, 106 (above: last entry), 130
    expected = np.array([[0, 0, 400], [1600, 1600, 1600]]) / 1600.0
    np.testing.assert_allclose(decode(p)[0, :, :, 0], expected, atol=1e-6)


def test_a_window_wins_over_a_voi_lut_and_monochrome1_inverts_the_table(tmp_path):
    both = str(tmp_path / "both.dcm")
    stored = np.array([[100, 101], [102, 103]], np.uint16)
    lut = [voi_lut_item([0, 10, 30, 40], 100)]
    write_dicom(both, stored, WindowCenter=101.5, WindowWidth=4, VOILUTSequence=lut)
    window_only = str(tmp_path / "window.dcm")
    write_dicom(window_only, stored, WindowCenter=101.5, WindowWidth=4)
    np.testing.assert_array_equal(decode(both), decode(window_only))
    inverted = str(tmp_path / "m1.dcm")
    write_dicom(inverted, stored, photometric="MONOCHROME1", VOILUTSequence=lut)
    np.testing.assert_allclose(decode(inverted)[0, :, :, 0], [[1, 0.75], [0.25, 0]], atol=1e-6)


def write_palette_dicom(path, indices, red, green, blue, bits=16):
    """An 8-bit PALETTE COLOR image of ``indices`` with three 16-bit lookup tables."""
    write_dicom(path, indices.astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = indices.astype(np.uint8).tobytes()
    for name, table in (("Red", red), ("Green", green), ("Blue", blue)):
        ds.add_new(pydicom.datadict.tag_for_keyword(f"{name}PaletteColorLookupTableDescriptor"),
                   "US", [len(table), 0, bits])
        ds.add_new(pydicom.datadict.tag_for_keyword(f"{name}PaletteColorLookupTableData"),
                   "OW", np.asarray(table, "<u2").tobytes())
    ds.save_as(path, enforce_file_format=True)


def test_palette_colour_is_read_as_the_colours_it_shows(tmp_path):
    p = str(tmp_path / "palette.dcm")
    indices = np.array([[0, 1], [2, 3]])
    red, green, blue = [0, 65535, 0, 32768], [0, 0, 65535, 32768], [0, 0, 0, 65535]
    write_palette_dicom(p, indices, red, green, blue)
    x = decode(p)
    assert x.shape == (1, 2, 2, 3)
    # 16-bit colours: min-max over the image (0 .. 65535)
    np.testing.assert_allclose(x[0, 1, 1], [32768 / 65535, 32768 / 65535, 1.0], atol=1e-6)
    np.testing.assert_allclose(x[0, 0, 1], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, 1, 0], [0, 1, 0], atol=1e-6)
    assert open_volume(p).read().shape[-1] == 3


@pytest.mark.parametrize("bits", [8, 16])
def test_a_dark_palette_reads_as_dark_as_it_shows(tmp_path, bits):
    """Palette colours were min-max scaled over the image: a palette of values 0-127 (of
    255) read as bright as a full one (max 1.0 for 0.498). Now by the entries' full scale,
    as a palette PNG of the same colours reads."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 128, (16, 3))
    indices = rng.integers(0, 16, (6, 5))
    scale = 257 if bits == 16 else 1
    p = str(tmp_path / "dark.dcm")
    write_palette_dicom(p, indices, *(palette[:, c] * scale for c in range(3)), bits=bits)
    np.testing.assert_allclose(decode(p)[0], palette[indices] / 255.0, atol=1e-6)


def write_rgb12_dicom(path, rgb):
    """An RGB DICOM of ``rgb`` (1, H, W, 3) uint16 stored in 12 of 16 bits."""
    write_dicom(path, rgb.astype(np.uint8), photometric="RGB", PlanarConfiguration=0)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = rgb.astype("<u2").tobytes()
    ds.save_as(path)


def test_a_colour_dicom_wider_than_8_bits_reads_by_its_bits_stored(tmp_path):
    """A 12-bit RGB picture of values up to 2000 reads as 2000 / 4095, not stretched."""
    rgb = np.random.default_rng(1).integers(0, 2001, (1, 4, 5, 3)).astype(np.uint16)
    p = str(tmp_path / "rgb12.dcm")
    write_rgb12_dicom(p, rgb)
    np.testing.assert_allclose(decode(p)[0], rgb[0] / 4095.0, atol=1e-6)


def write_axial_slice(path, value, z, **tags):
    """A 2x2 slice of ``value`` at height ``z`` of an axial series."""
    write_dicom(str(path), np.full((2, 2), value, np.uint16), ImagePositionPatient=[0, 0, float(z)],
                ImageOrientationPatient=[1, 0, 0, 0, 1, 0], **tags)


def test_a_folder_holding_two_series_names_them_instead_of_interleaving_them(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    for series, values in (("1.2.3.1", (0, 10, 20)), ("1.2.3.2", (5, 15))):
        for z, v in enumerate(values):
            write_axial_slice(folder / f"{series}_{z}.dcm", v, z, SeriesInstanceUID=series)
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: holds 2 DICOM series (1.2.3.1: 3 file(s), e.g. 1.2.3.1_0.dcm; "
            "1.2.3.2: 2 file(s), e.g. 1.2.3.2_0.dcm); a manifest row's folder must hold one")):
        open_volume(str(folder))
    for name in ("1.2.3.2_0.dcm", "1.2.3.2_1.dcm"):
        (folder / name).unlink()
    np.testing.assert_allclose(decode(str(folder))[:, 0, 0, 0], [0, 0.5, 1])


def write_enhanced_dicom(path, stored, depths, slopes, intercepts, window=None):
    """An enhanced multi-frame object: frames stored in the order given, each placed by its
    PlanePositionSequence (z = ``depths``) and rescaled by its own
    PixelValueTransformationSequence; orientation and the optional window are shared."""
    def item(**tags):
        d = Dataset()
        for k, v in tags.items():
            setattr(d, k, v)
        return d
    write_dicom(path, stored)
    ds = pydicom.dcmread(path)
    shared = item(PlaneOrientationSequence=[item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    if window is not None:
        shared.FrameVOILUTSequence = [item(WindowCenter=window[0], WindowWidth=window[1])]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [
        item(PlanePositionSequence=[item(ImagePositionPatient=[0, 0, z])],
             PixelValueTransformationSequence=[item(RescaleSlope=s, RescaleIntercept=b)])
        for z, s, b in zip(depths, slopes, intercepts)]
    ds.save_as(path, enforce_file_format=True)


def test_an_enhanced_multiframe_object_is_read_in_anatomical_order_with_each_frames_rescale(
        tmp_path):
    p = str(tmp_path / "enhanced.dcm")
    stored = np.stack([np.full((2, 2), v, np.uint16) for v in (30, 10, 5)])
    # stored frames at z = 20, 0, 10; rescaled: 30*1+0 = 30, 10*2+0 = 20, 5*1+5 = 10
    write_enhanced_dicom(p, stored, depths=[20.0, 0.0, 10.0], slopes=[1, 2, 1],
                         intercepts=[0, 0, 5])
    volume = open_volume(p)
    assert volume.num_slices == 3
    # anatomical order z = 0, 10, 20 -> rescaled 20, 10, 30 -> min-max 0.5, 0, 1
    np.testing.assert_allclose(volume.read()[:, 0, 0, 0], [0.5, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(volume.read([2])[:, 0, 0, 0], [0.0])   # one frame alone
    windowed = str(tmp_path / "windowed.dcm")
    write_enhanced_dicom(windowed, stored, depths=[20.0, 0.0, 10.0], slopes=[1, 2, 1],
                         intercepts=[0, 0, 5], window=(20.5, 41))
    # window 20.5 / 41: (x - 20) / 40 + 0.5 -> 20: 0.5, 10: 0.25, 30: 0.75
    np.testing.assert_allclose(decode(windowed)[:, 0, 0, 0], [0.5, 0.25, 0.75], atol=1e-6)


def test_a_series_with_several_images_at_one_position_is_refused_naming_them(tmp_path):
    """Two echoes of a multi-echo MR series: read as one volume, its slices would alternate
    between the echoes' contrasts."""
    folder = tmp_path / "dual_echo"
    folder.mkdir()
    for echo in (1, 2):
        for z in (0.0, 5.0):
            write_axial_slice(folder / f"e{echo}_z{int(z)}.dcm", echo, z, EchoNumbers=echo)
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: 2 slice position(s) hold several images (at [0.0, 0.0, 0.0]: "
            "e1_z0.dcm, e2_z0.dcm), the echoes or time points of one series: put each echo")):
        open_volume(str(folder))
    for name in ("e2_z0.dcm", "e2_z5.dcm"):
        (folder / name).unlink()
    assert open_volume(str(folder)).num_slices == 2


def test_a_series_folder_reads_its_dicom_files_and_ignores_the_others(tmp_path):
    """An export's folder often holds a Thumbs.db or a text note beside the slices; read as
    a DICOM header they parse as a file of "no series". A slice without the 128-byte
    preamble (older writers) is still a slice: its header has Rows."""
    folder = tmp_path / "series"
    folder.mkdir()
    for z in (0.0, 5.0):
        write_axial_slice(folder / f"IM{int(z)}", 10 + z, z)
    without_preamble = pydicom.dcmread(folder / "IM5")
    without_preamble.ImagePositionPatient = [0, 0, 10.0]
    without_preamble.PixelData = np.full((2, 2), 30, np.uint16).tobytes()
    without_preamble.preamble = None
    without_preamble.save_as(folder / "IM10", enforce_file_format=False)
    assert (folder / "IM10").read_bytes()[128:132] != b"DICM"
    (folder / "notes.txt").write_text("scanned by dr x\n")
    (folder / "Thumbs.db").write_bytes(bytes(range(256)) * 4)
    volume = open_volume(str(folder))
    assert volume.num_slices == 3
    np.testing.assert_allclose(volume.read()[:, 0, 0, 0], [0.0, 0.25, 1.0], atol=1e-6)
    for name in ("IM0", "IM5", "IM10"):
        (folder / name).unlink()
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: folder holds no slice images or DICOM files (2 other file(s): "
            "Thumbs.db, notes.txt)")):
        open_volume(str(folder))


def test_a_dicom_file_without_pixels_in_a_series_folder_is_named(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    write_axial_slice(folder / "IM0.dcm", 1, 0.0)
    report = pydicom.dcmread(folder / "IM0.dcm")
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(report, keyword)
    report.save_as(folder / "report.dcm")
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder / 'report.dcm'}: a DICOM file without an image (no Rows) in series "
            f"folder {folder}")):
        open_volume(str(folder))


def test_a_folder_of_dicom_files_and_slice_images_is_refused_naming_both(tmp_path):
    """A series exported with a preview JPEG beside it would otherwise read as a one-slice
    folder of images, its DICOM slices left out."""
    folder = tmp_path / "series"
    folder.mkdir()
    for z in range(3):
        write_axial_slice(folder / f"IM{z}", z, float(z))
    (folder / "preview.jpg").write_bytes(b"")
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: holds both slice images (preview.jpg) and DICOM files (IM0, IM1, IM2): "
            "a manifest row's folder holds one or the other")):
        open_volume(str(folder))


def add_modality_lut(path, table, first, as_bytes=False):
    """Gives the DICOM file at ``path`` a ModalityLUTSequence of ``table`` (16-bit entries)
    from stored value ``first`` on (written unsigned, as a US descriptor holds it)."""
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [len(table), first % 65536, 16])
    item.ModalityLUTType = "OD"
    table = np.asarray(table, np.uint16)
    item.add_new(0x00283006, "OW" if as_bytes else "US",
                 table.tobytes() if as_bytes else table.tolist())
    ds.ModalityLUTSequence = [item]
    ds.save_as(path)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_modality_lut_reads_as_the_rescale_it_stands_for(tmp_path, as_bytes):
    """A table of 3 x + 10 is the rescale slope 3, intercept 10: both read the same
    through a window; before, the table was ignored and the window saw stored values."""
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4)
    rescaled, table = str(tmp_path / "rescale.dcm"), str(tmp_path / "table.dcm")
    write_dicom(rescaled, stored, RescaleSlope=3, RescaleIntercept=10, WindowCenter=25,
                WindowWidth=30)
    write_dicom(table, stored, WindowCenter=25, WindowWidth=30)
    add_modality_lut(table, 3 * np.arange(16) + 10, first=0, as_bytes=as_bytes)
    expected = decode(rescaled)
    assert len(np.unique(expected)) > 6                 # the window does not saturate it
    np.testing.assert_array_equal(decode(table), expected)


def test_a_modality_lut_clamps_outside_its_entries_and_reads_a_signed_first_value(tmp_path):
    """Signed pixels -4..7, a table of squares mapped from -2 (written 65534): -4 and -3
    take the first entry, 6 and 7 (past the last entry, 5) the last."""
    stored = np.arange(-4, 8, dtype=np.int16).reshape(3, 4)
    path = str(tmp_path / "signed.dcm")
    write_dicom(path, stored)
    add_modality_lut(path, np.arange(8) ** 2, first=-2)
    out = np.clip(stored + 2, 0, 7) ** 2                # 0, 0, 0, 1, 4, ..., 49, 49, 49
    np.testing.assert_allclose(decode(path)[0, :, :, 0], out / 49.0, atol=1e-6)


def test_a_slice_rewritten_in_place_is_ordered_anew_in_the_same_process(tmp_path):
    """The series' file order was cached by the folder's modification time, which a file
    rewritten in place does not change: after slice 0's position was corrected to the top,
    the same process kept reading the old order (a notebook until restarted)."""
    folder = tmp_path / "series"
    folder.mkdir()
    for z, value in enumerate((100, 200, 300)):
        write_axial_slice(folder / f"{z}.dcm", value, z)
    np.testing.assert_allclose(decode(str(folder), value_window=(0, 300))[:, 0, 0, 0] * 300,
                               [100, 200, 300], atol=1e-3)
    before = os.stat(folder).st_mtime_ns
    ds = pydicom.dcmread(folder / "0.dcm")
    ds.ImagePositionPatient = [0, 0, 10.0]
    ds.save_as(folder / "0.dcm")
    os.utime(folder / "0.dcm", ns=(before + 10**9, before + 10**9))
    os.utime(folder, ns=(before, before))          # the folder's time as it was
    np.testing.assert_allclose(decode(str(folder), value_window=(0, 300))[:, 0, 0, 0] * 300,
                               [200, 300, 100], atol=1e-3)
