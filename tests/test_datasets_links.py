"""Folders linked into a dataset root (images kept on another disk) are read like any other.

``os.walk`` lists a link to a folder but does not enter it, so every builder that walks
the root (and ``tile_slides --slides FOLDER``) silently left such folders out; only a link
at the root's top level, named by the metadata, was read. The walk now follows links and
walks each folder once (a link back up the tree ends, a second link to one folder adds
nothing twice).
"""

import os

from mami_jax.data.datasets.common import walk_files
from mami_jax.data.datasets.registry import BUILDERS
from mami_jax.data.tile_slides import find_slides


def touch(*parts):
    path = os.path.join(*parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def test_walk_files_enters_linked_folders_below_the_top_and_ends_on_a_loop(tmp_path):
    root = tmp_path / "root"
    touch(str(root), "a", "1.png")
    touch(str(tmp_path), "disk2", "b", "2.png")
    os.symlink(tmp_path / "disk2", root / "a" / "linked")      # a link two levels down
    os.symlink(root, root / "a" / "loop")                      # a link back to the root
    os.symlink(tmp_path / "disk2", root / "again")             # a second link to one folder
    found = [os.path.relpath(os.path.join(d, n), root) for d, n in walk_files(str(root))]
    assert found == ["a/1.png", "a/linked/b/2.png"]


def test_tcga_reads_a_slide_folder_linked_into_the_root(tmp_path):
    root = tmp_path / "tiles"
    touch(str(root), "TCGA-AA-0001-01Z-00-DX1.abc", "0_0.png")
    touch(str(tmp_path), "disk2", "TCGA-AA-0002-01Z-00-DX1.def", "0_0.png")
    (root / "batch2").mkdir()
    os.symlink(tmp_path / "disk2" / "TCGA-AA-0002-01Z-00-DX1.def",
               root / "batch2" / "TCGA-AA-0002-01Z-00-DX1.def")
    res = BUILDERS["tcga"](str(root))
    assert [(r.patient_id, os.path.relpath(r.path, root)) for r in res.rows] == [
        ("TCGA-AA-0001", "TCGA-AA-0001-01Z-00-DX1.abc/0_0.png"),
        ("TCGA-AA-0002", "batch2/TCGA-AA-0002-01Z-00-DX1.def/0_0.png")]
    assert res.skipped == []


def test_oasis_reads_a_disc_linked_into_the_root(tmp_path):
    root = tmp_path / "oasis"
    for base, disc, subject in ((root, "disc1", "0001"), (tmp_path / "disk2", "disc2", "0002")):
        for ext in (".img", ".hdr"):
            touch(str(base), disc, f"OAS1_{subject}_MR1", "RAW", f"OAS1_{subject}_MR1_mpr-1_anon{ext}")
    os.symlink(tmp_path / "disk2" / "disc2", root / "disc2")
    res = BUILDERS["oasis"](str(root))
    assert [(r.patient_id, os.path.relpath(r.path, root)) for r in res.rows] == [
        ("OAS1_0001", "disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.img"),
        ("OAS1_0002", "disc2/OAS1_0002_MR1/RAW/OAS1_0002_MR1_mpr-1_anon.img")]


def test_odir_finds_image_folders_and_annotations_inside_a_linked_folder(tmp_path):
    root = tmp_path / "odir"
    root.mkdir()
    other = tmp_path / "disk2" / "ODIR-5K"
    touch(str(other), "Training Images", "0_left.jpg")
    touch(str(other), "Training Images", "0_right.jpg")
    (other / "data.csv").write_text(
        "ID,Left-Diagnostic Keywords,Right-Diagnostic Keywords,N,D,G,C,A,H,M,O\n"
        "0,normal fundus,cataract,0,0,0,1,0,0,0,0\n")
    os.symlink(other, root / "ODIR-5K")
    res = BUILDERS["odir"](str(root))
    assert [os.path.relpath(r.path, root) for r in res.rows] == [
        "ODIR-5K/Training Images/0_left.jpg", "ODIR-5K/Training Images/0_right.jpg"]
    assert res.labels["odir:train-0_right"]["Diagnostic Keywords"] == "cataract"


def test_find_slides_searches_a_linked_sub_folder(tmp_path):
    slides = tmp_path / "slides"
    touch(str(slides), "batch1", "a.svs")
    touch(str(tmp_path), "disk2", "batch2", "b.svs")
    os.symlink(tmp_path / "disk2" / "batch2", slides / "batch2")
    assert find_slides([str(slides)]) == [str(slides / "batch1" / "a.svs"),
                                          str(slides / "batch2" / "b.svs")]
