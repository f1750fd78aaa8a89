"""Each dataset builder on a small fake tree in the dataset's official layout.

Files are empty (builders never decode), so the trees cost nothing; every test
checks the exact rows (patient, study, order, view, path) and the reported skips.
"""

import csv
import gzip
import os
import re

import pytest

from mami_jax.data import build_manifest
from mami_jax.data.datasets.chexpert import OBSERVATIONS as CHEXPERT_OBSERVATIONS
from mami_jax.data.datasets.common import DatasetLayoutError, PathOutsideRootError
from mami_jax.data.datasets.registry import BUILDERS, MODALITY_OF
from mami_jax.data.manifest import COLUMNS, read_manifest


def touch(*parts):
    path = os.path.join(*parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def write_csv(path, header, rows, gz=False, encoding="utf-8"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    opener = ((lambda p: gzip.open(p, "wt", newline="", encoding=encoding)) if gz
              else (lambda p: open(p, "w", newline="", encoding=encoding)))
    with opener(path) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def table(result):
    """{local image id: (patient, study, order, view, path relative to root)}."""
    out = {}
    for r in result.rows:
        out[r.image_id.split(":", 1)[1]] = (r.patient_id, r.study_id, r.order, r.view, r.path)
    return out


def rel(root, t):
    return {k: v[:4] + (os.path.relpath(v[4], root),) for k, v in t.items()}


def test_registry_names_and_modalities():
    assert sorted(BUILDERS) == sorted(["nih_chestxray14", "chexpert", "mimic_cxr", "padchest", "eyepacs",
                                       "odir", "oasis", "ccii_ct", "deeplesion", "tcga", "folders"])
    assert MODALITY_OF["oasis"] == "mri" and MODALITY_OF["tcga"] == "pathology"
    assert MODALITY_OF["ccii_ct"] == "ct" and MODALITY_OF["odir"] == "fundus"


def test_nih_chestxray14(tmp_path):
    root = str(tmp_path)
    write_csv(os.path.join(root, "Data_Entry_2017.csv"),
              ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position"],
              [["00000001_000.png", "No Finding", "0", "1", "58", "M", "PA"],
               ["00000001_001.png", "Mass", "1", "1", "58", "M", "AP"],
               ["00000002_000.png", "No Finding", "0", "2", "81", "F", "PA"],
               ["00000003_000.png", "No Finding", "0", "4", "81", "F", "PA"],   # id mismatch
               ["00000005_000.png", "No Finding", "x", "5", "81", "F", "PA"]])  # bad follow-up
    touch(root, "images_001", "images", "00000001_000.png")
    touch(root, "images_002", "images", "00000001_001.png")
    res = BUILDERS["nih_chestxray14"](root)
    assert rel(root, table(res)) == {
        "00000001_000": ("1", "0", "0", "PA", "images_001/images/00000001_000.png"),
        "00000001_001": ("1", "1", "1", "AP", "images_002/images/00000001_001.png"),
    }
    assert res.missing_files == 1
    reasons = res.skipped_by_reason()
    assert reasons == {"file not found": 1, "image name does not start with the Patient ID": 1,
                       "non-integer Patient ID or Follow-up #": 1}
    # Without verification the image not on disk is placed under images/.
    res = BUILDERS["nih_chestxray14"](root, verify_files=False)
    assert rel(root, table(res))["00000002_000"] == ("2", "0", "0", "PA", "images/00000002_000.png")
    assert res.missing_files == 0 and len(res.rows) == 3


def test_chexpert(tmp_path):
    root = str(tmp_path / "CheXpert-v1.0-small")
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + list(CHEXPERT_OBSERVATIONS)
    blank = [""] * 13
    write_csv(os.path.join(root, "train.csv"), header, [
        ["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "F", 68, "Frontal", "AP", 1]
        + blank,
        ["CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg", "F", 68, "Frontal", "PA", ""]
        + blank,
        ["CheXpert-v1.0-small/train/patient00001/study2/view2_lateral.jpg", "F", 68, "Lateral", "", ""]
        + blank,
        ["CheXpert-v1.0-small/train/patient00002/view1_frontal.jpg", "M", 50, "Frontal", "AP", ""] + blank,
    ])
    write_csv(os.path.join(root, "valid.csv"), header, [
        ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "M", 73, "Frontal", "AP", 0]
        + [0] * 13])
    for p in ["train/patient00001/study1/view1_frontal.jpg", "train/patient00001/study2/view1_frontal.jpg",
              "train/patient00001/study2/view2_lateral.jpg", "valid/patient64541/study1/view1_frontal.jpg"]:
        touch(root, p)
    res = BUILDERS["chexpert"](root)
    assert rel(root, table(res)) == {
        "patient00001/study1/view1_frontal": ("patient00001", "study1", "1", "AP",
                                              "train/patient00001/study1/view1_frontal.jpg"),
        "patient00001/study2/view1_frontal": ("patient00001", "study2", "2", "PA",
                                              "train/patient00001/study2/view1_frontal.jpg"),
        "patient00001/study2/view2_lateral": ("patient00001", "study2", "2", "lateral",
                                              "train/patient00001/study2/view2_lateral.jpg"),
        "patient64541/study1/view1_frontal": ("patient64541", "study1", "1", "AP",
                                              "valid/patient64541/study1/view1_frontal.jpg"),
    }
    assert res.skipped_by_reason() == {"Path is not <split>/patientN/studyN/<file>": 1}


def test_mimic_cxr(tmp_path):
    root = str(tmp_path)
    write_csv(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv.gz"),
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
               "Rows", "Columns", "StudyDate", "StudyTime"],
              [["d1", "10000032", "50414267", "CHEST", "PA", 3056, 2544, "21800506", "213014.531"],
               ["d2", "10000032", "53189527", "CHEST", "AP", 3056, 2544, "21800626", "65409.0"],
               ["d3", "10000033", "50000001", "CHEST", "", 3056, 2544, "", ""],
               # saved again by pandas: a float date, a lost time (the date still orders it)
               ["d4", "10000034", "50000002", "CHEST", "PA", 3056, 2544, "21520708.0", "nan"],
               ["d5", "10000034", "50000003", "CHEST", "PA", 3056, 2544, "2152.5", "1"]], gz=True)
    touch(root, "files", "p10", "p10000032", "s50414267", "d1.jpg")
    res = BUILDERS["mimic_cxr"](root, verify_files=False)
    assert rel(root, table(res)) == {
        "d1": ("10000032", "50414267", "21800506213014", "PA", "files/p10/p10000032/s50414267/d1.jpg"),
        "d2": ("10000032", "53189527", "21800626065409", "AP", "files/p10/p10000032/s53189527/d2.jpg"),
        "d4": ("10000034", "50000002", "21520708000000", "PA", "files/p10/p10000034/s50000002/d4.jpg"),
    }
    assert res.skipped_by_reason() == {"no usable StudyDate/StudyTime": 2}
    res = BUILDERS["mimic_cxr"](root)
    assert list(table(res)) == ["d1"] and res.missing_files == 2


def test_padchest(tmp_path):
    root = str(tmp_path)
    write_csv(os.path.join(root, "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"),
              ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "Projection", "Labels"],
              [["a.png", "0", "20140101", "st1", "pat1", "PA", "[]"],
               ["b.png", "0", "20150303", "st2", "pat1", "L", "[]"],
               ["c.png", "3", "20150303", "st3", "pat2", "AP", "[]"],
               ["d.png", "3", "None", "st4", "pat2", "AP", "[]"]])
    touch(root, "0", "a.png")
    touch(root, "0", "b.png")
    touch(root, "7", "c.png")  # not in its ImageDir: found by name
    touch(root, "PADCHEST_README.txt")  # sorts first; no table
    res = BUILDERS["padchest"](root)
    assert rel(root, table(res)) == {
        "a": ("pat1", "st1", "20140101", "PA", "0/a.png"),
        "b": ("pat1", "st2", "20150303", "L", "0/b.png"),
        "c": ("pat2", "st3", "20150303", "AP", "7/c.png"),
    }
    assert res.skipped_by_reason() == {"no usable study date": 1}


