"""Every error about one manifest row names it the same way: ``FILE: line N (image_id=...)``,
N the file's line with the header as line 1 (the audit found ``row 4`` for a bad value on
line 5, and ``manifest row 24`` without the file for an image missing on line 26)."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from mami_jax.config import base_config
from mami_jax.data import example_reader, loading, pipeline
from mami_jax.data.config import default_data_config, update_modalities
from mami_jax.data.manifest import (COLUMNS, ManifestError, ManifestRow, read_manifest,
                                    row_place, write_manifest)
from mami_jax.data.splits import assign_splits
from mami_jax.evaluate import evaluator
from mami_jax.evaluate.evaluator import embed_rows, left_out_skipped
from mami_jax.runtime import sharding

HEADER = ",".join(COLUMNS) + "\n"


def manifest(tmp_path, *lines, name="m.csv"):
    """A manifest file of ``lines`` (file line 2 on) with 8 px PNGs for every row."""
    for k in range(len(lines)):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    path = tmp_path / name
    path.write_text(HEADER + "".join(line + "\n" for line in lines))
    return str(path)


def row(image_id, patient, split="test", modality="xray", image=0):
    return f"{image_id},{patient},s{image_id},0,{modality},d,PA,{image}.png,{split}"


def test_a_bad_value_is_named_by_its_file_line(tmp_path):
    path = manifest(tmp_path, row("a", "p1"), row("b", "p1", image=1), row("c", "p2", image=2),
                    row("d", "p3", modality="ultrasound", image=3))
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert str(e.value) == (f"{path}: line 5 (image_id='d'): unknown modality 'ultrasound'; "
                            "expected one of ('xray', 'ct', 'mri', 'fundus', 'pathology')")


def test_both_rows_of_a_conflict_are_named_by_their_lines(tmp_path):
    path = manifest(tmp_path, row("a", "p1"), row("b", "p2", image=1), row("a", "p3", image=2))
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert str(e.value) == f"{path}: line 4 (image_id='a'): duplicate image_id, first seen at line 2"
    path = manifest(tmp_path, row("a", "p1"), row("b", "p2", image=1),
                    row("c", "p1", split="train", image=2), name="splits.csv")
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    assert str(e.value) == (f"{path}: line 4 (image_id='c'): patient 'd/p1' is in split "
                            "'train' here and in split 'test' at line 2")


def test_rows_to_be_written_are_named_by_the_line_they_would_have(tmp_path):
    out = str(tmp_path / "new.csv")
    rows = [ManifestRow("a", "p1", "s", "0", "xray", "d", "", "/a.png", "train"),
            ManifestRow("b", "p2", "s", "0", "xray", "d", "", "/b.png", "train"),
            ManifestRow("a", "p3", "s", "0", "xray", "d", "", "/c.png", "train")]
    with pytest.raises(ManifestError) as e:
        write_manifest(rows, out)
    assert str(e.value) == f"{out}: line 4 (image_id='a'): duplicate image_id, first seen at line 2"
    assert not os.path.exists(out)


def test_the_place_is_kept_through_replace_split_assignment_and_filtering(tmp_path):
    path = manifest(tmp_path, row("a", "p1", split=""), row("b", "p2", split="", modality="ct"),
                    row("c", "p3", split="", image=2))
    rows = read_manifest(path)
    assert [r.location for r in rows] == [(path, 2), (path, 3), (path, 4)]
    assert rows[0] == rows[0].replace() and row_place(rows[2]) == f"{path}: line 4"
    assert [r.location for r in assign_splits(rows, {"train": 0.5, "test": 0.5}, 0)] == \
        [(path, 2), (path, 3), (path, 4)]
    config = base_config()
    config.data.manifest = path
    config.data.only_modalities = ("xray",)
    kept, left_out = loading.read_rows(config, str(tmp_path))
    assert [r.location for r in kept] == [(path, 2), (path, 4)] and left_out == {"ct": 1}
    made = ManifestRow("x", "p", "s", "0", "xray", "d", "", "/x.png")
    assert made.location is None and row_place(made) is None


def small_cfg(**kw):
    cfg = default_data_config()
    update_modalities(cfg, image_size=8, resize_size=8)
    cfg.read_threads, cfg.prefetch = 0, 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_an_unreadable_image_is_named_by_its_manifest_file_and_line(tmp_path):
    path = manifest(tmp_path, row("a", "p1"), row("b", "p1", image=1), row("c", "p2", image=2))
    os.remove(tmp_path / "1.png")
    rows = read_manifest(path)
    with pytest.raises(example_reader.DataError) as e:
        list(pipeline.make_eval_loader(rows, [0, 1, 2], small_cfg(), batch_size=4))
    image = str(tmp_path / "1.png")
    assert str(e.value).startswith(
        f"{path}: line 3 (image_id='b', patient 'd/p1', path {image!r}): {image}: no such file")
    # ... and says how to find every other one before the next run.
    assert str(e.value).endswith(f"; python -m mami_jax.data.check_images --manifest {path} "
                                 "finds every unreadable image of the manifest)")


def test_rows_left_unembedded_are_named_by_their_manifest_lines(tmp_path, monkeypatch):
    path = manifest(tmp_path, row("a", "p1"), row("b", "p1", image=1), row("c", "p2", image=2))
    os.remove(tmp_path / "2.png")
    rows = read_manifest(path)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])

    def top_left(batch):
        return batch["images"][:, 0, 0, 0, :]

    out = embed_rows(top_left, rows, [0, 1, 2], small_cfg(skip_bad_images=True), mesh, 4)
    warned = []
    monkeypatch.setattr(evaluator.logging, "warning", lambda *a: warned.append(a[0] % a[1:]))
    assert left_out_skipped(rows, out, "the test").tolist() == [True, True, False]
    assert warned == ["1 of the 3 images were skipped as unreadable or missing "
                      f"(data.skip_bad_images) and are left out of the test: {path}: line 4 "
                      "(image_id='c')"]


def test_a_manifest_that_is_not_there_or_a_folder_is_named(tmp_path):
    """The OS's words ("[Errno 2] No such file or directory: ...") named neither what the
    path was for nor, for a folder, what was wrong with it."""
    with pytest.raises(FileNotFoundError) as e:
        read_manifest(str(tmp_path / "nope.csv"))
    assert str(e.value) == f"manifest {tmp_path / 'nope.csv'}: no such file"
    with pytest.raises(IsADirectoryError) as e:
        read_manifest(str(tmp_path))
    assert str(e.value) == f"manifest {tmp_path}: is a folder, not a manifest file"


def test_missing_images_are_refused_up_front_naming_the_first_by_its_line(tmp_path):
    from mami_jax.data.missing_files import refuse_missing_files
    path = manifest(tmp_path, row("a", "p1"), row("b", "p1", image=1), row("c", "p2", image=2))
    rows = read_manifest(path)
    refuse_missing_files(rows)                     # all there: nothing to say
    os.remove(tmp_path / "1.png")
    os.remove(tmp_path / "2.png")
    with pytest.raises(FileNotFoundError) as e:
        refuse_missing_files(rows)
    assert str(e.value) == (f"{path}: line 3 (image_id='b'): {tmp_path / '1.png'}: no such file "
                            "or folder (1 more image missing)")


def test_missing_images_the_user_asked_to_skip_are_counted_up_front(tmp_path, caplog):
    from mami_jax.data.missing_files import check_images_on_disk
    path = manifest(tmp_path, row("a", "p1"), row("b", "p1", image=1), row("c", "p2", image=2))
    rows = read_manifest(path)
    assert check_images_on_disk(rows, skip_bad_images=True, purpose="training") == 0
    os.remove(tmp_path / "1.png")
    os.remove(tmp_path / "2.png")
    with caplog.at_level("WARNING"):
        assert check_images_on_disk(rows, skip_bad_images=True, purpose="training") == 2
    assert "2 of the 3 images for training are missing: they will be skipped and counted" \
        in caplog.text
    with pytest.raises(FileNotFoundError, match=r"1 more image missing\); training can skip"):
        check_images_on_disk(rows, skip_bad_images=False, purpose="training")


def test_a_manifest_written_on_windows_is_told_why_its_images_are_missing(tmp_path):
    """``sub\\0.png`` named no file here, and the message showed the path as the user wrote
    it, with nothing on what was wrong."""
    from mami_jax.data.missing_files import refuse_missing_files
    os.makedirs(tmp_path / "sub")
    path = manifest(tmp_path, row("a", "p1").replace(",0.png,", ",sub\\0.png,"))
    os.replace(tmp_path / "0.png", tmp_path / "sub" / "0.png")
    with pytest.raises(FileNotFoundError) as e:
        refuse_missing_files(read_manifest(path))
    assert str(e.value) == (f"{path}: line 2 (image_id='a'): {tmp_path}/sub\\0.png: no such file "
                            "or folder (the path is written with '\\' separators: this system "
                            "separates folders by '/')")


@pytest.mark.parametrize("slow_stat", [False, True])
def test_missing_rows_come_in_row_order_whether_asked_one_by_one_or_by_threads(
        tmp_path, monkeypatch, slow_stat):
    """On a slow file system (a network mount, simulated by a zero threshold) the rows are
    asked by 32 threads; the answer is the same list, in the manifest's order."""
    from mami_jax.data import file_questions, missing_files
    if slow_stat:
        monkeypatch.setattr(file_questions, "SLOW_SECONDS", 0.0)
    (tmp_path / "there.png").write_bytes(b"")
    rows = [ManifestRow(image_id=str(i), patient_id="p", study_id="s", order="0",
                        modality="xray", dataset="d", view="",
                        path=str(tmp_path / ("gone.png" if i % 97 in (3, 50) else "there.png")))
            for i in range(3000)]
    assert [r.image_id for r in missing_files.missing_rows(rows)] == [
        str(i) for i in range(3000) if i % 97 in (3, 50)]


