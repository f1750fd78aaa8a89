"""Reads every image of a manifest and lists the ones that cannot be read, before a run.

    python -m mami_jax.data.check_images --manifest FILE [--workers 8] [--split train] \\
        [--unreadable unreadable.csv] [--clean clean.csv] [--overwrite]

Every run checks that the manifest's files exist (``missing_files``), but whether a file
decodes (a truncated DICOM, a JPEG cut off by a failed copy, a series with a slice of another
size) is only known by decoding it, and a run learns it when it first draws that image: it
stops there (``DataError``), maybe hours in, or with ``data.skip_bad_images`` trains on
without it. This command decodes every row's whole image or series (every slice: training
with slice jitter may read any), in ``--workers`` processes, with a bar, and prints each
row it could not read with the reason, naming the row as the run would.

- ``--unreadable FILE.csv``: those rows, one a line: ``line`` (of the manifest), ``image_id``,
  ``path``, ``reason``.
- ``--clean FILE.csv``: the manifest without them, their count printed: the skip, chosen
  and counted, for a run that should not meet them. With ``--split`` the other splits' rows
  are kept as they are, unchecked (counted too), not dropped.

Exit status 0 when every image reads or ``--clean`` left the others out, else 1 with a last
``error:`` line giving the count.
An output is never one of the inputs; an existing one is replaced only with ``--overwrite``
and only when it is what this command writes. Ctrl-C or SIGTERM stop the workers and write
nothing.
"""

from __future__ import annotations

import concurrent.futures
import csv
import multiprocessing
import os
from typing import Iterator, Sequence

from mami_jax.data.decode import DecodeError, open_volume
from mami_jax.data.manifest import (ManifestRow, csv_header, is_manifest, manifest_paths,
                                    read_manifest, row_place, rows_of_split, write_manifest)
from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.runtime.cli_parser import OneLineErrorParser
from mami_jax.runtime.error_line import print_error
from mami_jax.runtime.interrupts import leave_stops_to_the_parent, run_command, say_interrupted
from mami_jax.runtime.output_guard import (check_output_file, check_replaceable_file,
                                           refuse_overwriting_inputs)
from mami_jax.runtime.progress import progress_bar

#: Slices decoded at a time: a long series is read in parts, not held whole.
SLICES_AT_A_TIME = 16
UNREADABLE_COLUMNS = ("line", "image_id", "path", "reason")


def why_unreadable(path: str) -> str | None:
    """None when every slice of ``path`` decodes, else why not (the decoder's message, or
    the exception's type and message where a decoder failed in a way it does not name).
    The decoder refuses a read whose slices differ in size or pixel type; each later part
    is compared with the first, so a series that mixes them across parts (which a training
    read of slices spread over it would meet) is unreadable here too."""
    try:
        volume = open_volume(path)
        first = None
        for start in range(0, volume.num_slices, SLICES_AT_A_TIME):
            part = list(range(start, min(start + SLICES_AT_A_TIME, volume.num_slices)))
            pixels = volume.read(part)
            if first is None:
                first = pixels.shape[1:]
                continue
            if pixels.shape[1:] != first:
                raise DecodeError(
                    f"{path}: slices {part[0]}-{part[-1]} read as {_kind(pixels.shape)}, "
                    f"slices 0-{SLICES_AT_A_TIME - 1} as {_kind((0,) + first)}; a series' slices "
                    "share one size: move the odd ones (a localizer, a thumbnail) out of the "
                    "folder")
            volume.read([0, start])       # the part's pixel type (as stored) against the first's
    except Exception as e:  # noqa: BLE001 - reported: a run would stop on it as well
        message = " ".join(str(e).split())
        return message if isinstance(e, DecodeError) else f"{type(e).__name__}: {message}"
    return None


def _kind(shape) -> str:
    """(T, H, W, C) as the decoder names a slice's kind: HxW, RGB where it is colour."""
    return f"{shape[1]}x{shape[2]}" + (" RGB" if shape[3] == 3 else "")


