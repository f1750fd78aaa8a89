"""Cut whole-slide images into the tiles the pathology modality trains and evaluates on.

    python -m mami_jax.data.tile_slides --slides SLIDES [SLIDES ...] --out DIR
        [--tile 256] [--mpp 0.5] [--min-tissue 0.5] [--max-tiles 0] [--seed 0]
        [--format png|jpg] [--threads 4] [--workers 1] [--skip-unreadable]

``--slides``: slide files, or folders searched for them (``slide_reader.SLIDE_EXTENSIONS``).
Each slide gives tiles of ``--tile`` pixels at ``--mpp`` microns per pixel, where its
tissue covers at least ``--min-tissue`` of the tile (``slide_grid``, ``slide_tissue``);
``--max-tiles N`` keeps a random N per slide (the same on every run). Written:

- ``DIR/tiles/<slide>/<x>_<y>.png``: the tiles, named by their level-0 position, where
  ``<slide>`` is the slide's file name without its extension. A TCGA slide's name starts
  with its barcode, so ``build_manifest --dataset tcga --root DIR/tiles`` reads them as
  they are; any other dataset through ``--dataset folders`` after grouping the slide
  folders by patient;
- ``DIR/records/<slide>.csv``: each tile's file, position, pyramid level read, tissue
  share (beside the tiles, not among them: a dataset builder reads every file there);
- ``DIR/previews/<slide>.png``: the slide's thumbnail, tissue tinted, kept tiles outlined,
  to check the tissue rule at a glance;
- ``DIR/tiling.json``: the settings (a rerun with other settings is refused once a slide's
  tiles are in place: tiles of two resolutions would mix; before that, they replace the
  earlier ones) and, at the end, each slide's count and what was skipped.

A slide's tiles appear all at once (a staging folder renamed into place), so a stopped
run keeps its finished slides and the same command goes on with the rest. Inputs are
only read. A file OpenSlide cannot read, or a slide whose resolution cannot give
``--mpp``, ends the run naming it; with ``--skip-unreadable`` it is left out, counted
and named in ``tiling.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import math
import multiprocessing
import os
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mami_jax.data.datasets.common import walk_files
from mami_jax.data.slide_grid import TilePlan, footprint_of, plan_tiles
from mami_jax.data.slide_reader import SLIDE_EXTENSIONS, Slide
from mami_jax.data.slide_tissue import tissue_mask
from mami_jax.runtime import folder_lock, strict_json
from mami_jax.runtime.atomic_files import (is_temporary, publish_dir, staging_dir, write_atomic,
                                          write_text_atomic)
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.interrupts import leave_stops_to_the_parent, run_command, say_interrupted
from mami_jax.runtime.json_object import parse_json_object
from mami_jax.runtime.ordered_map import ordered_map
from mami_jax.runtime.output_guard import check_output_folder, refuse_inside_inputs
from mami_jax.runtime.progress import progress_bar

SETTINGS = "tiling.json"
TILES, PREVIEWS, RECORDS = "tiles", "previews", "records"
RECORD_COLUMNS = ("file", "x", "y", "level", "read_size", "tissue")
#: Thumbnail pixels across a tile's footprint when reading the tissue mask.
MASK_PIXELS_PER_TILE = 8
#: The largest side of the thumbnail the mask is read from.
MASK_MAX_SIDE = 4096
PREVIEW_MAX_SIDE = 1024
#: Seconds before a bar shows: a few small slides are cut without one.
BAR_DELAY = 2.0


def find_slides(paths: Sequence[str]) -> list[str]:
    """The slide files ``paths`` name (folders searched at any depth, hidden names left
    out), each once, in the order given (a folder's in sorted order)."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found += [os.path.join(here, name) for here, name in walk_files(path)
                      if name.lower().endswith(SLIDE_EXTENSIONS)]
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"--slides {path}: no such file or folder")
    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not unique:
        raise ValueError(f"--slides {' '.join(paths)}: no slide files "
                         f"({', '.join(SLIDE_EXTENSIONS)})")
    return unique