def test_one_stat_pass_finds_the_missing_images_and_keys_their_cache(tmp_path, monkeypatch):
    """``ImageFiles`` asks each file once and answers both questions that were asked
    separately (a missing check, then the embedding chunks' key): the same missing rows
    as ``os.path.exists``, the same fingerprint as ``rows_signature``. A folder (a
    series), an Analyze pair missing its other half, and a removed file each."""
    from mami_jax.data import image_signature, missing_files
    from mami_jax.data.image_signature import ImageFiles, rows_signature
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.png").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"a")
    (tmp_path / "v.img").write_bytes(b"v")                 # its v.hdr is missing
    names = ["a.png", "series", "v.img", "gone.png", "v.hdr"]
    rows = [ManifestRow(image_id=f"i{k}", patient_id="p", study_id="s", order="0",
                        modality="xray", dataset="d", view="", path=str(tmp_path / n))
            for k, n in enumerate(names)]
    asked = []
    real = image_signature.path_signature
    monkeypatch.setattr(image_signature, "path_signature", lambda p: asked.append(p) or real(p))
    files = ImageFiles(rows)
    assert asked == [r.path for r in rows]
    assert [r.image_id for r in missing_files.missing_rows(rows, files)] == ["i3", "i4"] == [
        r.image_id for r in missing_files.missing_rows(rows)]
    assert files.signature(rows[:3]) == rows_signature(rows[:3])
    assert files.signature(rows) == rows_signature(rows)
    before = files.signature(rows)
    (tmp_path / "series" / "2.png").write_bytes(b"y")      # a changed series: a new key
    assert rows_signature(rows) != before
    del asked[:]
    with pytest.raises(FileNotFoundError, match=r"image_id='i3'.*\(1 more image missing\)"):
        missing_files.check_images_on_disk(rows, False, "evaluation", files)
    assert asked == []
