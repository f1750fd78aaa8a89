"""Stacks that are not one volume of parallel slices are refused, naming the file and
what is wrong, whichever of their slices a read draws: an enhanced multi-frame object of
several echoes, a series folder (or an enhanced object) in several orientations, a folder
with one slice of another size, a NIfTI with NaN in one slice; and a colour DICOM series
reads as its files do on their own."""

import re

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from mami_jax.data.decode import DecodeError, decode, open_volume
from mami_jax.data.transforms import slice_indices
from tests.test_data_decode import write_dicom

AXIAL = [1, 0, 0, 0, 1, 0]
SAGITTAL = [0, 1, 0, 0, 0, -1]
CORONAL = [1, 0, 0, 0, 0, -1]
EMF2SF = "(dcm4che's emf2sf writes an enhanced multi-frame object's frames as single-frame files)"


def item(**tags):
    d = Dataset()
    for k, v in tags.items():
        setattr(d, k, v)
    return d


def write_enhanced(path, stored, positions, orientations):
    """An enhanced multi-frame object, each frame placed by its own functional groups
    (PlanePositionSequence, PlaneOrientationSequence)."""
    write_dicom(str(path), stored)
    ds = pydicom.dcmread(str(path))
    ds.PerFrameFunctionalGroupsSequence = [
        item(PlanePositionSequence=[item(ImagePositionPatient=list(p))],
             PlaneOrientationSequence=[item(ImageOrientationPatient=list(o))])
        for p, o in zip(positions, orientations)]
    ds.save_as(str(path), enforce_file_format=True)


def test_an_enhanced_object_of_two_echoes_is_refused_as_the_same_folder_is(tmp_path):
    """Two echoes x three positions, stored echo after echo: sorted by depth alone they
    read as one 6-slice volume alternating between the echoes' contrasts."""
    zs, echoes = [0, 5, 10, 0, 5, 10], [1, 1, 1, 2, 2, 2]
    stored = np.stack([np.full((4, 4), (1000 if e == 1 else 100) + z, np.uint16)
                       for z, e in zip(zs, echoes)])
    path = tmp_path / "mr_2echo.dcm"
    write_enhanced(path, stored, [(0, 0, z) for z in zs], [AXIAL] * 6)
    for read in (lambda v: v.read(), lambda v: v.read([0])):     # whichever slices
        with pytest.raises(DecodeError) as e:
            read(open_volume(str(path)))
        assert str(e.value) == (
            f"{path}: 3 slice position(s) hold several frames (at [0.0, 0.0, 0.0]: frame 1, "
            "frame 4), the echoes or time points of one series: put each echo or time point "
            f"in its own folder {EMF2SF}")
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, (z, e) in enumerate(zip(zs, echoes)):
        write_dicom(folder / f"f{i}.dcm", stored[i], ImagePositionPatient=[0, 0, z],
                    ImageOrientationPatient=AXIAL, EchoNumbers=e)
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: 3 slice position(s) hold several images (at [0.0, 0.0, 0.0]: f0.dcm, "
            "f3.dcm), the echoes or time points of one series: put each echo or time point "
            "in its own folder")):
        open_volume(str(folder))
    one_echo = tmp_path / "mr_1echo.dcm"          # one echo: read in anatomical order
    write_enhanced(one_echo, stored[[2, 0, 1]], [(0, 0, z) for z in (10, 0, 5)], [AXIAL] * 3)
    np.testing.assert_allclose(decode(str(one_echo))[:, 1, 1, 0], [0.0, 0.5, 1.0])