def slide_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def check_names(slides: Sequence[str]) -> None:
    """ValueError naming two slides whose tiles would share a folder."""
    seen: dict[str, str] = {}
    for path in slides:
        name = slide_name(path)
        if name in seen:
            raise ValueError(f"--slides: {seen[name]} and {path} are both named {name!r}; "
                             "their tiles would share a folder: tile them into separate --out")
        seen[name] = path


def plan_slide(slide: Slide, args) -> tuple[TilePlan, np.ndarray]:
    """(plan, tissue mask) of one open slide."""
    footprint = footprint_of(args.tile, args.mpp, slide.mpp, slide.path)
    scale = max(footprint / MASK_PIXELS_PER_TILE, max(slide.dimensions) / MASK_MAX_SIDE, 1.0)
    thumb, scale = slide.thumbnail(scale)
    mask = tissue_mask(thumb)
    plan = plan_tiles(slide.path, slide.dimensions, slide.downsamples, slide.mpp,
                      tile=args.tile, mpp=args.mpp, mask=mask, mask_scale=scale,
                      min_tissue=args.min_tissue, max_tiles=args.max_tiles, seed=args.seed)
    return plan, mask


def draw_preview(slide: Slide, mask, plan: TilePlan, path: str) -> None:
    """The slide's thumbnail (at most ``PREVIEW_MAX_SIDE`` pixels) with the tissue mask
    tinted green and each kept tile outlined in blue."""
    thumb, scale = slide.thumbnail(max(1.0, max(slide.dimensions) / PREVIEW_MAX_SIDE))
    image = Image.fromarray(thumb)
    tissue = Image.fromarray(mask.astype("uint8") * 255).resize(image.size, Image.Resampling.NEAREST)
    tint = Image.blend(image, Image.new("RGB", image.size, (0, 170, 0)), 0.3)
    image = Image.composite(tint, image, tissue)
    draw = ImageDraw.Draw(image)
    for x, y in plan.positions:
        draw.rectangle([x / scale, y / scale, (x + plan.footprint) / scale - 1,
                        (y + plan.footprint) / scale - 1], outline=(0, 60, 220))
    write_atomic(path, image.save)


def tile_slide(slide: Slide, plan: TilePlan, out: str, extension: str, threads: int,
               show_bar: bool = True) -> None:
    """Writes the plan's tiles into ``out``/tiles/<slide>, all at once, and their record
    to ``out``/records/<slide>.csv (first: a slide folder in place always has its record).
    ``threads`` read and encode tiles ahead (OpenSlide and Pillow's encoders release
    Python's lock); the files are written here, in order, so a stopped slide leaves no
    thread writing into the staging folder as it is removed."""
    name = slide_name(slide.path)
    final = os.path.join(out, TILES, name)
    options = {"format": "JPEG", "quality": 95} if extension == ".jpg" else {"format": "PNG"}

    def encoded(position):
        data = io.BytesIO()
        slide.tile(position, plan.level, plan.read_size, plan.tile).save(data, **options)
        return data.getvalue()

    with staging_dir(final) as tmp:
        rows = []
        with progress_bar(len(plan.positions), name, unit="tile", delay=BAR_DELAY,
                          disable=not show_bar) as bar:
            tiles = ordered_map(encoded, plan.positions, threads, name="tile-slides")
            for (x, y), tissue, data in zip(plan.positions, plan.tissue, tiles):
                file = f"{x}_{y}{extension}"
                with open(os.path.join(tmp, file), "wb") as f:
                    f.write(data)
                rows.append((file, x, y, plan.level, plan.read_size, f"{tissue:.4f}"))
                bar.update(1)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(RECORD_COLUMNS)
        writer.writerows(rows)
        write_text_atomic(os.path.join(out, RECORDS, name + ".csv"), text.getvalue())
        publish_dir(tmp, final)


def settings_of(args) -> dict:
    return {"tile": args.tile, "mpp": args.mpp, "min_tissue": args.min_tissue,
            "max_tiles": args.max_tiles, "seed": args.seed, "format": args.format}


