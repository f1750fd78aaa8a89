"""``--dataset folders``: a manifest of the user's own images, one folder per patient and
visit; every row it writes opens, and every file it leaves out is counted with its reason."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mami_jax.data.build_manifest import main
from mami_jax.data.datasets.common import DatasetLayoutError
from mami_jax.data.datasets.folders import build
from mami_jax.data.decode import open_volume
from mami_jax.data.manifest import read_manifest
from tests.test_data_decode import write_dicom


def _png(path, value=9):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def _rows(result):
    return [(r.image_id, r.patient_id, r.study_id, r.order, r.modality, r.dataset, r.view)
            for r in result.rows]


def test_two_d_images_one_row_each_visits_in_natural_order(tmp_path):
    root = tmp_path / "xr"
    for patient in ("A", "B"):
        for visit in ("visit10", "visit2"):
            _png(str(root / patient / visit / "pa.png"))
    _png(str(root / "A" / "visit2" / "lat.png"))
    (root / "A" / "visit2" / "notes.txt").write_text("dr x")
    (root / "A" / "visit2" / "old").mkdir()
    _png(str(root / "A" / "loose.png"))
    (root / "README").write_text("mine")
    _png(str(root / "A" / "visit2" / ".hidden.png"))    # hidden: counted, never silent
    _png(str(root / ".C" / "visit1" / "pa.png"))
    (root / "B" / ".DS_Store").write_text("finder")
    result = build(str(root), modality="xray", name="mine")
    assert _rows(result) == [
        ("mine:A/visit2/lat.png", "A", "visit2", "0", "xray", "mine", ""),
        ("mine:A/visit2/pa.png", "A", "visit2", "0", "xray", "mine", ""),
        ("mine:A/visit10/pa.png", "A", "visit10", "1", "xray", "mine", ""),
        ("mine:B/visit2/pa.png", "B", "visit2", "0", "xray", "mine", ""),
        ("mine:B/visit10/pa.png", "B", "visit10", "1", "xray", "mine", ""),
    ]
    assert sorted(result.skipped) == sorted([
        ("README", "file outside a patient folder (layout ROOT/PATIENT/VISIT/IMAGE)"),
        ("A/loose.png", "file outside a visit folder (layout ROOT/PATIENT/VISIT/IMAGE)"),
        ("A/visit2/old", "folder inside a 2-D visit folder"),
        ("A/visit2/notes.txt", "not an image"),
        (".C", "hidden (its name starts with '.')"),
        ("B/.DS_Store", "hidden (its name starts with '.')"),
        ("A/visit2/.hidden.png", "hidden (its name starts with '.')"),
    ])


def test_volumes_series_folders_and_a_visit_that_is_one_series(tmp_path):
    root = tmp_path / "ct"
    first = root / "P1" / "2019-03-01"
    (first / "series_1").mkdir(parents=True)
    for i in range(3):
        write_dicom(str(first / "series_1" / f"IM{i}"), np.full((4, 4), i, np.uint16),
                    InstanceNumber=i + 1)
    nib.save(nib.Nifti1Image(np.arange(48, dtype=np.int16).reshape(4, 4, 3), np.eye(4)),
             str(first / "T1w.nii.gz"))
    nib.save(nib.Nifti1Pair(np.arange(48, dtype=np.int16).reshape(4, 4, 3), np.eye(4)),
             str(first / "flair.hdr"))
    (first / "T1w.json").write_text("{}")
    write_dicom(str(first / "stray.dcm"), np.zeros((4, 4), np.uint16))
    second = root / "P1" / "2020-01-05"
    second.mkdir()
    for i in range(2):
        write_dicom(str(second / f"{i}.dcm"), np.full((4, 4), i, np.uint16), InstanceNumber=i + 1)
    enhanced = root / "P2" / "v1"
    enhanced.mkdir(parents=True)
    write_dicom(str(enhanced / "enh.dcm"), np.arange(48, dtype=np.uint16).reshape(3, 4, 4))
    result = build(str(root), modality="ct")
    assert _rows(result) == [
        ("folders:P1/2019-03-01/T1w.nii.gz", "P1", "2019-03-01", "0", "ct", "folders", "T1w"),
        ("folders:P1/2019-03-01/flair.hdr", "P1", "2019-03-01", "0", "ct", "folders", "flair"),
        ("folders:P1/2019-03-01/series_1", "P1", "2019-03-01", "0", "ct", "folders", "series_1"),
        ("folders:P1/2020-01-05", "P1", "2020-01-05", "1", "ct", "folders", ""),
        ("folders:P2/v1/enh.dcm", "P2", "v1", "0", "ct", "folders", "enh"),
    ]
    assert sorted(result.skipped) == [
        ("P1/2019-03-01/T1w.json", "not an image or volume"),
        ("P1/2019-03-01/stray.dcm", "slice beside series folders or volumes")]
    assert [open_volume(r.path).num_slices for r in result.rows] == [3, 3, 3, 2, 3]


def test_the_command_writes_a_manifest_whose_every_row_opens(tmp_path, capsys):
    root = tmp_path / "fundus"
    for p in range(6):
        for v in ("1", "2"):
            _png(str(root / f"P{p}" / v / "left.png"), value=p * 20 + int(v))
    out = str(root / "manifest.csv")
    assert main(["--dataset", "folders", "--modality", "fundus", "--root", str(root),
                 "--out", out]) == 0
    rows = read_manifest(out)
    assert len(rows) == 12 and {r.modality for r in rows} == {"fundus"}
    assert {r.split for r in rows} <= {"train", "val", "test"}
    for r in rows:
        assert open_volume(r.path).read().shape == (1, 8, 8, 1)
    assert "rows not used: 0" in capsys.readouterr().out


def test_folders_without_a_modality_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "folders", "--root", str(tmp_path), "--out", str(tmp_path / "m.csv")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: python -m mami_jax.data.build_manifest: --dataset folders needs --modality, "
        "the modality of every image under --root (see --help)")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "oasis", "--modality", "mri"],
     "--modality and --name are for --dataset folders; oasis's builder knows its own"),
    (["--dataset", "folders", "--modality", "ct", "--name", "a:b"],
     "--name 'a:b': a dataset name is a word without ':', '/', ',' or surrounding spaces"),
])
def test_bad_options_are_one_error_line(tmp_path, capsys, argv, message):
    (tmp_path / "root" / "P" / "v").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:        # usage errors (tests/test_build_manifest_arguments.py)
        main(argv + ["--root", str(tmp_path / "root"), "--out", str(tmp_path / "m.csv")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: python -m mami_jax.data.build_manifest: {message} (see --help)")
    assert not os.path.exists(tmp_path / "m.csv")


def test_visit_folders_named_by_dates_written_year_last_are_refused(tmp_path):
    _png(str(tmp_path / "P" / "3-1-2019" / "a.png"))
    with pytest.raises(DatasetLayoutError, match="a visit folder named by a date written year "
                                                 "last sorts by day or month"):
        build(str(tmp_path), modality="xray")
    with pytest.raises(DatasetLayoutError, match="no patient folders"):
        build(str(tmp_path / "P" / "3-1-2019"), modality="xray")


def test_a_root_without_visit_folders_writes_no_empty_manifest(tmp_path, capsys):
    """An empty manifest was written with status 0; the training failed later on it."""
    for patient in ("P1", "P2"):
        _png(str(tmp_path / "flat" / patient / "a.png"))
    out = tmp_path / "m.csv"
    assert main(["--dataset", "folders", "--modality", "xray", "--root",
                 str(tmp_path / "flat"), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --root {tmp_path / 'flat'}: no images for --dataset folders (2 x file outside "
        "a visit folder (layout ROOT/PATIENT/VISIT/IMAGE)); no manifest written")
    assert not out.exists()