def test_an_enhanced_object_whose_frames_lie_in_several_orientations_is_refused(tmp_path):
    stored = np.stack([np.full((4, 4), 10 * (i + 1), np.uint16) for i in range(4)])
    path = tmp_path / "localizer.dcm"
    write_enhanced(path, stored, [(0, 0, -5), (0, 0, 5), (-5, 0, 0), (5, 0, 0)],
                   [AXIAL, AXIAL, SAGITTAL, SAGITTAL])
    with pytest.raises(DecodeError) as e:
        open_volume(str(path)).read([0])
    assert str(e.value) == (
        f"{path}: its frames lie in 2 orientations (ImageOrientationPatient [1.0, 0.0, 0.0, "
        "0.0, 1.0, 0.0]: 2 frame(s), frame 1, frame 2; [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]: 2 "
        "frame(s), frame 3, frame 4); a volume is one stack of parallel slices: save each "
        f"orientation's frames as a file or folder of their own {EMF2SF}")


def write_slice(folder, name, value, position, orientation, **tags):
    a = np.full((4, 4), value, np.uint16)
    a[0, 0] = 0
    write_dicom(folder / name, a, ImagePositionPatient=list(position),
                ImageOrientationPatient=list(orientation), **tags)


def test_a_three_plane_localizer_of_one_series_is_refused_listing_each_plane(tmp_path):
    """A scanner's 3-plane localizer shares one SeriesInstanceUID: ordered by each file's
    position along its own normal, its planes read as one 6-slice volume."""
    folder = tmp_path / "localizer"
    folder.mkdir()
    planes = [(AXIAL, [(0, 0, -10), (0, 0, 10)]), (SAGITTAL, [(-10, 0, 0), (10, 0, 0)]),
              (CORONAL, [(0, -10, 0), (0, 10, 0)])]
    k = 0
    for orientation, positions in planes:
        for position in positions:
            write_slice(folder, f"i{k}.dcm", 10 * (k + 1), position, orientation,
                        InstanceNumber=k + 1)
            k += 1
    with pytest.raises(DecodeError) as e:
        open_volume(str(folder))
    assert str(e.value) == (
        f"{folder}: its images lie in 3 orientations (ImageOrientationPatient [1.0, 0.0, 0.0, "
        "0.0, 1.0, 0.0]: 2 image(s), i0.dcm, i1.dcm; [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]: 2 "
        "image(s), i2.dcm, i3.dcm; [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]: 2 image(s), i4.dcm, "
        "i5.dcm); a volume is one stack of parallel slices: move each orientation's images "
        "into a folder of their own")


def test_one_odd_orientation_among_axial_slices_is_refused_and_float_noise_is_not(tmp_path):
    folder = tmp_path / "axial"
    folder.mkdir()
    for i in range(5):
        write_slice(folder, f"s{i}.dcm", 10 * (i + 1), (0, 0, 2 * i), AXIAL)
    # another exporter's rounding of the same plane: one orientation, read in order
    noisy = [1, 2e-6, -1e-6, 0, 0.9999996, 3e-5]
    write_slice(folder, "s5.dcm", 60, (0, 0, 10), noisy)
    np.testing.assert_allclose(decode(str(folder))[:, 1, 1, 0], np.arange(1, 7) / 6)
    write_slice(folder, "reformat.dcm", 70, (0, 0, 4.5), SAGITTAL)
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: its images lie in 2 orientations (ImageOrientationPatient [1.0, 0.0, "
            "0.0, 0.0, 1.0, 0.0]: 6 image(s), s0.dcm, s1.dcm, s2.dcm and 3 more; [0.0, 1.0, "
            "0.0, 0.0, 0.0, -1.0]: 1 image(s), reformat.dcm); a volume is one stack")):
        open_volume(str(folder))