def test_eyepacs(tmp_path):
    root = str(tmp_path)
    for name in ["10_left.jpeg", "10_right.jpeg", "13_left.jpeg"]:
        touch(root, "train", name)
    touch(root, "test", "1_left.jpeg")
    touch(root, "test", "bad_name.jpeg")
    touch(root, "train", "10_left.jpeg.txt")       # a note beside an image: counted
    write_csv(os.path.join(root, "trainLabels.csv"), ["image", "level"],
              [["10_left", 0], ["10_right", 0], ["13_left", 1], ["13_right", 2]])
    res = BUILDERS["eyepacs"](root)
    assert rel(root, table(res)) == {
        "train-10_left": ("train-10", "left", "0", "left", "train/10_left.jpeg"),
        "train-10_right": ("train-10", "right", "0", "right", "train/10_right.jpeg"),
        "train-13_left": ("train-13", "left", "0", "left", "train/13_left.jpeg"),
        "test-1_left": ("test-1", "left", "0", "left", "test/1_left.jpeg"),
    }
    assert res.missing_files == 1  # 13_right is in the CSV only
    assert res.skipped_by_reason() == {"file not found": 1,
                                       "image name is not <patient>_<left|right>.<ext>": 1,
                                       "not an image file": 1}
    res = BUILDERS["eyepacs"](root, verify_files=False)
    assert rel(root, table(res))["train-13_right"] == ("train-13", "right", "0", "right",
                                                       "train/13_right.jpeg")


