"""A truncated (interrupted download) or damaged ``.csv.gz`` metadata file is one
``error:`` line naming the file, exit status 1, no manifest: gzip's and zlib's own
exceptions (EOFError, zlib.error, gzip.BadGzipFile) name no file and ended the build in
a traceback."""

import gzip
import os
import re

from mami_jax.data.build_manifest import main as build_manifest

MIMIC_HEADER = "dicom_id,subject_id,study_id,ViewPosition,StudyDate,StudyTime\n"
ROWS = 5000


def mimic_gz():
    rows = MIMIC_HEADER + "".join(f"d{i:05d}-aaaa,1{i:07d},5{i:07d},PA,21520708,134500\n"
                                  for i in range(ROWS))
    return gzip.compress(rows.encode())


def build(root, out, capsys):
    code = build_manifest(["--dataset", os.path.basename(root).split("-")[0], "--root", str(root),
                           "--out", str(out), "--no-verify-files"])
    return code, capsys.readouterr().err


def test_a_truncated_gz_names_the_file_and_the_last_line_read(tmp_path, capsys):
    root = tmp_path / "mimic_cxr"
    root.mkdir()
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    data = mimic_gz()
    meta.write_bytes(data[:len(data) // 2])
    code, err = build(root, tmp_path / "m.csv", capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    m = re.fullmatch(re.escape(f"error: {meta}: truncated or damaged gzip file, unreadable after line ")
                     + r"(\d+)" + re.escape(" (EOFError: Compressed file ended before the "
                                            "end-of-stream marker was reached); download it again"),
                     err.strip())
    assert m and 1 < int(m.group(1)) < ROWS + 1, err
    assert not (tmp_path / "m.csv").exists()


def test_a_damaged_gz_names_the_file(tmp_path, capsys):
    root = tmp_path / "mimic_cxr"
    root.mkdir()
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    data = mimic_gz()
    meta.write_bytes(data[:200] + bytes(b ^ 0x5A for b in data[200:260]) + data[260:])
    code, err = build(root, tmp_path / "m.csv", capsys)
    assert code == 1 and re.fullmatch(   # zlib's reason: "invalid distance too far back"
        re.escape(f"error: {meta}: truncated or damaged gzip file, unreadable (zlib.error: "
                  "Error -3 while decompressing data: ") + r"[^()\n]+\); download it again",
        err.strip()), err
    assert not (tmp_path / "m.csv").exists()


def test_a_gz_that_is_not_gzip_names_the_file_where_its_header_is_read(tmp_path, capsys):
    # PadChest reads the header first, to find its date column.
    root = tmp_path / "padchest"
    root.mkdir()
    meta = root / "PADCHEST_labels.csv.gz"
    meta.write_text("ImageID,ImageDir,PatientID,StudyID,StudyDate_DICOM,Projection\n")
    code, err = build(root, tmp_path / "m.csv", capsys)
    assert code == 1 and err.strip() == (
        f"error: {meta}: truncated or damaged gzip file, unreadable (gzip.BadGzipFile: Not a "
        "gzipped file (b'Im')); download it again")
