"""``python -m mami_jax.data.preview_manifest`` and the preview ``build_manifest`` draws:
a few patients of every group, their images as the model sees them, unreadable ones
marked and listed, inputs never replaced."""

import numpy as np
import pytest
from PIL import Image

from mami_jax.data import build_manifest, preview_manifest
from mami_jax.data.manifest import ManifestRow, read_manifest, write_manifest
from mami_jax.data.picture_grid import LINE_HEIGHT, UNREADABLE, slice_caption
from mami_jax.data.preview_manifest import choose_patients
from tests.test_data_decode import write_dicom

CELL, LABEL_WIDTH = 128, 150
ROW_HEIGHT = CELL + 2 * LINE_HEIGHT + 6


def _row(i, patient, modality="xray", order=0, dataset="d", path="x.png", split="train"):
    return ManifestRow(image_id=f"im{i}", patient_id=patient, study_id=f"{patient}-{order}",
                       order=str(order), modality=modality, dataset=dataset, view="",
                       path=path, split=split)


def test_patients_are_chosen_per_group_pairs_first_and_shown_in_visit_order():
    rows = ([_row(i, "single", order=0) for i in range(1)]
            + [_row(10 + o, "pair", order=o) for o in (3, 1, 2)]          # stored out of order
            + [_row(20, "ct1", modality="ct"), _row(21, "ct1", modality="ct", order=1)]
            + [_row(30, "x", dataset="a", order=5), _row(31, "x", dataset="a", order=10)])
    chosen = choose_patients(rows, patients=1, visits=2)
    # Groups in MODALITIES order (xray before ct), then by dataset; the patient with two
    # images or more comes before the single one; orders compared as numbers (5 < 10).
    assert [[r.image_id for r in p] for p in chosen] == [["im30", "im31"], ["im11", "im12"],
                                                         ["im20", "im21"]]
    both = choose_patients(rows, patients=2, visits=5)
    assert [[r.patient_id for r in p][0] for p in both] == ["x", "pair", "single", "ct1"]
    assert choose_patients(rows, 2, 5, seed=3) == choose_patients(rows, 2, 5, seed=3)


def _halves(path, bright_left: bool):
    """A 64 px grey PNG, one half black and the other white."""
    a = np.zeros((64, 64), np.uint8)
    if bright_left:
        a[:, :32] = 255
    else:
        a[:, 32:] = 255
    Image.fromarray(a).save(path)


def _cell(picture, patient: int, visit: int, dx: int) -> int:
    """Grey level at the middle row of a cell, ``dx`` pixels right of its centre."""
    x = LABEL_WIDTH + visit * CELL + 2 + (CELL - 4) // 2 + dx
    y = patient * ROW_HEIGHT + 2 + (CELL - 4) // 2
    return int(np.asarray(picture)[y, x, 0])