def has_tiles(out: str) -> bool:
    """Whether any slide's tiles are in place in ``out`` (a published slide folder, or
    one kept aside while its replacement moves in; not a staging folder)."""
    folder = os.path.join(out, TILES)
    return os.path.isdir(folder) and any(not is_temporary(n) for n in os.listdir(folder))


def start(args, slides: Sequence[str]) -> dict:
    """Checks ``--out`` (new, empty, or this command's) and writes the settings; returns
    the settings record.

    Other settings than the earlier run's are refused once a slide's tiles are in place
    (tiles of two settings would mix). Before that they replace the earlier ones: a run
    that ended before its first slide was cut (a slide without a resolution, whose error
    suggests ``--mpp 0``) left only its settings, and refusing them refused the very
    retry the error asked for."""
    for folder in (p for p in args.slides if os.path.isdir(p)):
        refuse_inside_inputs(args.out, "--out", {"--slides": folder})
    check_output_folder(args.out, "--out", SETTINGS)
    path = os.path.join(args.out, SETTINGS)
    wanted = settings_of(args)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            earlier = parse_json_object(f.read(), path, "the settings of a tiling")
        before = earlier.get("settings") if isinstance(earlier.get("settings"), dict) else {}
        changed = [f"--{k.replace('_', '-')} {before.get(k)} (now {v})"
                   for k, v in wanted.items() if before.get(k) != v]
        if changed and has_tiles(args.out):
            raise ValueError(f"--out {args.out}: was tiled with {', '.join(changed)}; give "
                             "another --out (tiles of two settings would mix)")
    record = {"settings": wanted, "slides": len(slides)}
    write_text_atomic(path, strict_json.dumps(record, indent=1, sort_keys=True))
    return record


def cut_slide(path: str, args, show_tiles: bool = True) -> int:
    """Plans, draws and writes one slide's tiles (``args``: the command's); returns how
    many. ValueError naming the slide when it cannot be read or cut."""
    with Slide(path) as slide:
        plan, mask = plan_slide(slide, args)
        draw_preview(slide, mask, plan, os.path.join(args.out, PREVIEWS, slide_name(path) + ".png"))
        tile_slide(slide, plan, args.out, "." + args.format, args.threads, show_tiles)
    return len(plan.positions)


def cut_or_skip(path: str, args, show_tiles: bool = True) -> tuple[int | None, str]:
    """``cut_slide``: (count, "") or, with --skip-unreadable, (None, why); without it the
    ValueError is raised (in a worker process: at the slide's turn in the main one)."""
    try:
        return cut_slide(path, args, show_tiles), ""
    except ValueError as e:
        if not args.skip_unreadable:
            raise
        return None, str(e)


def finished_count(args, path: str) -> int | None:
    """Tiles of a slide an earlier run finished (its folder is in place), else None."""
    if not os.path.isdir(os.path.join(args.out, TILES, slide_name(path))):
        return None
    with open(os.path.join(args.out, RECORDS, slide_name(path) + ".csv")) as f:
        return sum(1 for _ in f) - 1


def cut_all(args, slides: Sequence[str]) -> Iterator[tuple[str, int | None, str]]:
    """(slide, count or None, why skipped) for each slide to cut, in order: in this
    process, or with ``--workers`` N > 1 in N processes, one slide each at a time (spawned:
    the caller may have started threads; Ctrl-C is left to this process, which drops the
    slides not begun and waits for the others, each published whole or not at all)."""
    if args.workers <= 1:
        for path in slides:
            yield (path, *cut_or_skip(path, args))
        return
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context,
                                                  initializer=leave_stops_to_the_parent)
    try:
        results = pool.map(cut_or_skip, slides, [args] * len(slides), [False] * len(slides))
        for path, (count, why) in zip(slides, results):
            yield path, count, why
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run(args) -> dict:
    """Tiles every slide (see the module docstring); returns the final record."""
    slides = find_slides(args.slides)
    check_names(slides)
    with folder_lock.output_held(args.out, f"--out {args.out}", "tile_slides run"):
        return _run_held(args, slides)