def test_odir(tmp_path):
    root = str(tmp_path)
    touch(root, "ODIR-5K", "ODIR-5K", "Training Images", "0_left.jpg")
    touch(root, "ODIR-5K", "ODIR-5K", "Training Images", "0_right.jpg")
    touch(root, "ODIR-5K", "ODIR-5K", "Testing Images", "0_left.jpg")  # another patient
    touch(root, "preprocessed_images", "0_left.jpg")  # derived copy: not read
    res = BUILDERS["odir"](root)
    base = "ODIR-5K/ODIR-5K/"
    assert rel(root, table(res)) == {
        "test-0_left": ("test-0", "left", "0", "left", base + "Testing Images/0_left.jpg"),
        "train-0_left": ("train-0", "left", "0", "left", base + "Training Images/0_left.jpg"),
        "train-0_right": ("train-0", "right", "0", "right", base + "Training Images/0_right.jpg"),
    }
    assert res.skipped == []


def test_oasis(tmp_path):
    root = str(tmp_path)
    # OASIS-1: raw Analyze pairs; processed images are derived and skipped.
    for f in ["OAS1_0001_MR1_mpr-1_anon.img", "OAS1_0001_MR1_mpr-1_anon.hdr",
              "OAS1_0001_MR1_mpr-2_anon.img", "OAS1_0001_MR1_mpr-2_anon.hdr"]:
        touch(root, "disc1", "OAS1_0001_MR1", "RAW", f)
    touch(root, "disc1", "OAS1_0001_MR1", "PROCESSED", "MPRAGE", "T88_111", "OAS1_0001_MR1_t88.img")
    touch(root, "disc1", "OAS1_0001_MR2", "RAW", "OAS1_0001_MR2_mpr-1_anon.img")  # no .hdr
    # OASIS-2 longitudinal.
    for s in ("MR1", "MR3"):
        touch(root, "OAS2_RAW_PART1", f"OAS2_0001_{s}", "RAW", "mpr-1.nifti.img")
        touch(root, "OAS2_RAW_PART1", f"OAS2_0001_{s}", "RAW", "mpr-1.nifti.hdr")
    # OASIS-3, XNAT export and BIDS.
    touch(root, "OAS30001_MR_d0129", "anat2", "NIFTI", "sub-OAS30001_ses-d0129_run-01_T1w.nii.gz")
    touch(root, "OAS30001_MR_d0129", "func1", "NIFTI", "sub-OAS30001_ses-d0129_task-rest_bold.nii.gz")
    touch(root, "bids", "sub-OAS30001", "ses-d2430", "anat", "sub-OAS30001_ses-d2430_T2w.nii.gz")
    # BIDS derivatives of that scan: the same acquisition, a trivial match
    touch(root, "bids", "derivatives", "sub-OAS30001", "ses-d2430", "anat",
          "sub-OAS30001_ses-d2430_desc-brain_T2w.nii.gz")
    touch(root, "bids", "sub-OAS30001", "ses-d2430", "anat",
          "sub-OAS30001_ses-d2430_space-MNI_T2w.nii.gz")
    # an upper-case Analyze pair
    touch(root, "OAS2_RAW_PART1", "OAS2_0002_MR1", "RAW", "MPR-1.NIFTI.IMG")
    touch(root, "OAS2_RAW_PART1", "OAS2_0002_MR1", "RAW", "MPR-1.NIFTI.HDR")
    res = BUILDERS["oasis"](root)
    assert rel(root, table(res)) == {
        "OAS1_0001/MR1/mpr-1": ("OAS1_0001", "MR1", "1", "mpr-1",
                                "disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.img"),
        "OAS1_0001/MR1/mpr-2": ("OAS1_0001", "MR1", "1", "mpr-2",
                                "disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-2_anon.img"),
        "OAS2_0001/MR1/mpr-1": ("OAS2_0001", "MR1", "1", "mpr-1",
                                "OAS2_RAW_PART1/OAS2_0001_MR1/RAW/mpr-1.nifti.img"),
        "OAS2_0001/MR3/mpr-1": ("OAS2_0001", "MR3", "3", "mpr-1",
                                "OAS2_RAW_PART1/OAS2_0001_MR3/RAW/mpr-1.nifti.img"),
        "OAS30001/d0129/run-01_T1w": ("OAS30001", "d0129", "129", "run-01_T1w",
                                      "OAS30001_MR_d0129/anat2/NIFTI/sub-OAS30001_ses-d0129_run-01_T1w.nii.gz"),
        "OAS30001/d2430/T2w": ("OAS30001", "d2430", "2430", "T2w",
                               "bids/sub-OAS30001/ses-d2430/anat/sub-OAS30001_ses-d2430_T2w.nii.gz"),
        "OAS2_0002/MR1/MPR-1": ("OAS2_0002", "MR1", "1", "MPR-1",
                                "OAS2_RAW_PART1/OAS2_0002_MR1/RAW/MPR-1.NIFTI.IMG"),
    }
    assert res.skipped_by_reason() == {
        "OASIS-3 derived image (BIDS derivatives/, desc-/space- names); raw scans are used": 2,
        "derived image (PROCESSED/FSL_SEG); raw scans are used": 1,
        "Analyze/NIfTI pair without its .hdr header": 1,
        "OASIS-3 file outside an anat*/ folder (functional/diffusion scans are not used)": 1,
    }


