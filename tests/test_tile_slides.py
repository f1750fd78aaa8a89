"""Whole-slide images cut into pathology tiles (``python -m mami_jax.data.tile_slides``).

The slides are pyramidal TIFFs the tests write (tifffile), which OpenSlide reads as a
scanner's file ("generic-tiff", with its resolution): white glass and an ellipse of
stained tissue whose area is known, so the tiles kept, where they lie, their pixels and
the resolution they are cut at can be worked out by hand.
"""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.data import slide_grid, slide_tissue, tile_slides
from mami_jax.data.build_manifest import main as build_manifest
from mami_jax.runtime import folder_lock

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("openslide")

H, W = 1024, 1536


def tissue_image(seed=0):
    """(H, W, 3) uint8: glass (240) with a stained ellipse; and the ellipse's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    inside = ((yy - 500) / 300.0) ** 2 + ((xx - 700) / 500.0) ** 2 < 1
    img = np.full((H, W, 3), 240, np.uint8)
    stain = rng.integers(60, 200, (int(inside.sum()), 3)) * np.array([1.0, 0.45, 0.9])
    img[inside] = stain.astype(np.uint8)
    return img, inside


def write_slide(path, img, mpp=0.25, levels=(1, 2, 4)):
    """A tiled pyramidal TIFF of ``img`` at ``mpp`` microns per level-0 pixel (None: no
    resolution), one page per downsample in ``levels``."""
    with tifffile.TiffWriter(path) as tif:
        for k in levels:
            opts = dict(tile=(128, 128), photometric="rgb", compression="zlib")
            if mpp is not None:
                opts.update(resolution=(1e4 / (mpp * k),) * 2, resolutionunit="CENTIMETER")
            tif.write(img[::k, ::k], subfiletype=0 if k == 1 else 1, **opts)


def digest(folder):
    h = hashlib.sha256()
    for here, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(here, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_otsu_splits_two_populations_and_fractions_are_areas():
    values = np.r_[np.full(300, 0.04), np.full(100, 0.5)]
    assert 0.04 <= slide_tissue.otsu_threshold(values) < 0.5
    mask = np.zeros((8, 12), bool)
    mask[0:4, 0:6] = True
    mask[4:8, 6:9] = True
    # 3 x 2 cells of 16 level-0 pixels = 4 mask pixels (4 level-0 pixels per mask pixel)
    np.testing.assert_allclose(slide_tissue.tissue_fractions(mask, 4.0, 16, 3, 2),
                               [[1.0, 0.5, 0.0], [0.0, 0.5, 0.25]])


def test_plan_reads_the_coarsest_level_fine_enough_for_the_resolution():
    mask = np.ones((64, 96), bool)
    # 0.25 um slide, tiles of 128 px at 0.5 um: footprint 256 level-0 px, read at level 1
    # (downsample 2) as 128 px; at 1.0 um: footprint 512, level 2 (downsample 4)
    plan = slide_grid.plan_tiles("s", (W, H), (1.0, 2.0, 4.0), 0.25, tile=128, mpp=0.5,
                                 mask=mask, mask_scale=16.0, min_tissue=0.5, max_tiles=0, seed=0)
    assert (plan.footprint, plan.level, plan.read_size) == (256, 1, 128)
    assert len(plan.positions) == plan.grid_tiles == (W // 256) * (H // 256)
    plan = slide_grid.plan_tiles("s", (W, H), (1.0, 2.0, 4.0), 0.25, tile=128, mpp=1.0,
                                 mask=mask, mask_scale=16.0, min_tissue=0.5, max_tiles=0, seed=0)
    assert (plan.footprint, plan.level, plan.read_size) == (512, 2, 128)
    # 0.6 um: footprint 307 px, level 1 is the coarsest fine enough (2 <= 2.4), read 154 px
    plan = slide_grid.plan_tiles("s", (W, H), (1.0, 2.0, 4.0), 0.25, tile=128, mpp=0.6,
                                 mask=mask, mask_scale=16.0, min_tissue=0.5, max_tiles=0, seed=0)
    assert (plan.footprint, plan.level, plan.read_size) == (307, 1, 154)
    with pytest.raises(ValueError, match="s: scanned at 0.25 microns per pixel, coarser than "
                                         "--mpp 0.1; give --mpp 0.25 or more"):
        slide_grid.footprint_of(128, 0.1, 0.25, "s")
    with pytest.raises(ValueError, match="s: no resolution .*--mpp 0 cuts"):
        slide_grid.footprint_of(128, 0.5, None, "s")


def test_max_tiles_is_a_fixed_choice_per_slide_in_reading_order():
    mask = np.ones((64, 96), bool)
    kw = dict(tile=64, mpp=0, mask=mask, mask_scale=16.0, min_tissue=0.5, max_tiles=5)
    a = slide_grid.plan_tiles("a", (W, H), (1.0,), None, seed=0, **kw).positions
    assert len(a) == 5 and list(a) == sorted(a, key=lambda p: (p[1], p[0]))
    assert a == slide_grid.plan_tiles("a", (W, H), (1.0,), None, seed=0, **kw).positions
    assert a != slide_grid.plan_tiles("b", (W, H), (1.0,), None, seed=0, **kw).positions


def test_slides_become_tiles_of_tissue_at_the_asked_resolution(tmp_path, capsys):
    img, inside = tissue_image()
    slides = tmp_path / "slides"
    slides.mkdir()
    write_slide(str(slides / "TCGA-AB-0001-01Z-00-DX1.ABCD.tif"), img)
    write_slide(str(slides / "TCGA-AB-0002-01Z-00-DX1.EF.tif"), tissue_image(1)[0], levels=(1,))
    before = digest(slides)
    out = tmp_path / "cut"
    assert tile_slides.main(["--slides", str(slides), "--out", str(out), "--tile", "128",
                             "--mpp", "0.5", "--max-tiles", "100"]) == 0   # fewer on a slide
    assert digest(slides) == before                                      # inputs only read
    folder = out / "tiles" / "TCGA-AB-0001-01Z-00-DX1.ABCD"
    record = np.genfromtxt(out / "records" / f"{folder.name}.csv", delimiter=",", names=True,
                           dtype=None, encoding="utf-8")
    # Footprint 256 level-0 px; kept: the cells of the 6 x 4 grid at least half inside
    # the ellipse (the tissue mask is read from a thumbnail, so a cell near one half may
    # go either way: compared with the exact share away from 0.5 only).
    share = inside[:4 * 256, :6 * 256].reshape(4, 256, 6, 256).mean(axis=(1, 3))
    kept = {(int(x), int(y)) for x, y in zip(record["x"], record["y"])}
    for r in range(4):
        for c in range(6):
            if abs(share[r, c] - 0.5) > 0.1:
                assert ((c * 256, r * 256) in kept) == (share[r, c] > 0.5), (r, c, share[r, c])
    assert set(record["level"]) == {1} and set(record["read_size"]) == {128}
    # A tile read at level 1 (the slide's own 2x page) as stored: its pixels exactly.
    x, y = sorted(kept)[0]
    tile = np.asarray(Image.open(folder / f"{x}_{y}.png"))
    np.testing.assert_array_equal(tile, img[::2, ::2][y // 2:y // 2 + 128, x // 2:x // 2 + 128])
    # The slide without a pyramid: read at level 0, 256 px averaged down to 128.
    other = out / "tiles" / "TCGA-AB-0002-01Z-00-DX1.EF"
    name = sorted(os.listdir(other))[0]
    x, y = (int(v) for v in name[:-4].split("_"))
    src = tissue_image(1)[0][y:y + 256, x:x + 256].reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    got = np.asarray(Image.open(other / name)).astype(float)
    assert np.abs(got - src).max() <= 1.0
    for stem in ("TCGA-AB-0001-01Z-00-DX1.ABCD", "TCGA-AB-0002-01Z-00-DX1.EF"):
        preview = Image.open(out / "previews" / f"{stem}.png")
        assert max(preview.size) == 1024 and preview.mode == "RGB"
    summary = json.loads((out / "tiling.json").read_text())
    assert summary["settings"]["mpp"] == 0.5 and summary["skipped"] == {}
    assert sum(summary["tiles"].values()) == len(kept) + len(os.listdir(other))
    # The tiles are a tcga dataset as they are: one patient per slide.
    manifest = tmp_path / "m.csv"
    assert build_manifest(["--dataset", "tcga", "--root", str(out / "tiles"),
                           "--out", str(manifest)]) == 0
    lines = manifest.read_text().splitlines()
    assert len(lines) == 1 + sum(summary["tiles"].values())
    assert {ln.split(",")[1] for ln in lines[1:]} >= {"TCGA-AB-0001", "TCGA-AB-0002"}
    assert "rows not used: 0" in capsys.readouterr().out      # only tiles under tiles/


def test_a_stopped_run_goes_on_threads_and_workers_agree_and_other_settings_are_refused(
        tmp_path, capsys):
    img, _ = tissue_image()
    slides = tmp_path / "slides"
    slides.mkdir()
    for k in range(2):
        write_slide(str(slides / f"s{k}.tif"), img)
    out = tmp_path / "cut"
    args = ["--slides", str(slides), "--out", str(out), "--tile", "128", "--max-tiles", "4"]
    assert tile_slides.main(args) == 0
    first = digest(out / "tiles")
    one = tmp_path / "one_thread"                    # the same tiles from one thread
    assert tile_slides.main(args[:3] + [str(one)] + args[4:] + ["--threads", "1"]) == 0
    assert digest(one / "tiles") == first
    two = tmp_path / "two_workers"                   # and from two worker processes
    assert tile_slides.main(args[:3] + [str(two)] + args[4:] + ["--workers", "2"]) == 0
    assert digest(two / "tiles") == first
    assert json.loads((two / "tiling.json").read_text())["tiles"] == \
        json.loads((out / "tiling.json").read_text())["tiles"]
    os.rename(out / "tiles" / "s1", tmp_path / "s1_done")          # as if stopped before s1
    assert tile_slides.main(args) == 0
    assert digest(out / "tiles") == first
    capsys.readouterr()
    assert tile_slides.main(args[:-2] + ["--max-tiles", "5"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out}: was tiled with --max-tiles 4 (now 5); give another --out "
        "(tiles of two settings would mix)")


def test_bad_slides_end_in_one_line_or_are_skipped_when_asked(tmp_path, capsys):
    img, _ = tissue_image()
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "broken.svs").write_bytes(b"not a slide")
    write_slide(str(slides / "no_resolution.tif"), img, mpp=None)
    write_slide(str(slides / "good.tif"), img)
    out = tmp_path / "cut"
    assert tile_slides.main(["--slides", str(slides / "broken.svs"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {slides / 'broken.svs'}: not a slide OpenSlide reads")
    assert len(err.splitlines()) == 1
    assert tile_slides.main(["--slides", str(slides / "no_resolution.tif"), "--out",
                             str(tmp_path / "c2")]) == 1
    assert "no resolution in the slide's metadata" in capsys.readouterr().err
    assert tile_slides.main(["--slides", str(slides), "--out", str(tmp_path / "c3"),
                             "--skip-unreadable"]) == 0
    summary = json.loads((tmp_path / "c3" / "tiling.json").read_text())
    assert sorted(os.path.basename(p) for p in summary["skipped"]) == ["broken.svs",
                                                                       "no_resolution.tif"]
    assert os.listdir(tmp_path / "c3" / "tiles") == ["good"]
    assert "2 slides skipped (--skip-unreadable)" in capsys.readouterr().out
    # A damaged tile in the middle of a readable slide (its coarser levels give the
    # thumbnail): one line naming the file and the region.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    write_slide(str(damaged / "d.tif"), img)
    with tifffile.TiffFile(damaged / "d.tif") as tif:     # level 1's tile at the centre
        page = tif.pages[1]
        k = (250 // 128) * (W // 2 // 128) + 350 // 128
        offset, count = page.dataoffsets[k], page.databytecounts[k]
    with open(damaged / "d.tif", "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * count)
    assert tile_slides.main(["--slides", str(damaged), "--out", str(tmp_path / "c5"),
                             "--mpp", "0.5", "--tile", "128"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        f"error: {damaged / 'd.tif'}: the region at level-0 ("), err
    assert "level 1 cannot be read (OpenSlideError: " in err
    assert os.listdir(tmp_path / "c5" / "tiles") == []      # the slide's tiles: none or all
    for bad, said in ((["--tile", "8"], "--tile 8: expected at least 16 pixels"),
                      (["--min-tissue", "2"], "--min-tissue 2: expected a share in [0, 1]"),
                      (["--min-tissue", "nan"], "--min-tissue nan: expected a share in [0, 1]"),
                      (["--mpp", "-1"], "--mpp -1: expected 0 or more"),
                      (["--mpp", "nan"], "--mpp nan: expected 0 or more"),
                      (["--max-tiles", "-3"], "--max-tiles -3: expected 0 (all) or more")):
        with pytest.raises(SystemExit) as e:         # usage errors, as argparse's own
            tile_slides.main(["--slides", str(slides), "--out", str(tmp_path / "c4")] + bad)
        assert e.value.code == 2
        assert capsys.readouterr().err.strip() == \
            f"error: python -m mami_jax.data.tile_slides: {said} (see --help)"
        assert not (tmp_path / "c4").exists()          # refused before --out is made
    busy = tmp_path / "busy"                 # another run still cutting into it
    busy.mkdir()
    with folder_lock.held(str(busy), f"--out {busy}", "tile_slides run"):
        assert tile_slides.main(["--slides", str(slides / "good.tif"), "--out", str(busy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {busy} is in use by another tile_slides run (") and \
        len(err.strip().splitlines()) == 1, err
    assert os.listdir(busy) == [folder_lock.LOCK_FILE]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    assert tile_slides.main(["--slides", str(slides / "good.tif"), "--out",
                             str(tmp_path / "notes")]) == 1
    assert "holds files this command did not write (mine.txt)" in capsys.readouterr().err


def test_a_run_that_cut_no_slide_leaves_its_settings_to_be_replaced(tmp_path, capsys):
    # The first run ends on a slide without a resolution, its error suggesting --mpp 0;
    # that retry into the same --out was refused ("was tiled with --mpp 0.5") though no
    # tile had been cut.
    img, _ = tissue_image()
    slides = tmp_path / "slides"
    slides.mkdir()
    write_slide(str(slides / "nompp.tif"), img, mpp=None, levels=(1, 4))
    out = tmp_path / "cut"
    args = ["--slides", str(slides), "--out", str(out), "--tile", "128", "--max-tiles", "3"]
    assert tile_slides.main(args) == 1
    assert "--mpp 0 cuts its level-0 pixels as stored" in capsys.readouterr().err
    assert tile_slides.main(args + ["--mpp", "0"]) == 0
    summary = json.loads((out / "tiling.json").read_text())
    assert summary["settings"]["mpp"] == 0 and list(summary["tiles"].values()) == [3]
    assert len(os.listdir(out / "tiles" / "nompp")) == 3
    capsys.readouterr()
    assert tile_slides.main(args + ["--mpp", "1"]) == 1       # now tiles are in place
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out}: was tiled with --mpp 0.0 (now 1.0); give another --out "
        "(tiles of two settings would mix)")