def _run_held(args, slides: Sequence[str]) -> dict:
    """``run`` with ``--out`` held: a second run into it would cut the same slides and
    publish over the first's."""
    record = start(args, slides)
    counts, skipped = {}, {}
    with progress_bar(len(slides), "slides", unit="slide", delay=BAR_DELAY) as bar:
        todo = []
        for path in slides:
            done = finished_count(args, path)
            if done is None:
                todo.append(path)
            else:
                counts[path] = done
                bar.update(1)
        for path, count, why in cut_all(args, todo):
            if count is None:
                skipped[path] = why
            else:
                counts[path] = count
            bar.update(1)
    record.update(tiles={p: counts[p] for p in slides if p in counts}, skipped=skipped)
    write_text_atomic(os.path.join(args.out, SETTINGS),
                      strict_json.dumps(record, indent=1, sort_keys=True))
    return record


def _parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="python -m mami_jax.data.tile_slides",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", nargs="+", required=True,
                   help="slide files, or folders searched for them")
    p.add_argument("--out", required=True, help="output folder (a rerun goes on in it)")
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    p.add_argument("--mpp", type=float, default=0.5,
                   help="microns per tile pixel (default 0.5, about 20x; 0: the slide's "
                        "level-0 pixels as stored)")
    p.add_argument("--min-tissue", type=float, default=0.5,
                   help="least share of a tile that is tissue (default 0.5)")
    p.add_argument("--max-tiles", type=int, default=0,
                   help="at most this many tiles per slide, a random choice that is the "
                        "same on every run (default 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-tiles choice")
    p.add_argument("--format", choices=("png", "jpg"), default="png",
                   help="tile format (default png, lossless; jpg at quality 95 is smaller)")
    p.add_argument("--threads", type=whole_at_least(1), default=4,
                   help="threads reading and encoding tiles (default 4)")
    p.add_argument("--workers", type=whole_at_least(1), default=1,
                   help="processes cutting slides side by side (default 1)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out slides that cannot be read or cut, named in tiling.json "
                        "(default: such a slide ends the run)")
    return p


def check_arguments(args) -> None:
    """ValueError naming the first argument whose value the command cannot cut with (a
    usage error: ``main`` answers it as argparse answers a malformed one, status 2)."""
    if args.tile < 16:
        raise ValueError(f"--tile {args.tile}: expected at least 16 pixels")
    if not (math.isfinite(args.mpp) and args.mpp >= 0):     # nan passed "< 0"
        raise ValueError(f"--mpp {args.mpp:g}: expected 0 or more")
    if not 0 <= args.min_tissue <= 1:
        raise ValueError(f"--min-tissue {args.min_tissue:g}: expected a share in [0, 1]")
    if args.max_tiles < 0:
        raise ValueError(f"--max-tiles {args.max_tiles}: expected 0 (all) or more")
    if args.threads < 1 or args.workers < 1:
        raise ValueError(f"--threads {args.threads} --workers {args.workers}: expected at "
                         "least 1 each")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        record = run(args)
    except (ValueError, OSError) as e:
        print_error(e, where=os.path.abspath(args.out))
        return 1
    except KeyboardInterrupt:
        return say_interrupted("run the same command again to go on: finished slides are kept")
    tiles = sum(record["tiles"].values())
    empty = [p for p, n in record["tiles"].items() if n == 0]
    print(f"{plural(len(record['tiles']), 'slide')} -> {plural(tiles, 'tile')} in {os.path.join(args.out, TILES)}"
          f" (pictures: {os.path.join(args.out, PREVIEWS)})")
    if empty:
        print(f"  {plural(len(empty), 'slide')} without a tile of --min-tissue {args.min_tissue:g}: "
              + ", ".join(os.path.basename(p) for p in empty[:5])
              + (", ..." if len(empty) > 5 else ""))
    if record["skipped"]:
        print(f"  {plural(len(record['skipped']), 'slide')} skipped (--skip-unreadable), named in "
              f"{os.path.join(args.out, SETTINGS)}")
    return 0


if __name__ == "__main__":
    run_command(main)
