"""Where protect writes each copy: one file per row, never outside OUT."""

import os
import re

import pytest

from mami_jax.apps.privacy.copy_paths import check_distinct_copies, output_path
from mami_jax.data.manifest import ManifestRow


def row(image_id, path, patient="P1", modality="xray"):
    return ManifestRow(image_id=image_id, patient_id=patient, study_id="s", order="0",
                       modality=modality, dataset="d", view="", path=path, split="test")


def test_an_image_inside_the_manifest_folder_keeps_its_path(tmp_path):
    manifest_dir, out = str(tmp_path / "data"), str(tmp_path / "out")
    full, rel = output_path(row("a", str(tmp_path / "data" / "p1" / "v0.png")), manifest_dir, out)
    assert rel == os.path.join("images", "p1", "v0.png") and full == os.path.join(out, rel)


def test_images_outside_it_of_one_patient_with_one_name_get_a_copy_each(tmp_path):
    """Before, both went to images/xray/P1/img.png: the second copy replaced the first and
    the protected manifest had two rows on one file."""
    manifest_dir, out = str(tmp_path / "manifests"), str(tmp_path / "out")
    rows = [row("v0", str(tmp_path / "a" / "img.png")), row("v1", str(tmp_path / "b" / "img.png")),
            row("series", str(tmp_path / "c" / "1"), modality="ct")]
    rels = [output_path(r, manifest_dir, out)[1] for r in rows]
    assert rels == [os.path.join("images", "xray", "P1", "v0", "img.png"),
                    os.path.join("images", "xray", "P1", "v1", "img.png"),
                    os.path.join("images", "ct", "P1", "series", "1")]
    check_distinct_copies(rows, manifest_dir, out)


def test_ids_with_separators_stay_inside_the_output_folder(tmp_path):
    out = str(tmp_path / "out")
    full, rel = output_path(row("../../x", str(tmp_path / "a.png"), patient=".."),
                            str(tmp_path / "m"), out)
    assert rel == os.path.join("images", "xray", "_.._", ".._.._x", "a.png")
    assert os.path.commonpath([os.path.abspath(full), out]) == out


def test_two_rows_of_one_image_are_refused_naming_both(tmp_path):
    image = str(tmp_path / "data" / "v0.png")
    with pytest.raises(ValueError, match=re.escape(
            f"rows 'a' ({image}) and 'b' ({image}) would be copied to one file, "
            f"{tmp_path / 'out' / 'images' / 'v0.png'}: give each image one row")):
        check_distinct_copies([row("a", image), row("c", str(tmp_path / "data" / "v1.png")),
                               row("b", image)], str(tmp_path / "data"), str(tmp_path / "out"))


def test_two_images_whose_ids_give_one_copy_are_told_to_rename_one(tmp_path):
    """Outside the manifest's folder a copy is named by its image_id: 'visit1/img' and
    'visit1_img' of one patient give one copy of two different images. The advice was
    "give each image one row", which they have."""
    a = row("visit1/img", str(tmp_path / "a" / "visit1" / "img.png"))
    b = row("visit1_img", str(tmp_path / "b" / "visit1_img" / "img.png"))
    with pytest.raises(ValueError, match=r"would be copied to one file, .*: rename one "
                                         r"image_id in the manifest"):
        check_distinct_copies([a, b], str(tmp_path / "m"), str(tmp_path / "out"))


def test_cue_file_names_are_one_component_and_two_ids_of_one_name_are_refused():
    from mami_jax.apps.privacy.copy_paths import check_distinct_names, file_name
    assert file_name("chexpert:patient00001/study1/view1_frontal") == \
        "chexpert:patient00001_study1_view1_frontal"
    assert file_name("../../escaped") == ".._.._escaped" and file_name("..") == "_.._"
    check_distinct_names([row("a/b", "x.png"), row("a_c", "y.png")])
    with pytest.raises(ValueError, match=re.escape(
            "image ids 'a/b' and 'a_b' both give the file name 'a_b': rename one")):
        check_distinct_names([row("a/b", "x.png"), row("a_b", "y.png")])
