"""Input pipeline throughput: images/s of training batches on this machine.

Two workloads, generated into a temporary folder by this script:
  - X-rays: 512 x 512 16-bit PNG (T = 1 slice per image);
  - volumes: NIfTI (.nii.gz, int16) of 256 x 256 x S, read as T = 8 slices per image.
Both go through the full training path (sampling, decode, slice sampling, random
resized crop to 224, jitter, erasing, normalisation, batching) with the default data
config (P = 16 patients x K = 4 images = 64 images per batch) unless overridden.

The workloads and worker settings are interleaved in every repeat (so machine load
drifts hit all variants alike) and the median over repeats is printed. The first
batches of each run that the pipeline could have read ahead while starting (worker
start-up, prefetch buffers) are drained untimed, so the figure is the steady-state
production rate.

    python benchmarks/input_speed.py [--repeats 3] [--batches 4] [--workers 0,2] [--depth 32]
        [--model-batch 8]   # also time the default model's forward+backward for comparison
        [--json input_speed.json]   # also write the runs, medians and settings there
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mami_jax.data import pipeline  # noqa: E402
from mami_jax.data.config import default_data_config  # noqa: E402
from mami_jax.data.manifest import ManifestRow  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402


def smooth_image(rng, shape, dtype_max):
    """Anatomy-like content (low-frequency blobs + noise) so compression is realistic."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w), np.float64)
    for _ in range(6):
        cy, cx, s = rng.random(3)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.1 * s))
    img = img / img.max() * 0.9 + 0.05 * rng.random((h, w))
    return (img * dtype_max).astype(np.uint16 if dtype_max > 255 else np.uint8)


def make_xrays(folder, patients, per_patient, size, rng):
    from PIL import Image

    rows = []
    for p in range(patients):
        for k in range(per_patient):
            path = os.path.join(folder, f"xr_{p}_{k}.png")
            Image.fromarray(smooth_image(rng, (size, size), 4095)).save(path)  # 12-bit in 16-bit PNG
            rows.append(ManifestRow(f"xr:{p}_{k}", f"p{p}", f"s{k}", str(k), "xray", "bench_xr", "", path,
                                    "train"))
    return rows


def make_volumes(folder, patients, per_patient, size, depth, rng):
    import nibabel as nib

    rows = []
    base = smooth_image(rng, (size, size), 2000).astype(np.int16) - 1000
    for p in range(patients):
        for k in range(per_patient):
            vol = np.stack([np.roll(base, z + 7 * p + k, axis=0) for z in range(depth)], axis=-1)
            vol = (vol + rng.integers(-20, 20, vol.shape)).astype(np.int16)
            path = os.path.join(folder, f"ct_{p}_{k}.nii.gz")
            nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
            rows.append(ManifestRow(f"ct:{p}_{k}", f"p{p}", f"s{k}", str(k), "ct", "bench_ct", "", path,
                                    "train"))
    return rows


def measure(rows, cfg, batches):
    """Steady-state production rate: the batches buffered while the pipeline started
    (threads and workers read ahead) are drained before the clock starts."""
    loader = pipeline.make_train_loader(rows, cfg, seed=0)
    it = iter(loader)
    # Batches the pipeline can hold ahead: the thread prefetch buffer and its threads in
    # the reading process; with workers, per worker also the worker->parent queue and
    # the parent's interleave buffer (grain 0.2 process_prefetch), all of size prefetch.
    per_reader = cfg.prefetch + cfg.read_threads
    ahead = (per_reader + 1 if cfg.num_workers == 0
             else cfg.num_workers * (per_reader + 2 * max(1, cfg.prefetch)) + 1)
    try:
        for _ in range(ahead):
            first = next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            b = next(it)
        dt = time.perf_counter() - t0
    finally:
        it.close()
    return batches * first["images"].shape[0] / dt, b["images"].shape


def worker_counts(text: str) -> list[int]:
    """An argparse ``type``: a comma list of num_workers values, whole numbers >= 0 (a
    bad one was refused only after every file had been generated)."""
    try:
        return [whole_at_least(0)(v.strip()) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers >= 0, "
                                         f"got {text!r}") from None