def test_the_picture_shows_what_the_model_reads_and_marks_what_it_cannot(tmp_path, capsys):
    """A MONOCHROME1 radiograph stored dark-left is read bright-left, as the model gets it;
    a missing file is a red cell and a line naming its row; the inputs are untouched."""
    _halves(tmp_path / "a.png", bright_left=False)
    stored = np.zeros((64, 64), np.uint16)
    stored[:, 32:] = 1000                           # MONOCHROME1: low values are shown bright
    write_dicom(str(tmp_path / "b.dcm"), stored, photometric="MONOCHROME1")
    manifest = tmp_path / "manifest.csv"
    write_manifest([_row(0, "p", path=str(tmp_path / "a.png")),
                    _row(1, "p", order=1, path=str(tmp_path / "b.dcm")),
                    _row(2, "p", order=2, path=str(tmp_path / "gone.png"))], str(manifest))
    before = manifest.read_bytes(), (tmp_path / "b.dcm").read_bytes()
    out = tmp_path / "preview.png"
    assert preview_manifest.main(["--manifest", str(manifest), "--out", str(out)]) == 0
    picture = Image.open(out).convert("RGB")
    assert picture.size == (LABEL_WIDTH + 3 * CELL, ROW_HEIGHT)
    assert (_cell(picture, 0, 0, -30), _cell(picture, 0, 0, 30)) == (0, 255)    # the PNG as is
    assert (_cell(picture, 0, 1, -30), _cell(picture, 0, 1, 30)) == (255, 0)    # inverted
    assert np.asarray(picture)[ROW_HEIGHT // 3, LABEL_WIDTH + 2 * CELL + 10].tolist() == \
        list(UNREADABLE)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"preview: 1 patients, 3 images -> {out}"
    assert lines[1] == "  1 of them could not be read:"
    assert lines[2].startswith(f"    {manifest}: line 4: image_id='im2': ") and "gone.png" in lines[2]
    assert (manifest.read_bytes(), (tmp_path / "b.dcm").read_bytes()) == before


def test_bad_arguments_are_one_error_line_and_inputs_are_never_replaced(tmp_path, capsys):
    _halves(tmp_path / "a.png", bright_left=True)
    manifest = tmp_path / "m.csv"
    write_manifest([_row(0, "p", path=str(tmp_path / "a.png"))], str(manifest))
    image = (tmp_path / "a.png").read_bytes()
    for out, said in [(tmp_path / "a.png", "would overwrite the input"),
                      (tmp_path / "p.csv", "give a name ending in .png")]:
        assert preview_manifest.main(["--manifest", str(manifest), "--out", str(out)]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and said in err[0], err
    assert (tmp_path / "a.png").read_bytes() == image and not (tmp_path / "p.csv").exists()
    assert preview_manifest.main(["--manifest", str(manifest), "--out",
                                  str(tmp_path / "v.png"), "--split", "test"]) == 1
    assert capsys.readouterr().err == (f"error: --manifest {manifest}: no rows of split 'test' "
                                       "(the rows' splits: ['train'])\n")
    with pytest.raises(SystemExit) as stop:
        preview_manifest.main(["--manifest", str(manifest), "--out", "v.png", "--patients", "0"])
    assert stop.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:     # was "no config key 'eval.batch_size'"
        preview_manifest.main(["--manifest", str(manifest), "--out", "v.png", "--set",
                               "eval.batch_size=4"])
    assert stop.value.code == 2
    assert "--set eval.batch_size=4: a preview reads with the data block alone" in \
        capsys.readouterr().err


def _folders(root):
    """``--dataset folders``: one patient with two visits of readable PNGs."""
    for visit in ("v1", "v2"):
        (root / "pat" / visit).mkdir(parents=True)
        _halves(root / "pat" / visit / "img.png", bright_left=True)


def test_build_manifest_draws_the_preview_beside_the_manifest(tmp_path, capsys):
    root = tmp_path / "mine"
    _folders(root)
    out = tmp_path / "manifest.csv"
    argv = ["--dataset", "folders", "--modality", "xray", "--root", str(root), "--out", str(out)]
    assert build_manifest.main(argv) == 0
    picture = tmp_path / "manifest_preview.png"
    assert f"preview: 1 patients, 2 images -> {picture}\n" in capsys.readouterr().out
    shown = Image.open(picture).convert("RGB")
    assert (_cell(shown, 0, 1, -30), _cell(shown, 0, 1, 30)) == (255, 0)
    assert len(read_manifest(str(out))) == 2
    # Replaced with --overwrite like the manifest; a file of that name that is not a
    # picture is refused, even with --overwrite, and left as it was.
    assert build_manifest.main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    picture.write_text("my notes")
    assert build_manifest.main(argv + ["--overwrite"]) == 1
    assert capsys.readouterr().err == (
        f"error: {picture} exists and is not a PNG picture; refusing to replace it, even with "
        "--overwrite (write the manifest into another folder)\n")
    assert picture.read_text() == "my notes"
    picture.unlink()
    for flag in ("--no-verify-files", "--no-preview"):
        assert build_manifest.main(argv + ["--overwrite", flag]) == 0
        assert f"preview: not drawn ({flag})\n" in capsys.readouterr().out
        assert not picture.exists()


def test_the_train_view_shows_the_augmentation_drawn_again_the_same(tmp_path):
    for name in ("a", "b"):
        _halves(tmp_path / f"{name}.png", bright_left=True)
    manifest = tmp_path / "m.csv"
    write_manifest([_row(i, "p", order=i, path=str(tmp_path / f"{n}.png"))
                    for i, n in enumerate("ab")], str(manifest))

    def picture(view, seed=0):
        out = tmp_path / f"{view}{seed}.png"
        assert preview_manifest.main(["--manifest", str(manifest), "--out", str(out),
                                      "--view", view, "--seed", str(seed)]) == 0
        return np.asarray(Image.open(out).convert("RGB"))

    eval_view, train_view = picture("eval"), picture("train")
    assert eval_view.shape == train_view.shape
    cells = np.s_[:CELL, LABEL_WIDTH:]
    assert np.abs(eval_view[cells].astype(int) - train_view[cells]).mean() > 5   # augmented
    np.testing.assert_array_equal(picture("train"), train_view)                 # seeded
    assert np.abs(picture("train", seed=1)[cells].astype(int) - train_view[cells]).mean() > 1


def test_config_reads_the_images_with_the_experiments_settings(tmp_path):
    """``--config``: the experiment's data block. Its evaluation view of the whole image
    (``eval_whole``) keeps the border the paper's centre crop cuts away."""
    a = np.zeros((64, 64), np.uint8)
    a[:3], a[-3:], a[:, :3], a[:, -3:] = 255, 255, 255, 255      # a white frame 3 px wide
    Image.fromarray(a).save(tmp_path / "framed.png")
    manifest = tmp_path / "m.csv"
    write_manifest([_row(0, "p", path=str(tmp_path / "framed.png"))], str(manifest))
    config = tmp_path / "whole.py"
    config.write_text("from configs.all import get_config as paper\n"
                      "from mami_jax.data.config import update_modalities\n\n\n"
                      "def get_config(arg=None):\n"
                      "    c = paper()\n"
                      "    update_modalities(c.data, eval_whole=True)\n"
                      "    return c\n")
    corners = []
    for extra in ([], ["--config", str(config)]):
        out = tmp_path / f"p{len(extra)}.png"
        assert preview_manifest.main(["--manifest", str(manifest), "--out", str(out)] + extra) == 0
        corners.append(int(np.asarray(Image.open(out).convert("L"))[3, LABEL_WIDTH + 3]))
    assert corners[0] < 60 and corners[1] > 200     # cut by the crop / kept whole


def test_a_series_caption_counts_the_slices_read_not_the_series():
    """A CT of 120 slices is read as a few: "slice 5 of 8" read as its fifth slice."""
    assert slice_caption(1) == ""
    assert slice_caption(8) == "slice 5 of 8 read"
    assert slice_caption(3) == "slice 2 of 3 read"
