"""The diagnosis labels table: values map to classes; a bad row is an error naming it."""

import pytest

from mami_jax.data.labels import LabelError, labels_for, read_labels
from mami_jax.data.manifest import ManifestRow


def _write(tmp_path, text):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return str(p)


def test_reads_class_indices(tmp_path):
    path = _write(tmp_path, "image_id,disease_stage,disease_label\na,2,1\nb,0,0\n")
    assert read_labels(path, "disease_stage", ("0", "1", "2", "3")) == {"a": 2, "b": 0}
    assert read_labels(path, "disease_label", ("0", "1")) == {"a": 1, "b": 0}


def test_a_hand_written_table_with_spaces_after_commas_reads(tmp_path):
    """``image_id, disease_label`` said "no column 'disease_label'" (it was
    ``' disease_label'``)."""
    path = _write(tmp_path, "image_id, disease_label\na, 1\nb , 0\n")
    assert read_labels(path, "disease_label", ("0", "1")) == {"a": 1, "b": 0}


@pytest.mark.parametrize("text, message", [
    ("image_id,disease_label\na,1\nb,7\n",
     r"labels.csv: line 3 \(image_id='b'\): disease_label='7' is not a known label "
     r"\(expected one of 0, 1\)"),
    ("image_id,disease_label\na,1\nb,\n", r"line 3 \(image_id='b'\): disease_label=''"),
    ("image_id,disease_label\na,1\na,0\n", r"line 3 \(image_id='a'\): image_id appears twice"),
    ("image_id,stage\na,1\n", r"labels.csv: no column 'disease_label' \(columns: image_id, stage\)"),
    ("image_id,disease_label\n", r"labels.csv: no rows"),
])
def test_bad_tables_name_the_row(tmp_path, text, message):
    with pytest.raises(LabelError, match=message):
        read_labels(_write(tmp_path, text), "disease_label", ("0", "1"))


def test_a_spreadsheets_table_reads_and_a_bad_row_is_named_by_its_editor_line(tmp_path):
    """Saved by a spreadsheet: a byte-order mark (before, the first column read as
    '\ufeffimage_id', "no column 'image_id'"), CRLF line ends, and a note spanning lines."""
    p = tmp_path / "labels.csv"
    p.write_bytes("\ufeffimage_id,disease_label,note\r\na,1,\"two\r\nlines\"\r\nb,0,\r\n"
                  .encode("utf-8"))
    assert read_labels(str(p), "disease_label", ("0", "1")) == {"a": 1, "b": 0}
    p.write_bytes("\ufeffimage_id,disease_label,note\r\na,1,\"two\r\nlines\"\r\nb,7,\r\n"
                  .encode("utf-8"))
    with pytest.raises(LabelError, match=r"labels.csv: line 4 \(image_id='b'\): disease_label='7'"):
        read_labels(str(p), "disease_label", ("0", "1"))


def test_a_table_saved_with_semicolons_or_in_windows_1252_says_how_to_save_it(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("image_id;disease_label\na;1\n")
    with pytest.raises(LabelError) as e:
        read_labels(str(p), "disease_label", ("0", "1"))
    assert str(e.value) == (f"labels table {p}: columns separated by ';', not commas; save it "
                            "as comma-separated CSV")
    p.write_bytes("image_id,disease_label\nJos\xe9,1\n".encode("cp1252"))
    with pytest.raises(LabelError) as e:
        read_labels(str(p), "disease_label", ("0", "1"))
    assert str(e.value) == (f"labels table {p}: line 2 is not UTF-8 text (byte 0xE9 at column "
                            "4: Latin-1 or Windows-1252, as a spreadsheet saves plain 'CSV'?); "
                            "save it as UTF-8 (a spreadsheet's 'CSV UTF-8')")


def test_unlabelled_manifest_rows_are_named(tmp_path):
    rows = [ManifestRow(i, "p", "s", "0", "xray", "d", "", "x") for i in ("a", "b", "c")]
    assert labels_for(rows[:1], {"a": 1}, "L") == [1]
    with pytest.raises(LabelError, match=r"labels table L: 2 of 3 images have no label, "
                       r"e.g. \['b', 'c'\]"):
        labels_for(rows, {"a": 1}, "L")
    with pytest.raises(LabelError, match=r"nope.csv: cannot be read"):
        read_labels(str(tmp_path / "nope.csv"), "disease_label", ("0", "1"))
