"""Reading and writing the common manifest (mami_jax.data.manifest).

Tiny hand-written CSVs; each test states the exact rows or message expected.
"""

import os
import re

import pytest

from mami_jax.data.manifest import COLUMNS, ManifestError, ManifestRow, read_manifest, write_manifest
from mami_jax.runtime.atomic_files import TEMP_MARK

ROWS = [
    ManifestRow(image_id="d:a", patient_id="p1", study_id="s1", order="0", modality="xray",
                dataset="d", view="PA", path="img/a.png", split="train"),
    ManifestRow(image_id="d:b", patient_id="p2", study_id="s1", order="1", modality="ct",
                dataset="d", view="", path="/abs/b.nii.gz", split="test"),
]
TEXT = (",".join(COLUMNS) + "\r\n"
        "d:a,p1,s1,0,xray,d,PA,img/a.png,train\r\n"
        "d:b,p2,s1,1,ct,d,,/abs/b.nii.gz,test\r\n")


def test_write_then_read_round_trip_resolves_relative_paths(tmp_path):
    out = tmp_path / "m.csv"
    write_manifest(ROWS, str(out))
    assert out.read_bytes() == TEXT.encode()
    rows = read_manifest(str(out))
    assert rows == [ROWS[0].replace(path=str(tmp_path / "img" / "a.png")), ROWS[1]]


def test_utf8_byte_order_mark_is_read_like_any_manifest(tmp_path):
    # Spreadsheet programs save "CSV UTF-8" with a BOM; it used to glue onto "image_id".
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_bytes(TEXT.encode())
    bom.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    assert read_manifest(str(bom)) == read_manifest(str(plain))
    assert [r.image_id for r in read_manifest(str(bom))] == ["d:a", "d:b"]


def test_non_utf8_and_short_rows_name_the_file_and_line(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(TEXT.encode() + "d:c,Jos\xe9,s1,0,xray,d,,c.png,train\r\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=re.escape(
            f"{latin}: line 4 is not UTF-8 text (byte 0xE9 at column 8: Latin-1 or "
            "Windows-1252, as a spreadsheet saves plain 'CSV'?); save it as UTF-8 (a "
            "spreadsheet's 'CSV UTF-8')")):
        read_manifest(str(latin))
    short = tmp_path / "short.csv"
    short.write_bytes((TEXT + "d:c,p3\r\n").encode())
    with pytest.raises(ManifestError, match=rf"^{short}: line 4 has 2 fields, expected 9$"):
        read_manifest(str(short))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_manifest_has_the_umask_permissions(tmp_path, umask, mode):
    # The temporary file of mkstemp is 0600; the published manifest follows the umask.
    out = tmp_path / "sub" / "m.csv"
    old = os.umask(umask)
    try:
        write_manifest(ROWS, str(out))
    finally:
        os.umask(old)
    assert os.stat(out).st_mode & 0o777 == mode
    assert os.listdir(out.parent) == ["m.csv"]   # no temporary left


def test_invalid_rows_write_nothing(tmp_path):
    out = tmp_path / "m.csv"
    out.write_text("old contents")
    bad = [ROWS[0], ROWS[0].replace(image_id="d:z", split="test")]   # patient p1 in two splits
    with pytest.raises(ManifestError, match="patient 'd/p1' is in split 'test' here"):
        write_manifest(bad, str(out))
    assert out.read_text() == "old contents"
    assert not [n for n in os.listdir(tmp_path) if TEMP_MARK in n]


def test_what_a_spreadsheet_makes_of_a_manifest_is_read_or_named(tmp_path):
    """Columns moved, blank lines left at the end: read. Saved with ';' (a locale with
    decimal commas) or tabs: an error saying how to save it, where it said the header did
    not match."""
    p = tmp_path / "m.csv"
    moved = [COLUMNS[-1]] + list(COLUMNS[:-1])
    lines = [",".join(moved), "train,d:a,p1,s1,0,xray,d,PA,img/a.png", "",
             "test,d:b,p2,s1,1,ct,d,,/abs/b.nii.gz", "", ""]
    p.write_text("\r\n".join(lines))
    assert read_manifest(str(p)) == [ROWS[0].replace(path=str(tmp_path / "img" / "a.png")),
                                     ROWS[1]]
    assert read_manifest(str(p))[1].location == (str(p), 4)
    for sep, name in ((";", "';'"), ("\t", "tabs")):
        p.write_text(TEXT.replace(",", sep))
        with pytest.raises(ManifestError) as e:
            read_manifest(str(p))
        assert str(e.value) == (f"{p}: columns separated by {name}, not commas; save it as "
                                f"comma-separated CSV (header {','.join(COLUMNS)})")
    p.write_text(TEXT.replace("split\r\n", "split,split\r\n", 1))
    with pytest.raises(ManifestError, match=re.escape("(missing [], unexpected [], twice "
                                                      "['split'])")):
        read_manifest(str(p))