def test_ccii_ct(tmp_path):
    root = str(tmp_path)
    touch(root, "NCP", "7", "1234", "0000.png")
    touch(root, "NCP", "7", "1234", "0001.png")
    touch(root, "NCP", "7", "1301", "0000.jpg")
    touch(root, "CP", "7", "88", "0000.png")  # same number, other class: another patient
    os.makedirs(os.path.join(root, "Normal", "3", "9"))  # empty scan folder
    touch(root, "ncp", "8", "1200", "0000.png")  # a class misspelt: counted, not dropped
    write_csv(os.path.join(root, "unzip_filenames.csv"), ["zip_file", "label", "patient_id", "scan_id", "n_slice"],
              [["COVID19-1.zip", "NCP", "7", "1234", 2], ["CP-2.zip", "CP", "8", "90", 40]])
    res = BUILDERS["ccii_ct"](root)
    assert rel(root, table(res)) == {
        "NCP/7/1234": ("NCP-7", "1234", "1234", "", "NCP/7/1234"),
        "NCP/7/1301": ("NCP-7", "1301", "1301", "", "NCP/7/1301"),
        "CP/7/88": ("CP-7", "88", "88", "", "CP/7/88"),
    }
    assert res.missing_files == 1
    assert res.skipped_by_reason() == {"scan folder holds no slice images": 1,
                                       "series folder missing or empty": 1,
                                       "not a class folder (NCP, CP, Normal; names are "
                                       "case-sensitive)": 1}
    res = BUILDERS["ccii_ct"](root, verify_files=False)
    assert rel(root, table(res))["CP/8/90"] == ("CP-8", "90", "90", "", "CP/8/90")


def test_deeplesion(tmp_path):
    root = str(tmp_path)
    touch(root, "Images_png", "000001_01_01", "103.png")
    touch(root, "Images_png", "000001_01_01", "104.png")
    touch(root, "Images_png", "000001_02_01", "050.png")
    touch(root, "Images_png", "notes", "x.png")
    write_csv(os.path.join(root, "DL_info.csv"),
              ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index"],
              [["000001_01_01_103.png", 1, 1, 1, 103], ["000002_03_02_010.png", 2, 3, 2, 10],
               ["bad.png", 3, 1, 1, 1]])
    res = BUILDERS["deeplesion"](root, verify_files=False)
    assert rel(root, table(res)) == {
        "000001_01_01": ("000001", "01", "1", "01", "Images_png/000001_01_01"),
        "000001_02_01": ("000001", "02", "2", "01", "Images_png/000001_02_01"),
        "000002_03_02": ("000002", "03", "3", "02", "Images_png/000002_03_02"),
    }
    assert res.skipped_by_reason() == {
        "folder name is not <patient:6>_<study:2>_<series:2>": 1,
        "File_name is not <patient>_<study>_<series>_<slice>.png": 1}
    assert BUILDERS["deeplesion"](root).missing_files == 1


