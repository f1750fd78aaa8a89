"""The dataset builders' labels: exact values for hand-made source rows, the error naming
file and line for an unknown value, labels.csv beside the manifest, and the history
app reading one of its columns.

Source trees are small fakes in each dataset's published layout (empty image files;
builders never decode).
"""

import csv
import os
import re

import pytest

from mami_jax.data import build_manifest
from mami_jax.data.datasets import chexpert, nih_chestxray14, odir
from mami_jax.data.datasets.common import UnknownLabelError
from mami_jax.data.datasets.registry import BUILDERS
from mami_jax.data.labels import LabelError, read_labels, write_labels
from mami_jax.data.manifest import read_manifest


def touch(*parts):
    path = os.path.join(*parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def labels_of(result, column):
    """{local image id: value of column}."""
    return {k.split(":", 1)[1]: v[column] for k, v in result.labels.items()}


def read_table(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def unknown(path, line, column, value):
    return rf"^{re.escape(path)}:{line}: {re.escape(column)}={re.escape(repr(value))} is not a known label value"


# ---------------------------------------------------------------- ChestX-ray14

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position"]


def nih_tree(root, findings):
    rows = [[f"0000000{i + 1}_000.png", text, "0", str(i + 1), "50", "F", "PA"]
            for i, text in enumerate(findings)]
    write_csv(os.path.join(root, "Data_Entry_2017.csv"), NIH_HEADER, rows)


def test_nih_findings_become_one_column_per_finding(tmp_path):
    root = str(tmp_path)
    nih_tree(root, ["No Finding", "Cardiomegaly|Effusion", "Pleural_Thickening"])
    res = BUILDERS["nih_chestxray14"](root, verify_files=False)
    assert res.label_columns == ("Finding Labels", "No Finding") + nih_chestxray14.FINDINGS
    assert len(res.label_columns) == 16
    assert labels_of(res, "Finding Labels") == {"00000001_000": "No Finding",
                                                "00000002_000": "Cardiomegaly|Effusion",
                                                "00000003_000": "Pleural_Thickening"}
    assert labels_of(res, "No Finding") == {"00000001_000": "1", "00000002_000": "0", "00000003_000": "0"}
    assert labels_of(res, "Cardiomegaly") == {"00000001_000": "0", "00000002_000": "1", "00000003_000": "0"}
    assert labels_of(res, "Effusion") == {"00000001_000": "0", "00000002_000": "1", "00000003_000": "0"}
    assert labels_of(res, "Pleural_Thickening")["00000003_000"] == "1"
    assert sum(int(v) for k, v in res.labels["nih_chestxray14:00000002_000"].items()
               if k != "Finding Labels") == 2


@pytest.mark.parametrize("text", ["Cardiomegaly|Pneumonitis", "", "No Finding|Mass", "Pleural Thickening"])
def test_nih_unknown_finding_is_an_error_naming_file_and_line(tmp_path, text):
    root = str(tmp_path)
    nih_tree(root, ["No Finding", "Mass", text])
    with pytest.raises(UnknownLabelError, match=unknown(os.path.join(root, "Data_Entry_2017.csv"), 4,
                                                        "Finding Labels", text)):
        BUILDERS["nih_chestxray14"](root, verify_files=False)


def test_nih_without_finding_column_writes_no_labels(tmp_path):
    root = str(tmp_path)
    write_csv(os.path.join(root, "Data_Entry_2017.csv"),
              ["Image Index", "Follow-up #", "Patient ID", "View Position"],
              [["00000001_000.png", "0", "1", "PA"]])
    res = BUILDERS["nih_chestxray14"](root, verify_files=False)
    assert len(res.rows) == 1 and res.label_columns == () and res.labels == {}


# ---------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + list(chexpert.OBSERVATIONS)


def chexpert_tree(root, edema_train=("1.0", "-1.0", "", "0.0"), valid_edema="1.0"):
    """Three train images and one valid image; Edema is varied, the rest fixed."""
    edema_at = chexpert.OBSERVATIONS.index("Edema")
    paths = ["patient00001/study1/view1_frontal.jpg", "patient00001/study2/view1_frontal.jpg",
             "patient00002/study1/view1_frontal.jpg", "patient00003/study1/view1_frontal.jpg"]
    rows = []
    for path, edema in zip(paths, edema_train):
        values = [""] * 14
        values[edema_at] = edema
        values[-1] = "1.0"                       # Support Devices
        rows.append([f"CheXpert-v1.0-small/train/{path}", "F", 60, "Frontal", "AP"] + values)
    write_csv(os.path.join(root, "train.csv"), CHEXPERT_HEADER, rows)
    values = ["0.0"] * 14
    values[edema_at] = valid_edema
    write_csv(os.path.join(root, "valid.csv"), CHEXPERT_HEADER,
              [["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "M", 70, "Frontal",
                "PA"] + values])


@pytest.mark.parametrize("policy, uncertain", [("ones", "1"), ("zeros", "0"), ("keep", "-1")])
def test_chexpert_observations_with_the_uncertain_policy(tmp_path, policy, uncertain):
    root = str(tmp_path)
    chexpert_tree(root)
    res = chexpert.build(root, verify_files=False, uncertain=policy)
    assert res.label_columns == chexpert.OBSERVATIONS
    assert labels_of(res, "Edema") == {
        "patient00001/study1/view1_frontal": "1",
        "patient00001/study2/view1_frontal": uncertain,
        "patient00002/study1/view1_frontal": "0",      # blank: not mentioned
        "patient00003/study1/view1_frontal": "0",
        "patient64541/study1/view1_frontal": "1",
    }
    assert labels_of(res, "Support Devices")["patient00002/study1/view1_frontal"] == "1"
    assert labels_of(res, "Support Devices")["patient64541/study1/view1_frontal"] == "0"
    assert labels_of(res, "Pneumonia") == dict.fromkeys(labels_of(res, "Pneumonia"), "0")


@pytest.mark.parametrize("value", ["2.0", "yes", "nan"])
def test_chexpert_unknown_value_is_an_error_naming_file_and_line(tmp_path, value):
    root = str(tmp_path)
    chexpert_tree(root, edema_train=("1.0", "0.0", value, ""))
    with pytest.raises(UnknownLabelError, match=unknown(os.path.join(root, "train.csv"), 4, "Edema", value)):
        chexpert.build(root, verify_files=False)


def test_chexpert_policy_and_partial_columns_are_refused(tmp_path):
    root = str(tmp_path)
    chexpert_tree(root)
    with pytest.raises(ValueError, match=r"uncertain='half': expected one of ones, zeros, keep"):
        chexpert.build(root, uncertain="half")
    write_csv(os.path.join(root, "valid.csv"), ["Path", "Edema"],
              [["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "1.0"]])
    with pytest.raises(ValueError, match=rf"{re.escape(os.path.join(root, 'valid.csv'))}: has some "
                                         r"observation columns but not \['No Finding'"):
        chexpert.build(root, verify_files=False)


# ---------------------------------------------------------------- EyePACS

def test_eyepacs_level_from_both_label_files(tmp_path):
    root = str(tmp_path)
    for name in ["10_left.jpeg", "10_right.jpeg", "13_left.jpeg"]:
        touch(root, "train", name)
    touch(root, "test", "1_left.jpeg")
    touch(root, "test", "2_left.jpeg")     # not in retinopathy_solution.csv: no label
    write_csv(os.path.join(root, "trainLabels.csv"), ["image", "level"],
              [["10_left", 0], ["10_right", 4], ["13_left", 2], ["13_right", 3]])
    write_csv(os.path.join(root, "retinopathy_solution.csv"), ["image", "level", "Usage"],
              [["1_left", 1, "Public"]])
    res = BUILDERS["eyepacs"](root, verify_files=False)
    assert res.label_columns == ("level",)
    assert labels_of(res, "level") == {"train-10_left": "0", "train-10_right": "4", "train-13_left": "2",
                                       "train-13_right": "3", "test-1_left": "1"}
    assert {r.image_id.split(":")[1] for r in res.rows} - set(labels_of(res, "level")) == {"test-2_left"}
    # Verifying files: 13_right is not on disk, so neither its row nor its label.
    assert "train-13_right" not in labels_of(BUILDERS["eyepacs"](root), "level")


@pytest.mark.parametrize("rows, line, message", [
    ([["10_left", 0], ["10_right", 5]], 3, r"level='5' is not a known label value \(expected a grade 0-4\)"),
    ([["10_left", 0], ["10_right", ""]], 3, r"level='' is not a known label value"),
    ([["10_left", 0], ["10_left", 2]], 3, r"image '10_left' has level 2 here and 0 at trainLabels.csv:2"),
])
def test_eyepacs_bad_level_is_an_error_naming_file_and_line(tmp_path, rows, line, message):
    root = str(tmp_path)
    touch(root, "train", "10_left.jpeg")
    write_csv(os.path.join(root, "trainLabels.csv"), ["image", "level"], rows)
    with pytest.raises(UnknownLabelError, match=rf"^{re.escape(os.path.join(root, 'trainLabels.csv'))}:"
                                                rf"{line}: {message}"):
        BUILDERS["eyepacs"](root)


# ---------------------------------------------------------------- ODIR

ODIR_HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
               "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"]
ODIR_ROWS = [
    [0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", 0, 0, 0, 1, 0, 0, 0, 0],
    [1, 57, "Male", "1_left.jpg", "1_right.jpg", "normal fundus", "normal fundus", 1, 0, 0, 0, 0, 0, 0, 0],
    [4, 53, "Male", "4_left.jpg", "4_right.jpg",
     "macular epiretinal membrane", "mild nonproliferative retinopathy，hypertensive retinopathy",
     0, 1, 0, 0, 0, 1, 0, 1],
]


def odir_tree(root):
    base = os.path.join(root, "ODIR-5K", "ODIR-5K")
    for p in (0, 1, 4):
        for eye in ("left", "right"):
            touch(base, "Training Images", f"{p}_{eye}.jpg")
    touch(base, "Testing Images", "937_left.jpg")
    return base


def check_odir(res):
    assert res.label_columns == odir.FLAGS + ("Diagnostic Keywords",)
    kw = labels_of(res, "Diagnostic Keywords")
    assert kw == {"train-0_left": "cataract", "train-0_right": "normal fundus",
                  "train-1_left": "normal fundus", "train-1_right": "normal fundus",
                  "train-4_left": "macular epiretinal membrane",
                  "train-4_right": "mild nonproliferative retinopathy，hypertensive retinopathy"}
    flags = {k: "".join(res.labels[f"odir:{k}"][f] for f in odir.FLAGS) for k in kw}
    assert flags == {"train-0_left": "00010000", "train-0_right": "00010000",
                     "train-1_left": "10000000", "train-1_right": "10000000",
                     "train-4_left": "01000101", "train-4_right": "01000101"}
    assert "odir:test-937_left" not in res.labels and len(res.rows) == 7


def test_odir_labels_from_the_kaggle_csv(tmp_path):
    root = str(tmp_path)
    odir_tree(root)
    # full_df.csv repeats a patient's row per image; identical repeats are fine.
    write_csv(os.path.join(root, "full_df.csv"), ODIR_HEADER + ["filename"],
              [r + [f"{r[0]}_right.jpg"] for r in ODIR_ROWS] + [ODIR_ROWS[0] + ["0_left.jpg"]])
    check_odir(BUILDERS["odir"](root))


def test_odir_labels_from_the_spreadsheet(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    root = str(tmp_path)
    base = odir_tree(root)
    book = openpyxl.Workbook()
    book.active.append(ODIR_HEADER)
    for r in ODIR_ROWS:
        book.active.append(r)
    book.save(os.path.join(base, "data.xlsx"))
    write_csv(os.path.join(root, "full_df.csv"), ODIR_HEADER, [])   # data.xlsx comes first
    res = BUILDERS["odir"](root)
    check_odir(res)
    assert any(n.endswith("data.xlsx") for n in res.notes)
    book.active.append([5, 60, "Male", "5_left.jpg", "5_right.jpg", "normal fundus", "normal fundus",
                        1, 0, 0, 0, 0, 0, 2, 0])
    book.save(os.path.join(base, "data.xlsx"))
    with pytest.raises(UnknownLabelError, match=unknown(os.path.join(base, "data.xlsx"), 5, "M", "2")):
        BUILDERS["odir"](root)


@pytest.mark.parametrize("column, value, expected", [
    ("G", "x", "0 or 1"), ("Left-Diagnostic Keywords", "", "the eye's diagnostic keywords"),
    ("ID", "P7", "the patient's integer ID")])
def test_odir_bad_annotation_is_an_error_naming_file_and_line(tmp_path, column, value, expected):
    root = str(tmp_path)
    odir_tree(root)
    rows = [list(r) for r in ODIR_ROWS]
    rows[1][ODIR_HEADER.index(column)] = value
    write_csv(os.path.join(root, "data.csv"), ODIR_HEADER, rows)
    with pytest.raises(UnknownLabelError, match=unknown(os.path.join(root, "data.csv"), 3, column, value)
                       + rf" \(expected {re.escape(expected)}\)"):
        BUILDERS["odir"](root)


def test_odir_conflicting_repeat_is_an_error(tmp_path):
    root = str(tmp_path)
    odir_tree(root)
    other = list(ODIR_ROWS[0])
    other[ODIR_HEADER.index("C")] = 0
    write_csv(os.path.join(root, "full_df.csv"), ODIR_HEADER, ODIR_ROWS + [other])
    with pytest.raises(UnknownLabelError, match=r"full_df.csv:5: ID 0 is labelled differently at "
                                                r"full_df.csv:2$"):
        BUILDERS["odir"](root)


def test_odir_without_annotations_writes_no_labels(tmp_path):
    root = str(tmp_path)
    odir_tree(root)
    res = BUILDERS["odir"](root)
    assert len(res.rows) == 7 and res.label_columns == () and res.labels == {}


# ---------------------------------------------------------------- CC-CCII

def test_ccii_class_from_folder_and_csv(tmp_path):
    root = str(tmp_path)
    touch(root, "NCP", "7", "1234", "0000.png")
    touch(root, "CP", "7", "88", "0000.png")
    touch(root, "Normal", "3", "9", "0000.png")
    write_csv(os.path.join(root, "unzip_filenames.csv"), ["zip_file", "label", "patient_id", "scan_id"],
              [["CP-2.zip", "CP", "8", "90"]])
    res = BUILDERS["ccii_ct"](root, verify_files=False)
    assert labels_of(res, "label") == {"NCP/7/1234": "NCP", "CP/7/88": "CP", "Normal/3/9": "Normal",
                                       "CP/8/90": "CP"}


def test_ccii_unknown_class_is_an_error_naming_file_and_line(tmp_path):
    root = str(tmp_path)
    touch(root, "NCP", "7", "1234", "0000.png")
    write_csv(os.path.join(root, "unzip_filenames.csv"), ["zip_file", "label", "patient_id", "scan_id"],
              [["CP-2.zip", "CP", "8", "90"], ["x.zip", "COVID", "9", "91"]])
    with pytest.raises(UnknownLabelError, match=unknown(os.path.join(root, "unzip_filenames.csv"), 3,
                                                        "label", "COVID") + r" \(expected NCP or CP or Normal\)"):
        BUILDERS["ccii_ct"](root, verify_files=False)


# ---------------------------------------------------------------- labels.csv and its readers

def test_build_manifest_writes_labels_beside_the_manifest(tmp_path, capsys):
    root = str(tmp_path / "chexpert")
    chexpert_tree(root)
    for p in ["train/patient00001/study1/view1_frontal.jpg", "train/patient00001/study2/view1_frontal.jpg",
              "train/patient00002/study1/view1_frontal.jpg", "valid/patient64541/study1/view1_frontal.jpg"]:
        touch(root, p)          # patient00003 is missing on disk: no row, no label
    out = os.path.join(root, "manifest.csv")
    assert build_manifest.main(["--dataset", "chexpert", "--root", root, "--out", out,
                                "--uncertain", "zeros"]) == 0
    labels_path = os.path.join(root, "labels.csv")
    assert f"labels: 4 images -> {labels_path}\n" in capsys.readouterr().out
    table = read_table(labels_path)
    assert list(table[0]) == ["image_id"] + list(chexpert.OBSERVATIONS)
    rows = read_manifest(out)
    assert [t["image_id"] for t in table] == [r.image_id for r in rows]
    assert {t["image_id"]: t["Edema"] for t in table} == {
        "chexpert:patient00001/study1/view1_frontal": "1", "chexpert:patient00001/study2/view1_frontal": "0",
        "chexpert:patient00002/study1/view1_frontal": "0", "chexpert:patient64541/study1/view1_frontal": "1"}
    # An existing labels.csv is replaced only with --overwrite, like the manifest.
    os.remove(out)
    assert build_manifest.main(["--dataset", "chexpert", "--root", root, "--out", out]) == 1
    assert capsys.readouterr().err == f"error: {labels_path} already exists; pass --overwrite to replace it\n"
    assert not os.path.exists(out)
    assert build_manifest.main(["--dataset", "chexpert", "--root", root, "--out", out, "--overwrite"]) == 0
    assert {t["image_id"]: t["Edema"] for t in read_table(labels_path)}[
        "chexpert:patient00001/study2/view1_frontal"] == "1"          # default policy: ones


def test_build_manifest_unknown_label_is_one_error_line(tmp_path, capsys):
    root = str(tmp_path / "nih")
    nih_tree(root, ["No Finding", "Masss"])
    out = os.path.join(root, "manifest.csv")
    assert build_manifest.main(["--dataset", "nih_chestxray14", "--root", root, "--out", out,
                                "--no-verify-files"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {os.path.join(root, 'Data_Entry_2017.csv')}:3: Finding Labels='Masss' "
                          "is not a known label value") and err.count("\n") == 1
    assert not os.path.exists(out) and not os.path.exists(os.path.join(root, "labels.csv"))


def test_history_app_reads_a_column_of_a_builder_table(tmp_path):
    """configs/history.py's label_column/classes on NIH's table, through the app's reader."""
    experiment = pytest.importorskip("mami_jax.apps.history.experiment")
    from configs import history as history_config
    root = str(tmp_path / "nih")
    nih_tree(root, ["No Finding", "Cardiomegaly|Effusion", "Effusion", "Mass"])
    out = os.path.join(root, "manifest.csv")
    assert build_manifest.main(["--dataset", "nih_chestxray14", "--root", root, "--out", out,
                                "--no-verify-files"]) == 0
    rows = read_manifest(out)
    cfg = history_config.get_config()
    with cfg.unlocked():
        cfg.label_column, cfg.classes = "Effusion", ("0", "1")
    by_id = dict(zip([r.image_id for r in rows],
                     experiment.read_row_labels(rows, os.path.join(root, "labels.csv"), cfg)))
    assert by_id == {"nih_chestxray14:00000001_000": 0, "nih_chestxray14:00000002_000": 1,
                     "nih_chestxray14:00000003_000": 1, "nih_chestxray14:00000004_000": 0}
    with cfg.unlocked():
        cfg.label_column, cfg.classes = "Finding Labels", ("No Finding", "Effusion", "Mass")
    with pytest.raises(LabelError, match=r"line 3 \(image_id='nih_chestxray14:00000002_000'\): "
                                         r"Finding Labels='Cardiomegaly\|Effusion' is not a known label"):
        experiment.read_row_labels(rows, os.path.join(root, "labels.csv"), cfg)


def test_write_labels_keeps_manifest_order_and_refuses_gaps(tmp_path):
    path = str(tmp_path / "labels.csv")
    labels = {"b": {"level": "2"}, "a": {"level": "0"}}
    assert write_labels(path, ("level",), labels, ["a", "c", "b"]) == 2
    with open(path) as f:
        assert f.read() == "image_id,level\na,0\nb,2\n"
    assert read_labels(path, "level", ("0", "1", "2", "3", "4")) == {"a": 0, "b": 2}
    with pytest.raises(LabelError, match=r"image 'a' has no value for \['level'\]"):
        write_labels(path, ("level",), {"a": {"level": ""}}, ["a"])
