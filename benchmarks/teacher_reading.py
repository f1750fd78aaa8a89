"""Teacher extraction: reading each image once for all teachers, in threads, against one
read per teacher in turn.

The workload is the medical bag's X-ray case: three 2-D teachers per image (BiomedCLIP
and DINOv2 at 224 px, RAD-DINO at 518 px) on full-size X-rays (16-bit grey PNGs,
generated into a temporary folder by this script). The teachers' forward pass is replaced
by the per-channel mean of their input, which costs next to nothing: on an accelerator
the forward pass of a batch takes milliseconds and the reading is what a run waits for.

Variants, interleaved in every repeat (A B A B ...), each computing the same features
(checked bit for bit):

  - ``per_teacher``: each teacher alone (``shard_features`` called once per teacher with
    one reading thread): every image is read and resized three times, as extraction did
    before images were shared;
  - ``shared_1``, ``shared_N``: one ``shard_features`` call for all three teachers with 1
    and ``--threads`` reading threads.

    python benchmarks/teacher_reading.py [--images 24] [--size 2048] [--repeats 3]
        [--threads 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.input_speed import smooth_image  # noqa: E402
from mami_jax.data.manifest import ManifestRow  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402
from teachers import extract, registry  # noqa: E402
from teachers.loaded import LoadedTeacher  # noqa: E402

BAG = ("biomedclip", "rad_dino", "dinov2_base")


def free_teacher(name: str) -> LoadedTeacher:
    """``name``'s input (size, mean, std) with a forward pass that costs nothing."""
    spec = registry.get_spec(name)
    return LoadedTeacher(spec=dataclasses.replace(spec, feature_dim=3),
                         forward=lambda x: x.mean(dim=(2, 3)), feature_dim=3,
                         fingerprint=name, weights_path=None)


class NoBar:
    def update(self, n):
        pass


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24,
                        help="X-rays generated and read (default: %(default)s)")
    parser.add_argument("--size", type=int, default=2048, help="X-ray side in pixels")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of every variant; medians are reported "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=4,
                        help="reading threads of the shared_N variant (default: %(default)s)")
    parser.add_argument("--json", default=None,
                        help="also write the times and settings to this file")
    args = parser.parse_args(argv)
    for flag in ("images", "size", "repeats", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")

    def work():
        if args.json:
            check_json_file(args.json, "--json")
        with tempfile.TemporaryDirectory(prefix="teacher_reading_",
                                         ignore_cleanup_errors=True) as folder:
            run(args, folder)
    return exit_status(work)


def run(args: argparse.Namespace, folder: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(args.images):
        path = os.path.join(folder, f"{i}.png")
        Image.fromarray(smooth_image(rng, (args.size, args.size), 65535)).save(path)
        rows.append(ManifestRow(image_id=str(i), patient_id=str(i), study_id="0", order="0",
                                modality="xray", dataset="bench", view="", path=path, split=""))
    teachers = [free_teacher(n) for n in BAG]

    def per_teacher():
        out = {}
        for t in teachers:
            out.update(extract.shard_features([t], rows, 16, "cpu", False, NoBar(), 1)[0])
        return out

    variants = {"per_teacher": per_teacher,
                "shared_1": lambda: extract.shard_features(teachers, rows, 16, "cpu", False,
                                                           NoBar(), 1)[0]}
    if args.threads > 1:       # --threads 1 is shared_1: its key would replace that one's
        variants[f"shared_{args.threads}"] = lambda: extract.shard_features(
            teachers, rows, 16, "cpu", False, NoBar(), args.threads)[0]
    times = {name: [] for name in variants}
    reference = None
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            features = fn()
            times[name].append(time.perf_counter() - start)
            flat = {(t, i): v for t, f in features.items() for i, v in f.items()}
            if reference is None:
                reference = flat
            assert flat.keys() == reference.keys() and all(
                np.array_equal(flat[k], reference[k]) for k in flat), name
    base = statistics.median(times["per_teacher"])
    print(f"{args.images} X-rays of {args.size} px, 16-bit PNG; teachers {', '.join(BAG)} "
          f"(free forward); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    print(f"{'variant':14s} {'median s':>9s} {'ms/image':>9s} {'vs per_teacher':>15s}")
    result = {}
    for name, ts in times.items():
        m = statistics.median(ts)
        result[name] = dict(seconds=ts, median=m, ms_per_image=1000 * m / args.images,
                            ratio=m / base)
        print(f"{name:14s} {m:9.2f} {1000 * m / args.images:9.1f} {m / base:15.3f}")
    if args.json:
        write_text_atomic(args.json, json.dumps(dict(args=vars(args), variants=result), indent=1))


if __name__ == "__main__":
    run_command(main)
