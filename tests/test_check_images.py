"""``python -m mami_jax.data.check_images``: every slice of every row decoded, the unreadable
rows named by their manifest line, listed and (asked for) left out of a clean manifest."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.data import check_images
from mami_jax.data.manifest import ManifestRow, read_manifest, write_manifest
from tests.test_data_decode import write_dicom


def _truncate(path, keep=200):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:keep])


@pytest.fixture
def dataset(tmp_path):
    """manifest.csv: two good PNGs, a PNG cut short, and a DICOM series whose middle of
    five slices is cut short (a run reading T=2 of them could go for long without it)."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("a", "b", "cut"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), np.uint8)).save(
            root / f"{name}.png")
    _truncate(root / "cut.png")
    series = root / "series"
    series.mkdir()
    for i in range(5):
        write_dicom(str(series / f"{i}.dcm"), np.full((16, 16), i * 10, np.uint16),
                    InstanceNumber=i + 1, ImagePositionPatient=[0, 0, i],
                    ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    _truncate(series / "2.dcm", keep=os.path.getsize(series / "2.dcm") - 100)
    rows = [ManifestRow(f"im{i}", f"p{i % 2}", f"s{i}", str(i), modality, "d", "", path, "train")
            for i, (modality, path) in enumerate([
                ("xray", "a.png"), ("xray", "cut.png"), ("xray", "b.png"), ("ct", "series")])]
    manifest = root / "manifest.csv"
    write_manifest([r.replace(path=str(root / r.path)) for r in rows], str(manifest))
    return manifest


@pytest.mark.parametrize("workers", [1, 2])
def test_every_slice_is_read_and_the_unreadable_rows_are_named(dataset, tmp_path, capsys,
                                                                workers):
    before = {p: open(p, "rb").read() for p in [dataset] + [r.path for r in read_manifest(str(dataset))
                                                              if os.path.isfile(r.path)]}
    listed = tmp_path / "unreadable.csv"
    code = check_images.main(["--manifest", str(dataset), "--workers", str(workers),
                              "--unreadable", str(listed)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines()[-1] == "error: 2 of 4 images could not be read"
    lines = out.splitlines()
    assert lines[0].startswith(f"{dataset}: line 3 (image_id='im1'): ") and "cut.png" in lines[0]
    assert lines[1].startswith(f"{dataset}: line 5 (image_id='im3'): ")
    assert lines[2] == f"read 2 of 4 images; unreadable rows listed in {listed}"
    table = list(csv.DictReader(open(listed)))
    assert [(t["line"], t["image_id"]) for t in table] == [("3", "im1"), ("5", "im3")]
    assert all(t["reason"] for t in table)
    assert {p: open(p, "rb").read() for p in before} == before      # inputs untouched


def test_clean_leaves_the_unreadable_rows_out_and_counts_them(dataset, tmp_path, capsys):
    clean = tmp_path / "clean" / "manifest.csv"
    assert check_images.main(["--manifest", str(dataset), "--clean", str(clean)]) == 0
    assert f"clean manifest: 2 rows (2 unreadable left out) -> {clean}" in capsys.readouterr().out
    kept = read_manifest(str(clean))
    assert [r.image_id for r in kept] == ["im0", "im2"]
    assert all(os.path.isfile(r.path) for r in kept)     # paths still lead to the images
    assert check_images.main(["--manifest", str(clean)]) == 0
    assert capsys.readouterr().out == "read 2 of 2 images\n"


def test_clean_of_one_split_keeps_the_other_splits_rows(dataset, tmp_path, capsys):
    """--split val --clean wrote the val rows alone: every other split's rows vanished,
    unmentioned. They are kept, unchecked, and counted."""
    from mami_jax.data.manifest import write_manifest
    rows = read_manifest(str(dataset))
    mixed = tmp_path / "mixed.csv"
    write_manifest([r.replace(split="val") if r.patient_id == "p1" else r for r in rows],
                   str(mixed))
    clean = tmp_path / "clean.csv"
    assert check_images.main(["--manifest", str(mixed), "--split", "val",
                              "--clean", str(clean)]) == 0
    assert (f"clean manifest: 2 rows (2 unreadable left out; 2 rows of other splits kept, "
            f"unchecked) -> {clean}") in capsys.readouterr().out
    assert [r.image_id for r in read_manifest(str(clean))] == ["im0", "im2"]    # train's


def test_outputs_are_never_inputs_and_replaced_only_when_ours(dataset, tmp_path, capsys):
    image = dataset.parent / "a.csv"
    image.write_text("my,table\n1,2\n")
    cases = [(["--clean", str(dataset)], "would overwrite the input"),
             (["--unreadable", str(tmp_path / "u.txt")], "give a name ending in .csv"),
             (["--clean", str(image), "--overwrite"], "is not a manifest"),
             (["--clean", str(tmp_path / "x.csv"), "--unreadable", str(tmp_path / "x.csv")],
              "name the same file")]
    for extra, said in cases:
        assert check_images.main(["--manifest", str(dataset)] + extra) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and said in err[0], (extra, err)
    assert image.read_text() == "my,table\n1,2\n"
    listed = tmp_path / "u.csv"
    assert check_images.main(["--manifest", str(dataset), "--unreadable", str(listed)]) == 1
    assert check_images.main(["--manifest", str(dataset), "--unreadable", str(listed)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert check_images.main(["--manifest", str(dataset), "--unreadable", str(listed),
                              "--overwrite"]) == 1
    assert "could not be read" in capsys.readouterr().err


def test_a_series_whose_later_slices_differ_from_the_first_part_is_unreadable(tmp_path):
    """Slices were read 16 at a time and compared only within a part: a series of sixteen
    8x8 slices and four 6x6 passed, then failed in training whenever a read spanned both
    sizes. The slices' sizes are now compared when the series is opened."""
    series = tmp_path / "series"
    series.mkdir()
    for i in range(20):
        side = 8 if i < 16 else 6
        write_dicom(str(series / f"{i}.dcm"), np.full((side, side), 100 + i, np.uint16),
                    InstanceNumber=i + 1, ImagePositionPatient=[0, 0, i],
                    ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    reason = check_images.why_unreadable(str(series))     # (from the files' headers)
    assert reason == (f"{series}: 4 of the 20 slices differ from the others (8x8): 16.dcm "
                      "(6x6), 17.dcm (6x6), 18.dcm (6x6) and 1 more; a series' slices share "
                      "one size and pixel type: move the odd ones (a localizer, a thumbnail) "
                      "out of the folder")
    for i in range(16, 20):
        (series / f"{i}.dcm").unlink()
    assert check_images.why_unreadable(str(series)) is None
    # a folder of image slices is refused on mixed pixel types as well: 8-bit, then 16-bit
    slices = tmp_path / "slices"
    slices.mkdir()
    for i in range(20):
        Image.fromarray(np.full((8, 8), 100 + i, np.uint8 if i < 16 else np.uint16)).save(
            slices / f"slice_{i:02d}.png")
    reason = check_images.why_unreadable(str(slices))
    assert reason is not None and "uint16" in reason and "share one size and pixel type" in reason