def main(argv=None) -> int:
    ap = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=whole_at_least(1), default=3,
                    help="interleaved runs of every variant; the median is printed "
                         "(default: %(default)s)")
    ap.add_argument("--batches", type=whole_at_least(1), default=4,
                    help="timed batches per run (default: %(default)s)")
    ap.add_argument("--workers", type=worker_counts, default="0,2",
                    help="comma-separated num_workers values (default: %(default)s)")
    ap.add_argument("--read-threads", type=whole_at_least(1), default=2,
                    help="the data config's read_threads in every run (default: %(default)s)")
    ap.add_argument("--depth", type=whole_at_least(1), default=32,
                    help="slices S of each generated volume (default: %(default)s)")
    ap.add_argument("--patients", type=whole_at_least(1), default=16,
                    help="patients generated per workload, at least a batch's "
                         "(default: %(default)s)")
    ap.add_argument("--per-patient", type=whole_at_least(1), default=4,
                    help="images generated per patient (default: %(default)s)")
    ap.add_argument("--model-batch", type=whole_at_least(0), default=0,
                    help="if > 0, also time forward+backward of the default model on this many images")
    ap.add_argument("--json", help="also write the runs, medians and settings to this file")
    args = ap.parse_args(argv)
    per_batch = default_data_config().patients_per_batch
    if args.patients < per_batch:
        # The sampler then draws patients with replacement: a batch repeats images, and
        # the rate counts images that were read once as several (it came out 2 million/s).
        ap.error(f"--patients {args.patients}: at least the {per_batch} patients of a batch "
                 f"(fewer are repeated within it, and the rate counts the repeats)")
    return exit_status(lambda: run(args))


def run(args) -> None:
    """Generates the workloads, times every (workload, workers) variant and prints the
    medians (and the model's rate with --model-batch); writes them to ``--json``."""
    if args.json:                     # a slip in it is refused before anything is generated
        check_json_file(args.json, "--json")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data = {
            "xray 512px 16-bit PNG": make_xrays(tmp, args.patients, args.per_patient, 512, rng),
            f"volume NIfTI 256x256x{args.depth}, T=8": make_volumes(tmp, args.patients, args.per_patient, 256,
                                                                   args.depth, rng),
        }
        print(f"generated {sum(map(len, data.values()))} files in {time.perf_counter() - t:.1f}s "
              f"under {tmp}; cpu count {os.cpu_count()}")
        variants = [(name, w) for w in args.workers for name in data]
        results = {v: [] for v in variants}
        shapes = {}
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for name, workers in order:
                cfg = default_data_config()
                cfg.num_workers, cfg.read_threads, cfg.prefetch = workers, args.read_threads, 2
                rate, shape = measure(data[name], cfg, args.batches)
                results[(name, workers)].append(rate)
                print(f"  repeat {r}: {name}, num_workers={workers}: {rate:.1f} images/s", flush=True)
                shapes[(name, workers)] = shape
        print(f"\nmedian images/s over {args.repeats} repeats ({args.batches} timed batches each), "
              f"read_threads={args.read_threads}:")
        rows = []
        for (name, workers), rates in results.items():
            med = statistics.median(rates)
            per = shapes[(name, workers)]
            print(f"  {name:34s} num_workers={workers}: {med:7.1f} images/s "
                  f"({med * per[1]:7.1f} slices/s; batch {tuple(per)}; runs {[round(x, 1) for x in rates]})")
            rows.append({"workload": name, "num_workers": workers, "images_per_s": med,
                         "slices_per_s": med * per[1], "batch_shape": list(per), "runs": rates})

        model = print_model_rate(args.model_batch, args.repeats) if args.model_batch else None
    if args.json:
        settings = {k: getattr(args, k) for k in ("repeats", "batches", "workers", "read_threads",
                                                  "depth", "patients", "per_patient")}
        settings["cpus"] = os.cpu_count()
        write_text_atomic(args.json, strict_json.dumps(
            {"settings": settings, "results": rows, "model": model}, indent=2) + "\n")
        print(f"wrote {args.json}")


def print_model_rate(batch, repeats) -> dict:
    """Forward + backward of the default MaMI model (no optimizer update, no teachers) on
    a (batch, 1, 224, 224, 3) batch: the lower bound of a training step's cost. Prints
    the median rate and returns it with the runs."""
    import jax
    import jax.numpy as jnp

    from mami_jax.models.config import default_config
    from mami_jax.models.mami import MaMI

    model = MaMI(default_config())
    x = jnp.zeros((batch, 1, 224, 224, 3), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x)

    @jax.jit
    def grad_step(p, images):
        return jax.grad(lambda q: jnp.sum(model.apply(q, images).embedding ** 2))(p)

    jax.block_until_ready(grad_step(params, x))  # compile
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(grad_step(params, x))
        rates.append(batch / (time.perf_counter() - t0))
    print(f"  model forward+backward, default MaMI, batch ({batch}, 1, 224, 224, 3): "
          f"{statistics.median(rates):.2f} images/s (runs {[round(r, 2) for r in rates]})")
    return {"batch": batch, "images_per_s": statistics.median(rates), "runs": rates}


if __name__ == "__main__":
    run_command(main)