def test_tcga(tmp_path):
    root = str(tmp_path)
    touch(root, "BRCA", "TCGA-A1-A0SB-01Z-00-DX1.E7F4A1B2", "12_34.png")
    touch(root, "BRCA", "TCGA-A1-A0SB-01Z-00-DX1.E7F4A1B2", "12_35.png")
    touch(root, "flat", "TCGA-A1-A0SB-11A-01-TS1_1024_2048.jpg")
    touch(root, "flat", "TCGA-B6-A0RE-01Z-00-DX1_0_0.png")
    touch(root, "other", "tile_1.png")
    # a tiler's "-" before the coordinates: still one study per slide, not one per tile
    touch(root, "dash", "TCGA-BH-A0B3-01Z-00-DX1-1024-2048.png")
    touch(root, "dash", "TCGA-BH-A0B3-01Z-00-DX1-0-512.png")
    # a patient's folder holding several slides' tiles names no slide
    touch(root, "TCGA-C8-A12P", "5f3e", "0_0.png")
    touch(root, "dash", "tiling-log.txt")          # no tile: counted, not silently dropped
    res = BUILDERS["tcga"](root)
    t = rel(root, table(res))
    assert t == {
        "BRCA/TCGA-A1-A0SB-01Z-00-DX1.E7F4A1B2/12_34": (
            "TCGA-A1-A0SB", "TCGA-A1-A0SB-01Z-00-DX1", "", "",
            "BRCA/TCGA-A1-A0SB-01Z-00-DX1.E7F4A1B2/12_34.png"),
        "BRCA/TCGA-A1-A0SB-01Z-00-DX1.E7F4A1B2/12_35": (
            "TCGA-A1-A0SB", "TCGA-A1-A0SB-01Z-00-DX1", "", "",
            "BRCA/TCGA-A1-A0SB-01Z-00-DX1.E7F4A1B2/12_35.png"),
        "flat/TCGA-A1-A0SB-11A-01-TS1_1024_2048": (
            "TCGA-A1-A0SB", "TCGA-A1-A0SB-11A-01-TS1", "", "", "flat/TCGA-A1-A0SB-11A-01-TS1_1024_2048.jpg"),
        "flat/TCGA-B6-A0RE-01Z-00-DX1_0_0": (
            "TCGA-B6-A0RE", "TCGA-B6-A0RE-01Z-00-DX1", "", "", "flat/TCGA-B6-A0RE-01Z-00-DX1_0_0.png"),
        "dash/TCGA-BH-A0B3-01Z-00-DX1-1024-2048": (
            "TCGA-BH-A0B3", "TCGA-BH-A0B3-01Z-00-DX1", "", "",
            "dash/TCGA-BH-A0B3-01Z-00-DX1-1024-2048.png"),
        "dash/TCGA-BH-A0B3-01Z-00-DX1-0-512": (
            "TCGA-BH-A0B3", "TCGA-BH-A0B3-01Z-00-DX1", "", "",
            "dash/TCGA-BH-A0B3-01Z-00-DX1-0-512.png"),
    }
    assert res.skipped_by_reason() == {
        "no TCGA barcode (TCGA-XX-XXXX...) in the file or folder names": 1,
        "a TCGA barcode without the slide (TCGA-TSS-participant-sample-portion-slide)": 1,
        "not an image file": 1}


def test_duplicate_image_is_reported_not_dropped_silently(tmp_path):
    root = str(tmp_path)
    touch(root, "Training Images", "5_left.jpg")
    touch(root, "Training Images", "sub", "5_left.png")  # same patient and eye twice
    res = BUILDERS["odir"](root)
    assert len(res.rows) == 1
    assert res.skipped_by_reason() == {"duplicate image id": 1}