def test_a_colour_series_reads_under_a_value_window_as_its_files_do_alone(tmp_path):
    """An 8-bit colour picture is what the screen shows: /255 under a modality's value
    window too. Its series was cast to float32 first and windowed (dark)."""
    rgb = np.array([[[[10, 100, 200], [0, 255, 128]]]], np.uint8)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(2):
        write_dicom(folder / f"s{i}.dcm", rgb, photometric="RGB", PlanarConfiguration=0,
                    ImagePositionPatient=[0, 0, i], ImageOrientationPatient=AXIAL)
    window = (0, 1000)
    alone = decode(str(folder / "s0.dcm"), value_window=window)
    np.testing.assert_allclose(alone[0], rgb[0] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(decode(str(folder), value_window=window)[0], alone[0])
    np.testing.assert_array_equal(decode(str(folder))[0], decode(str(folder / "s0.dcm"))[0])


def test_one_odd_sized_slice_fails_every_read_not_only_the_draws_that_meet_it(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(20):
        Image.fromarray(np.full((32, 32) if i == 6 else (16, 16), 100, np.uint8)).save(
            folder / f"{i}.png")
    message = re.escape(f"{folder}: 1 of the 20 slices differs from the others (16x16): "
                        "6.png (32x32)")
    with pytest.raises(DecodeError, match=message):
        open_volume(str(folder))
    (folder / "6.png").unlink()
    volume = open_volume(str(folder))          # without it: every draw reads
    for seed in range(20):
        assert volume.read(slice_indices(19, 4, np.random.default_rng(seed))).shape == \
            (4, 16, 16, 1)


def test_a_uniform_folder_has_its_headers_read_once_per_process(tmp_path, monkeypatch):
    """Every read of a series opens its folder: opening all its slices' headers each time
    (a bounded cache evicts on an archive of many series) costs more than the slices read.
    Adding a slice changes the folder, which is looked at again."""
    import PIL.Image
    folder = tmp_path / "uniform"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(folder / f"{i}.png")
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda f, *a, **k: opened.append(f) or
                        real_open(f, *a, **k))
    open_volume(str(folder))
    assert len(opened) == 6
    open_volume(str(folder))
    assert len(opened) == 6
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "6.png")
    opened.clear()
    with pytest.raises(DecodeError, match="6.png"):
        open_volume(str(folder))


def test_a_slice_stored_on_its_side_with_its_exif_orientation_is_of_the_shown_size(tmp_path):
    """Sizes are compared as the slices are shown: one stored 16x8 with EXIF Orientation 6
    shows 8x16, as the others do (a TIFF too, whose size Pillow gives turned)."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 16), 50 * i, np.uint8)).save(folder / f"{i}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((16, 8), 200, np.uint8)).save(folder / "3.jpg", exif=exif)
    Image.fromarray(np.full((16, 8), 250, np.uint8)).save(folder / "4.tif", exif=exif)
    assert open_volume(str(folder)).read().shape == (5, 8, 16, 1)


def test_a_dicom_series_with_one_slice_of_another_size_is_refused_when_opened(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(6):
        write_dicom(folder / f"{i}.dcm", np.zeros((8, 8) if i == 4 else (4, 4), np.uint16),
                    ImagePositionPatient=[0, 0, i], ImageOrientationPatient=AXIAL)
    with pytest.raises(DecodeError, match=re.escape(
            f"{folder}: 1 of the 6 slices differs from the others (4x4): 4.dcm (8x8)")):
        open_volume(str(folder))


def test_a_compressed_nifti_with_nan_in_one_slice_fails_whichever_slices_are_read(tmp_path):
    """The volume is decompressed whole for any read: its NaN is found wherever it lies,
    named by the slice it reads as (stored bottom-up or top-down alike)."""
    voxels = np.random.default_rng(0).random((8, 8, 20)).astype(np.float32)
    voxels[2, 2, 6] = np.nan
    up = str(tmp_path / "up.nii.gz")
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), up)
    down = str(tmp_path / "down.nii.gz")           # stored superior first: the same slices
    nib.save(nib.Nifti1Image(np.ascontiguousarray(voxels[:, :, ::-1]),
                             np.diag([1.0, 1.0, -1.0, 1.0])), down)
    for path in (up, down):
        with pytest.raises(DecodeError, match=re.escape(
                f"{path}: holds NaN or infinity in 1 voxel(s), in 1 of its 20 slices (6)")):
            open_volume(path).read([0, 19])
