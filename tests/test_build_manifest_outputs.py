"""``python -m mami_jax.data.build_manifest``: what ``--out`` may replace, and bad arguments.

The audit's case: ``--out`` named the dataset's own ``Data_Entry_2017.csv`` with
``--overwrite`` and the metadata was replaced by the manifest. Only a manifest (and, beside
it, a labels table) is ever replaced; every other file is refused, naming it, and is left
byte for byte as it was.
"""

import os
import subprocess
import sys

import pytest

from mami_jax.data import build_manifest
from mami_jax.data.manifest import COLUMNS, is_manifest, read_manifest

NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def nih_root(tmp_path):
    """A two-image ChestX-ray14 folder; returns (root, metadata file)."""
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    for name in ("00000001_000.png", "00000001_001.png"):
        (root / "images" / name).write_bytes(b"")
    meta = root / "Data_Entry_2017.csv"
    meta.write_text(NIH_HEADER + "00000001_000.png,No Finding,0,1,58,M,PA\n"
                    "00000001_001.png,Mass,1,1,58,M,PA\n")
    return root, meta


def run(capsys, *argv):
    """(exit status, stdout, stderr lines) of the command run in-process."""
    code = build_manifest.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def test_overwrite_refuses_the_datasets_own_metadata_file(tmp_path, capsys):
    root, meta = nih_root(tmp_path)
    before = meta.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, out, err = run(capsys, "--dataset", "nih_chestxray14", "--root", root,
                             "--out", meta, *extra)
        assert (code, out) == (1, "")
        assert err == [f"error: {meta} exists and is not a manifest; refusing to replace it, "
                       "even with --overwrite (choose another --out)"]
        assert meta.read_bytes() == before
    assert sorted(os.listdir(root)) == ["Data_Entry_2017.csv", "images"]   # nothing written


def test_overwrite_refuses_an_image_a_folder_and_any_other_file(tmp_path, capsys):
    root, _ = nih_root(tmp_path)
    image = root / "images" / "00000001_000.png"
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    for target in (image, notes):
        code, _, err = run(capsys, "--dataset", "nih_chestxray14", "--root", root,
                           "--out", target, "--overwrite")
        assert code == 1 and err == [f"error: {target} exists and is not a manifest; refusing "
                                     "to replace it, even with --overwrite (choose another --out)"]
    for target, what in ((root / "images", "is a folder; give a file name"),
                         ("", "an empty path; give a file name")):   # "": the current folder
        code, _, err = run(capsys, "--dataset", "nih_chestxray14", "--root", root,
                           "--out", target, "--overwrite")
        assert code == 1 and err == [f"error: --out{f' {target}' if target else ''}: {what}"]
    assert image.read_bytes() == b"" and notes.read_text() == "a,b\n1,2\n"


def test_overwrite_replaces_a_manifest_and_its_labels_table(tmp_path, capsys):
    root, _ = nih_root(tmp_path)
    out = tmp_path / "m" / "manifest.csv"
    argv = ["--dataset", "nih_chestxray14", "--root", root, "--out", out]
    assert run(capsys, *argv)[0] == 0
    assert is_manifest(str(out)) and len(read_manifest(str(out))) == 2
    code, _, err = run(capsys, *argv)
    assert code == 1 and err == [f"error: {out} already exists; pass --overwrite to replace it"]
    assert run(capsys, *argv, "--overwrite")[0] == 0
    assert len(read_manifest(str(out))) == 2


def test_a_labels_csv_that_is_not_a_labels_table_is_never_replaced(tmp_path, capsys):
    root, _ = nih_root(tmp_path)
    folder = tmp_path / "m"
    folder.mkdir()
    foreign = folder / "labels.csv"
    foreign.write_text("patient,diagnosis\n1,flu\n")
    code, _, err = run(capsys, "--dataset", "nih_chestxray14", "--root", root,
                       "--out", folder / "manifest.csv", "--overwrite")
    assert code == 1 and err == [f"error: {foreign} exists and is not a labels table; refusing "
                                 "to replace it, even with --overwrite (write the manifest into "
                                 "another folder)"]
    assert foreign.read_text() == "patient,diagnosis\n1,flu\n"
    assert sorted(os.listdir(folder)) == ["labels.csv"]


def test_out_named_like_the_labels_table_is_refused(tmp_path, capsys):
    root, _ = nih_root(tmp_path)
    out = tmp_path / "labels.csv"
    code, _, err = run(capsys, "--dataset", "nih_chestxray14", "--root", root, "--out", out)
    assert code == 1 and err == [f"error: --out {out}: the labels of nih_chestxray14 are written "
                                 "to labels.csv beside the manifest; give the manifest another name"]
    assert not out.exists()


def test_is_manifest_reads_only_the_header(tmp_path):
    good = tmp_path / "m.csv"
    good.write_bytes(b"\xef\xbb\xbf" + ",".join(COLUMNS).encode() + b"\r\nnot,checked\r\n")
    binary = tmp_path / "x.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    other = tmp_path / "o.csv"
    other.write_text(",".join(COLUMNS[:-1]) + "\n")
    assert is_manifest(str(good))
    assert not any(is_manifest(str(p)) for p in (binary, other, tmp_path, tmp_path / "absent"))


@pytest.mark.parametrize("argv, line", [
    ([], "error: python -m mami_jax.data.build_manifest: the following arguments are required: "
         "--dataset, --root, --out (see --help)"),
    (["--dataset", "nih_chestxray14", "--root", "r", "--out", "o", "--seed", "abc"],
     "error: python -m mami_jax.data.build_manifest: argument --seed: invalid int value: 'abc' "
     "(see --help)"),
    (["--dataset", "nih_chestxray14", "--root", "r", "--out", "o", "--fractions", "train=x"],
     "error: python -m mami_jax.data.build_manifest: argument --fractions: bad fraction "
     "'train=x'; expected name=number (see --help)"),
])
def test_bad_arguments_are_one_error_line_with_status_2(argv, line, tmp_path):
    """argparse printed its usage block above a line naming the program, not ``error:``."""
    proc = subprocess.run([sys.executable, "-m", "mami_jax.data.build_manifest", *argv],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", line + "\n")