def test_cli_writes_manifest_with_relative_paths_and_prints_counts(tmp_path, capsys):
    root = str(tmp_path / "eyepacs")
    for p in range(6):
        touch(root, "train", f"{p}_left.jpeg")
        touch(root, "train", f"{p}_right.jpeg")
    touch(root, "test", "100_left.jpeg")
    out = os.path.join(root, "manifest.csv")
    assert build_manifest.main(["--dataset", "eyepacs", "--root", root, "--out", out, "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "images: 13\n" in text
    assert "patients: 7\n" in text
    assert "patients with >= 2 images: 6\n" in text
    assert "studies: 13\n" in text
    assert "files missing: 0\n" in text
    with open(out) as f:
        assert "train/0_left.jpeg" in f.read()  # written relative to the manifest's folder
    rows = read_manifest(out)
    assert all(os.path.isfile(r.path) for r in rows)  # resolved back to real files
    assert {r.modality for r in rows} == {"fundus"}
    counts = build_manifest.summarize(rows)
    assert sum(counts["rows_per_split"].values()) == 13
    assert set(counts["rows_per_split"]) <= {"train", "val", "test"}
    for line in text.splitlines():
        if line.startswith("split "):
            name, n = line.split()[1].rstrip(":"), int(line.split()[2])
            assert counts["rows_per_split"][name] == n
    # A manifest outside the dataset folder keeps absolute paths.
    out2 = str(tmp_path / "elsewhere" / "m.csv")
    build_manifest.main(["--dataset", "eyepacs", "--root", root, "--out", out2])
    with open(out2) as f:
        assert os.path.join(root, "train", "0_left.jpeg") in f.read()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_rejects_missing_root(name, tmp_path):
    with pytest.raises(ValueError, match="not a folder|no "):
        BUILDERS[name](str(tmp_path / "absent"))


# ---------------------------------------------------------------- metadata paths stay inside the root

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position"]


def outside_message(meta, line, full, root):
    return (rf"^{re.escape(meta)}:{line}: image path {re.escape(repr(full))} "
            rf"is outside the dataset root {re.escape(root)};")


def nih_escape(tmp_path):
    root = str(tmp_path / "nih")
    write_csv(os.path.join(root, "Data_Entry_2017.csv"), NIH_HEADER,
              [["00000001_000.png", "No Finding", "0", "1", "58", "M", "PA"],
               ["00000001_000/../../../outside.png", "No Finding", "1", "1", "58", "M", "PA"]])
    touch(root, "images", "00000001_000.png")
    return root, "Data_Entry_2017.csv", 3


def padchest_absolute(tmp_path):
    root = str(tmp_path / "padchest")
    write_csv(os.path.join(root, "PADCHEST_x.csv"),
              ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "Projection"],
              [["a.png", "0", "20140101", "st1", "pat1", "PA"],
               ["b.png", "0", "20140101", "st2", "pat1", "PA"],
               ["outside.png", str(tmp_path), "20150303", "st3", "pat2", "AP"]])
    touch(root, "0", "a.png")
    return root, "PADCHEST_x.csv", 4


def padchest_dotdot(tmp_path):
    root = str(tmp_path / "padchest")
    write_csv(os.path.join(root, "PADCHEST_x.csv"),
              ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "Projection"],
              [["../../outside.png", "0", "20150303", "st3", "pat2", "AP"]])
    return root, "PADCHEST_x.csv", 2


def mimic_dotdot(tmp_path):
    root = str(tmp_path / "mimic")
    write_csv(os.path.join(root, "mimic-cxr-2.0.0-metadata.csv"),
              ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"],
              [["../../../../../outside", "10000032", "50414267", "PA", "21800506", "1"]])
    return root, "mimic-cxr-2.0.0-metadata.csv", 2


def ccii_dotdot(tmp_path):
    root = str(tmp_path / "ccii")
    write_csv(os.path.join(root, "unzip_filenames.csv"), ["zip_file", "label", "patient_id", "scan_id"],
              [["x.zip", "NCP", "../..", "outside"]])
    return root, "unzip_filenames.csv", 2


ESCAPES = {"nih_chestxray14": nih_escape, "padchest": padchest_absolute, "mimic_cxr": mimic_dotdot,
           "ccii_ct": ccii_dotdot}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("case", ["nih_chestxray14", "padchest", "padchest-dotdot", "mimic_cxr",
                                  "ccii_ct"])
def test_metadata_path_outside_the_root_is_an_error_naming_file_and_line(tmp_path, case, verify):
    make = padchest_dotdot if case == "padchest-dotdot" else ESCAPES[case]
    root, meta, line = make(tmp_path)
    touch(str(tmp_path), "outside.png")            # it exists: a check by existence would let it through
    touch(str(tmp_path), "outside.jpeg")
    os.makedirs(tmp_path / "outside", exist_ok=True)
    with pytest.raises(PathOutsideRootError, match=f"^{re.escape(os.path.join(root, meta))}:{line}: "
                                                  rf"image path '{re.escape(str(tmp_path))}/outside"):
        BUILDERS[case.split("-")[0]](root, verify_files=verify)