def check_paths(paths: Sequence[str], workers: int) -> Iterator[str | None]:
    """``why_unreadable`` of each path, in order: here, or in ``workers`` spawned processes
    (Ctrl-C and SIGTERM are left to this one, which stops them)."""
    if workers <= 1:
        yield from map(why_unreadable, paths)
        return
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=leave_stops_to_the_parent)
    try:
        yield from pool.map(why_unreadable, paths, chunksize=8)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def row_line(row: ManifestRow) -> str:
    return str(row.location[1]) if row.location else ""


def write_unreadable(path: str, bad: Sequence[tuple[ManifestRow, str]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow(UNREADABLE_COLUMNS)
            out.writerows((row_line(r), r.image_id, r.path, why) for r, why in bad)
    write_atomic(path, write)


def _check_outputs(args, rows: Sequence[ManifestRow]) -> None:
    outputs = [p for p in (args.unreadable, args.clean) if p]
    for flag, path in (("--unreadable", args.unreadable), ("--clean", args.clean)):
        if path:
            check_output_file(path, flag)
            if not path.lower().endswith(".csv"):
                raise ValueError(f"{flag} {path}: a CSV table; give a name ending in .csv")
    if len({os.path.realpath(p) for p in outputs}) < len(outputs):
        raise ValueError("--unreadable and --clean name the same file")
    refuse_overwriting_inputs(outputs, [args.manifest] + [r.path for r in rows], "--clean/--unreadable")
    if args.unreadable:
        check_replaceable_file(args.unreadable,
                               tuple(csv_header(args.unreadable) or ()) == UNREADABLE_COLUMNS,
                               "a list of unreadable images", args.overwrite,
                               "choose another --unreadable")
    if args.clean:
        check_replaceable_file(args.clean, is_manifest(args.clean), "a manifest",
                               args.overwrite, "choose another --clean")


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m mami_jax.data.check_images",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="the manifest whose images to read")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes decoding at once (a slow disk or bucket wants more)")
    parser.add_argument("--split", default="", help="only rows of this split")
    parser.add_argument("--unreadable", default="",
                        help="CSV to write the unreadable rows to (line, image_id, path, reason)")
    parser.add_argument("--clean", default="",
                        help="manifest to write without the unreadable rows")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier --unreadable list or --clean manifest")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        every = read_manifest(args.manifest)
        rows = rows_of_split(every, args.split, f"--manifest {args.manifest}")
        _check_outputs(args, every)
        paths = sorted({r.path for r in rows})
        reasons = {}
        with progress_bar(len(paths), "reading", unit="file") as bar:
            for path, why in zip(paths, check_paths(paths, args.workers)):
                reasons[path] = why
                bar.update(1)
        bad = [(r, reasons[r.path]) for r in rows if reasons[r.path] is not None]
        if args.unreadable:
            write_unreadable(args.unreadable, bad)
        if args.clean:
            left_out = {r.image_id for r, _ in bad}
            kept = [r for r in every if r.image_id not in left_out]
            write_manifest(manifest_paths(kept, args.clean), args.clean)
    except (ValueError, OSError) as e:
        print_error(e)
        return 1
    except KeyboardInterrupt:
        return say_interrupted()
    for row, why in bad:
        print(f"{row_place(row)} (image_id={row.image_id!r}): {why}")
    print(f"read {len(rows) - len(bad)} of {len(rows)} images"
          + (f"; unreadable rows listed in {args.unreadable}" if args.unreadable and bad else ""))
    if args.clean:
        others = len(every) - len(rows)
        print(f"clean manifest: {len(every) - len(bad)} rows ({len(bad)} unreadable left out"
              + (f"; {others} rows of other splits kept, unchecked" if others else "")
              + f") -> {args.clean}")
    if bad and not args.clean:
        print_error(ValueError(f"{len(bad)} of {len(rows)} images could not be read"))
        return 1
    return 0


if __name__ == "__main__":
    run_command(main)
