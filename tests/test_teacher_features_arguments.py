"""``load_features``'s arguments, named when they are of the wrong kind: one teacher name
as a string was read as the list of its letters ("teachers ['e', 'f', 'f', ...] were not
extracted"), and a file given as the feature folder was called "no such folder"."""

import pytest

from mami_jax.data.teacher_features import TeacherFeatureError, load_features, read_index


def test_one_teacher_name_as_a_string_is_named(tmp_path):
    with pytest.raises(TypeError) as e:
        load_features(str(tmp_path), "efficientnet_lite0")
    assert str(e.value) == ("teachers: a list of teacher names, not one name "
                            "('efficientnet_lite0'): ['efficientnet_lite0']")


def test_a_file_given_as_the_feature_folder_is_named_a_file(tmp_path):
    folder = tmp_path / "FEATURES"
    folder.mkdir()
    for name in ("run.json", "index.json", "features-00000-of-00002.tfrecord"):
        inside = folder / name
        inside.write_text("{}")
        with pytest.raises(TeacherFeatureError) as e:
            load_features(str(inside), ["efficientnet_lite0"])
        assert str(e.value) == (f"{inside}: a file, not a feature folder (give the folder "
                                f"that holds it, {folder})")
    other = tmp_path / "manifest.csv"
    other.write_text("image_id\n")
    with pytest.raises(TeacherFeatureError) as e:
        read_index(str(other))
    assert str(e.value) == (f"{other}: a file, not a feature folder (a feature folder is what "
                            "python -m teachers.extract --out writes)")