def test_outside_message_names_the_resolved_path_and_root(tmp_path):
    root, meta, line = nih_escape(tmp_path)
    with pytest.raises(DatasetLayoutError, match=outside_message(
            os.path.join(root, meta), line, str(tmp_path / "outside.png"), root)):
        BUILDERS["nih_chestxray14"](root)


def test_chexpert_paths_are_re_rooted_never_followed(tmp_path):
    # CheXpert's Path column is taken from the split folder on: leading folders, even an
    # absolute prefix, are dropped, and a path with '..' is not of the documented form.
    root = str(tmp_path / "chexpert")
    write_csv(os.path.join(root, "train.csv"), ["Path", "Frontal/Lateral", "AP/PA"], [
        [f"{tmp_path}/train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP"],
        ["CheXpert-v1.0-small/train/patient00002/study1/../../../../x.jpg", "Frontal", "AP"]])
    touch(root, "train", "patient00001", "study1", "view1_frontal.jpg")
    res = BUILDERS["chexpert"](root)
    assert [r.path for r in res.rows] == [os.path.join(root, "train/patient00001/study1/view1_frontal.jpg")]
    assert res.skipped_by_reason() == {"Path is not <split>/patientN/studyN/<file>": 1}


def test_dotdot_that_stays_inside_the_root_is_accepted(tmp_path):
    root = str(tmp_path / "padchest")
    write_csv(os.path.join(root, "PADCHEST_x.csv"),
              ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "Projection"],
              [["a.png", "0/../1", "20140101", "st1", "pat1", "PA"]])
    touch(root, "1", "a.png")
    assert [r.path for r in BUILDERS["padchest"](root).rows] == [os.path.join(root, "1", "a.png")]


def test_symlinked_image_folder_inside_the_root_is_followed(tmp_path):
    # The check is on the path as written: an image folder kept on another disk and
    # linked into the root is the user's own layout.
    root = str(tmp_path / "nih")
    write_csv(os.path.join(root, "Data_Entry_2017.csv"), NIH_HEADER,
              [["00000001_000.png", "No Finding", "0", "1", "58", "M", "PA"]])
    touch(str(tmp_path), "disk2", "images", "00000001_000.png")
    os.symlink(tmp_path / "disk2", os.path.join(root, "images_001"))
    res = BUILDERS["nih_chestxray14"](root)
    assert [r.path for r in res.rows] == [os.path.join(root, "images_001", "images", "00000001_000.png")]


def test_relative_root_gives_absolute_paths_inside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch("eyes", "train", "10_left.jpeg")
    res = BUILDERS["eyepacs"]("eyes")
    assert [r.path for r in res.rows] == [str(tmp_path / "eyes" / "train" / "10_left.jpeg")]


# ---------------------------------------------------------------- metadata text


def test_metadata_csv_with_byte_order_mark_is_read(tmp_path):
    root = str(tmp_path)
    write_csv(os.path.join(root, "Data_Entry_2017.csv"), NIH_HEADER,
              [["00000001_000.png", "No Finding", "0", "1", "58", "M", "PA"]], encoding="utf-8-sig")
    with open(os.path.join(root, "Data_Entry_2017.csv"), "rb") as f:
        assert f.read(3) == b"\xef\xbb\xbf"
    res = BUILDERS["nih_chestxray14"](root, verify_files=False)
    assert [(r.patient_id, r.view) for r in res.rows] == [("1", "PA")]
    write_csv(os.path.join(root, "m", "mimic-cxr-2.0.0-metadata.csv.gz"),
              ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"],
              [["d1", "10000032", "50414267", "PA", "21800506", "1"]], gz=True, encoding="utf-8-sig")
    assert [r.patient_id for r in BUILDERS["mimic_cxr"](os.path.join(root, "m"), verify_files=False).rows] \
        == ["10000032"]


def test_metadata_that_is_not_utf8_is_an_error_naming_the_file(tmp_path):
    root = str(tmp_path)
    write_csv(os.path.join(root, "Data_Entry_2017.csv"), NIH_HEADER,
              [["00000001_000.png", "No Finding", "0", "1", "58", "M", "PA"],
               ["00000001_001.png", "Ca\xf1on", "1", "1", "58", "M", "PA"]], encoding="latin-1")
    meta = os.path.join(root, "Data_Entry_2017.csv")
    with pytest.raises(DatasetLayoutError, match=rf"^{re.escape(meta)}: unreadable CSV after line \d+ "
                                                 r"\(UnicodeDecodeError"):
        BUILDERS["nih_chestxray14"](root, verify_files=False)


