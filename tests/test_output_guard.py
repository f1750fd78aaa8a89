"""runtime/output_guard: an output never lands on an image a command reads."""

import os

import pytest

from mami_jax.runtime.output_guard import refuse_landing_on_images


def test_an_output_on_an_image_or_inside_a_series_folder_is_refused(tmp_path):
    """A file that is a stored image, a link to one, or a new file inside a series stored
    as a folder of slices (it would join the series) is refused, naming the image; a file
    beside them is not."""
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    series = tmp_path / "ct"
    series.mkdir()
    link = tmp_path / "link.png"
    link.symlink_to(image)
    images = [("A", str(image)), ("CT", str(series))]
    for out, image_id, where in ((image, "A", "is"), (link, "A", "is"),
                                 (series / "slice_099.png", "CT", "lies inside")):
        with pytest.raises(ValueError) as e:
            refuse_landing_on_images(str(out), "--png", images, "the archive X")
        path = dict(images)[image_id]
        assert str(e.value) == (f"--png {out}: {where} the image {image_id} of the archive X "
                                f"({path}), which this command reads: outputs never go into "
                                "the inputs")
    refuse_landing_on_images(str(tmp_path / "b.png"), "--png", images, "the archive X")
    refuse_landing_on_images(str(tmp_path / "ct2.png"), "--png", images, "the archive X")
    assert os.listdir(series) == []


def test_an_empty_output_path_is_refused(tmp_path, monkeypatch):
    """``--out ""`` (an unset shell variable) is the current folder to the OS: teachers'
    extraction wrote its store into a folder of other files, and the history index replaced
    the folder the shell was in."""
    from mami_jax.runtime.output_guard import (check_output_file, check_output_folder,
                                               check_picture_file)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    for check, what in ((lambda: check_output_folder("", "--out", "run.json"), "a folder"),
                        (lambda: check_output_file("", "--out"), "a file name"),
                        (lambda: check_picture_file("", "--png"), "a file name")):
        with pytest.raises(ValueError) as e:
            check()
        assert str(e.value).endswith(f": an empty path; give {what}")
    assert os.listdir(tmp_path) == ["keep.txt"]