def test_a_hand_written_manifest_with_spaces_after_commas_and_a_home_path_reads(tmp_path,
                                                                               monkeypatch):
    """``a, p1, s1`` was refused: the header's ``' patient_id'`` (and then ``' xray'``) did
    not match; ``~/x.png`` was looked for in a folder named ``~`` beside the manifest."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = tmp_path / "m.csv"
    p.write_text(", ".join(COLUMNS) + "\n"
                 " d:a , p1, s1, 0, xray, d, PA, img/a.png, train\n"
                 "d:b, p2, s1, 1, ct, d, , ~/b.nii.gz , test \n")
    assert read_manifest(str(p)) == [ROWS[0].replace(path=str(tmp_path / "img" / "a.png")),
                                     ROWS[1].replace(path=str(tmp_path / "home" / "b.nii.gz"))]
    from mami_jax.data.manifest import is_manifest
    assert is_manifest(str(p))


def test_one_patients_orders_mixing_numbers_and_text_are_refused(tmp_path):
    """order_key sorts every number before every text: a visit number among one patient's
    dates (or 20190301 among 2019-03-01s) would count as the earliest, whatever it is."""
    p = tmp_path / "m.csv"
    p.write_text(TEXT + "d:c,p1,s2,2019-03-01,xray,d,PA,img/c.png,train\r\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(str(p))
    assert str(e.value) == (
        f"{p}: line 4 (image_id='d:c'): order '2019-03-01' is text, but patient 'd/p1' has "
        "order '0' at line 2; every number sorts before every text, so write one patient's "
        "orders one way (all visit numbers, or all dates: 2019-03-01 or 20190301)")
    # another patient's dates are its own affair, as is an empty order
    p.write_text(TEXT + "d:c,p3,s2,2019-03-01,xray,d,PA,img/c.png,train\r\n"
                 "d:d,p1,s3,,xray,d,PA,img/d.png,train\r\n")
    assert [r.order for r in read_manifest(str(p))] == ["0", "1", "2019-03-01", ""]


@pytest.mark.parametrize("order", ["3/1/2019", "01.03.2019", "3-1-19"])
def test_a_date_written_year_last_is_refused_naming_the_line(tmp_path, order):
    """As text, "10/1/2019" sorts before "3/1/2019": the history protocol's latest visit and
    the history app's earlier images would follow the month, not the time."""
    p = tmp_path / "m.csv"
    p.write_text(TEXT.replace("d:b,p2,s1,1,", f"d:b,p2,s1,{order},"))
    with pytest.raises(ManifestError, match=re.escape(
            f"{p}: line 3 (image_id='d:b'): order {order!r} is a date written year last")):
        read_manifest(str(p))
    for fine in ("2019-03-01", "20190301", "2019/03/01", "12", "1.5", "20190301 081500"):
        p.write_text(TEXT.replace("d:b,p2,s1,1,", f"d:b,p2,s1,{fine},"))
        assert read_manifest(str(p))[1].order == fine


def test_a_dataset_name_with_a_slash_is_refused(tmp_path):
    """Patient 'b/c' of dataset 'a' and patient 'c' of dataset 'a/b' both had the identity
    'a/b/c': one identity class for two people, or a split clash between them."""
    p = tmp_path / "m.csv"
    p.write_text(TEXT + "a:1,b/c,s1,0,xray,a,PA,img/1.png,train\r\n"
                 "ab:1,c,s1,0,xray,a/b,PA,img/2.png,test\r\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(str(p))
    assert str(e.value) == (
        f"{p}: line 5 (image_id='ab:1'): dataset 'a/b' holds '/', which joins it to the "
        "patient id in the patient's identity ('a/b/c' could be patient '.../...' of another "
        "dataset); name the dataset without '/'")
    p.write_text(TEXT + "a:1,b/c,s1,0,xray,a,PA,img/1.png,train\r\n")     # a patient id may
    assert read_manifest(str(p))[2].patient_key == "a/b/c"


def test_year_first_dates_without_zero_padding_sort_in_time():
    """As text '2019-9-1' sorts after '2019-11-1': a patient's September visit had its
    October and November images as its earlier ones (history protocol and app alike).
    Month, day and a time's hours and minutes are read zero-padded, any separator."""
    from mami_jax.data.manifest import order_key
    visits = ["2019-11-1", "2019-9-1", "2019/10/1", "2019-10-01 9:05", "2019-10-01 10:00",
              "2020-1-2"]
    assert sorted(visits, key=order_key) == ["2019-9-1", "2019/10/1", "2019-10-01 9:05",
                                             "2019-10-01 10:00", "2019-11-1", "2020-1-2"]
    assert order_key("2019-09-01T09:05:03.5") > order_key("2019-09-01T09:05:03.25")
    assert order_key("2019-09-01") == order_key("2019-9-1")
    assert order_key("scan b") > order_key("scan a")          # other text as it is