def test_metadata_line_numbers_count_blank_lines(tmp_path):
    root = str(tmp_path)
    with open(os.path.join(root, "Data_Entry_2017.csv"), "w") as f:
        f.write(",".join(NIH_HEADER) + "\n\n00000001_000.png,No Finding,x,1,58,M,PA\n")
    res = BUILDERS["nih_chestxray14"](root, verify_files=False)
    assert res.skipped == [("Data_Entry_2017.csv:3 ('1', 'x')", "non-integer Patient ID or Follow-up #")]


# ---------------------------------------------------------------- command line errors


def cli_error(capsys, argv):
    """Runs build_manifest expecting failure; returns its single stderr line."""
    assert build_manifest.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_cli_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    out = str(tmp_path / "m.csv")
    absent = str(tmp_path / "absent")
    assert cli_error(capsys, ["--dataset", "tcga", "--root", absent, "--out", out]) == \
        f"error: {absent}: dataset root is not a folder"
    root, meta, line = nih_escape(tmp_path)
    msg = cli_error(capsys, ["--dataset", "nih_chestxray14", "--root", root, "--out", out])
    assert msg.startswith(f"error: {os.path.join(root, meta)}:{line}: image path "
                          f"{str(tmp_path / 'outside.png')!r} is outside the dataset root {root};")
    bad = str(tmp_path / "badcols")
    write_csv(os.path.join(bad, "Data_Entry_2017.csv"), ["Image Index", "Patient ID"], [["x.png", "1"]])
    msg = cli_error(capsys, ["--dataset", "nih_chestxray14", "--root", bad, "--out", out])
    assert msg.startswith(f"error: {os.path.join(bad, 'Data_Entry_2017.csv')}: missing columns "
                          "['Follow-up #', 'View Position']")
    assert not os.path.exists(out)


def test_cli_refuses_an_existing_output_unless_told_to_overwrite(tmp_path, capsys):
    root = str(tmp_path / "eyepacs")
    touch(root, "train", "1_left.jpeg")
    touch(root, "train", "1_right.jpeg")
    out = tmp_path / "m.csv"
    keep = ",".join(COLUMNS) + "\n"   # a manifest (only a manifest is ever replaced)
    out.write_text(keep)
    assert cli_error(capsys, ["--dataset", "eyepacs", "--root", root, "--out", str(out)]) == \
        f"error: {out} already exists; pass --overwrite to replace it"
    assert out.read_text() == keep
    argv = ["--dataset", "eyepacs", "--root", root, "--out", str(out)]
    assert build_manifest.main(argv + ["--overwrite"]) == 0
    assert "images: 2\n" in capsys.readouterr().out
    assert len(read_manifest(str(out))) == 2


def test_cli_manifest_has_the_umask_permissions(tmp_path, capsys):
    root = str(tmp_path / "eyepacs")
    touch(root, "train", "1_left.jpeg")
    out = str(tmp_path / "new" / "m.csv")
    old = os.umask(0o022)
    try:
        assert build_manifest.main(["--dataset", "eyepacs", "--root", root, "--out", out]) == 0
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path / "new")) == ["m.csv", "m_preview.png"]   # and its picture
    for name in ("m.csv", "m_preview.png"):
        assert os.stat(tmp_path / "new" / name).st_mode & 0o777 == 0o644


def test_folders_of_visits_equal_as_numbers_keep_one_order_whatever_the_listing(tmp_path,
                                                                                 monkeypatch):
    """visit1 and visit01 compared equal as numbers, so their orders followed os.listdir:
    the same tree gave another manifest on another file system. Ties go by the names."""
    root = str(tmp_path)
    for visit in ("visit1", "visit01", "visit2"):
        touch(root, "p1", visit, "a.png")
    first = table(BUILDERS["folders"](root, modality="xray"))
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: sorted(real(p), reverse=True))
    assert table(BUILDERS["folders"](root, modality="xray")) == first
    assert {k: v[2] for k, v in first.items()} == {
        "p1/visit01/a.png": "0", "p1/visit1/a.png": "1", "p1/visit2/a.png": "2"}
