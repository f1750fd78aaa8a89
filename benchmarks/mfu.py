"""Model-FLOPs utilisation of the trainer's real training step, on any device.

Builds the step the trainer builds (``speed_vs_torch.trainer_step``: model,
optimiser, shardings and donation from ``mami_jax.config.base_config()``) for a
batch of ``--batch`` images (P x K, no input pipeline), times ``--steps`` steps
after the compile, and reports

    MFU = model FLOPs per step / step time / (peak FLOP/s per device x devices)

- model FLOPs per step: XLA's count (``compiled.cost_analysis()``) of the model's
  forward pass on the batch, times 3 (the backward pass costs two forward passes
  of matrix multiplies). This counts what the model needs, not what the step
  executes, so rematerialisation does not inflate it;
- hardware FLOPs per step: XLA's count of the whole compiled step (with
  rematerialisation, the recomputed forward, the optimiser and the losses), reported
  as HFU with the same denominator;
- peak FLOP/s: ``--peak-tflops`` if given, else the dense peak of the device kind
  for the compute dtype from ``PEAK_TFLOPS`` (vendor figures, no sparsity). A CPU
  has no entry: pass ``--peak-tflops`` (cores x GHz x FLOPs per cycle, or a measured
  matmul rate) or read the achieved TFLOP/s.

The issue's goal is MFU >= 40% in bfloat16 training at batch >= 64 on a GPU/TPU:

    python benchmarks/mfu.py --batch 128 --dtype bfloat16                  # a GPU or TPU
    python benchmarks/mfu.py --batch 128 --dtype bfloat16 --remat          # less memory
    python benchmarks/mfu.py --preset tiny --batch 8 --steps 2 --peak-tflops 0.3  # CPU check

Prints a table and writes ``--json`` (default mfu.json).
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.speed_vs_torch import TINY, trainer_step  # noqa: E402
from mami_jax.models import MaMI, default_config  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402

#: Dense peak TFLOP/s per device (vendor data sheets, without sparsity), by a pattern
#: searched in ``jax.devices()[0].device_kind`` (lower case) and compute dtype; first match
#: wins, and the patterns end at a word boundary so that "l4" is no "l40s". No float32
#: peaks for GPUs: JAX runs float32 matmuls there as TF32 on the tensor cores unless the
#: matmul precision is raised, so which peak applies depends on the run: give --peak-tflops.
PEAK_TFLOPS = (
    (r"h200", {"bfloat16": 989.0, "float16": 989.0}),
    (r"h100 nvl", {"bfloat16": 835.0, "float16": 835.0}),
    (r"h100 pcie", {"bfloat16": 756.0, "float16": 756.0}),
    (r"h100", {"bfloat16": 989.0, "float16": 989.0}),
    (r"a100", {"bfloat16": 312.0, "float16": 312.0}),
    (r"l40s\b", {"bfloat16": 362.0, "float16": 362.0}),
    (r"l40\b", {"bfloat16": 181.0, "float16": 181.0}),
    (r"l4\b", {"bfloat16": 121.0, "float16": 121.0}),
    (r"a10\b", {"bfloat16": 125.0, "float16": 125.0}),
    (r"tpu v6", {"bfloat16": 918.0}),
    (r"tpu v5p", {"bfloat16": 459.0}),
    (r"tpu v5 lite", {"bfloat16": 197.0}),
    (r"tpu v5e", {"bfloat16": 197.0}),
    (r"tpu v4", {"bfloat16": 275.0}),
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The table's dense peak for ``device_kind`` in ``dtype``, or None if unknown."""
    kind = device_kind.lower()
    for pattern, by_dtype in PEAK_TFLOPS:
        if re.search(pattern, kind):
            return by_dtype.get(dtype)
    return None


def utilisation(flops_per_step: float, step_s: float, peak_tflops_per_device: float,
                devices: int) -> float:
    """Achieved FLOP/s over the peak of ``devices`` devices (a fraction, 0.4 = 40%)."""
    return flops_per_step / step_s / (peak_tflops_per_device * 1e12 * devices)


def forward_flops(cfg, images: tuple) -> float:
    """XLA's FLOP count of MaMI's forward pass on images of shape ``images``."""
    model = MaMI(cfg)
    x = jax.ShapeDtypeStruct(images, jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + images[1:])))
    compiled = jax.jit(lambda p, x: model.apply(p, x).embedding).lower(params, x).compile()
    return float((compiled.cost_analysis() or {}).get("flops", float("nan")))


def run(args) -> dict:
    from mami_jax.config import base_config
    from mami_jax.runtime import sharding

    config = base_config()
    with config.unlocked():
        if args.preset == "tiny":
            config.model.update(TINY)
        config.model.dtype = args.dtype
        config.model.remat = args.remat
        config.model.remat_policy = args.remat_policy
        config.model.attention = args.attention
        config.loss.terms = {"id": 1.0, "triplet": 1.0}
    size = args.size or config.model.image_size
    k = args.images_per_patient
    if args.batch % k:
        raise ValueError(f"--batch {args.batch} is not a multiple of --images-per-patient {k}")
    step, state, mesh = trainer_step(config, args.num_classes, total_steps=1000)
    if args.batch % mesh.shape["data"]:
        raise ValueError(f"--batch {args.batch} does not split over {mesh.shape['data']} devices")
    rng = np.random.default_rng(0)
    batch = sharding.global_batch(
        {"images": rng.standard_normal((args.batch, 1, size, size, 3), dtype=np.float32),
         "label": np.repeat(np.arange(args.batch // k), k).astype(np.int32),
         "mask": np.ones(args.batch, bool)}, mesh)

    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    # XLA counts the partitioned program one device runs: the run executes it on each.
    device_flops = float((compiled.cost_analysis() or {}).get("flops", float("nan")))
    step_flops = device_flops * jax.device_count()
    model_flops = 3.0 * forward_flops(config.model, (args.batch, 1, size, size, 3))

    state, metrics = compiled(state, batch)   # first step outside the timing
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)

    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or peak_tflops(kind, args.dtype)
    devices = jax.device_count()
    out = {"device_kind": kind, "platform": jax.default_backend(), "devices": devices,
           "batch": args.batch, "size": size, "dtype": args.dtype, "remat": args.remat,
           "remat_policy": args.remat_policy, "attention": args.attention,
           "preset": args.preset, "compile_s": compile_s, "step_ms": step_s * 1e3,
           "step_times_ms": [round(t * 1e3, 2) for t in times],
           "images_per_s": args.batch / step_s, "model_gflops_per_step": model_flops / 1e9,
           "xla_gflops_per_step": step_flops / 1e9,
           "xla_gflops_per_device": device_flops / 1e9,
           "achieved_model_tflops": model_flops / step_s / 1e12, "peak_tflops_per_device": peak,
           "mfu": utilisation(model_flops, step_s, peak, devices) if peak else None,
           "hfu": utilisation(step_flops, step_s, peak, devices) if peak else None,
           "loss": float(metrics["loss"])}
    return out


def print_report(r: dict) -> None:
    print(f"{r['device_kind']} x{r['devices']} ({r['platform']}) | {r['preset']} batch "
          f"{r['batch']} {r['size']} px {r['dtype']} remat={r['remat']}"
          f"{' (' + r['remat_policy'] + ')' if r['remat'] else ''} attention={r['attention']}")
    print(f"compile {r['compile_s']:.1f} s | step {r['step_ms']:.1f} ms (median of "
          f"{len(r['step_times_ms'])}) | {r['images_per_s']:.1f} img/s")
    print(f"model FLOPs/step {r['model_gflops_per_step']:.4g} G (3 x XLA forward count) | "
          f"executed {r['xla_gflops_per_step']:.4g} G (XLA count of the step, all "
          f"devices) | achieved "
          f"{r['achieved_model_tflops']:.3f} TFLOP/s")
    if r["mfu"] is None:
        print(f"MFU: no {r['dtype']} peak for this device kind in PEAK_TFLOPS (float32 "
              "on a GPU may run as TF32); pass --peak-tflops")
    else:
        print(f"MFU {100 * r['mfu']:.1f}%  HFU {100 * r['hfu']:.1f}%  of "
              f"{r['peak_tflops_per_device']} TFLOP/s per device")


def parse_args(argv=None):
    from mami_jax.models.config import ATTENTION_IMPLEMENTATIONS, DTYPES, REMAT_POLICIES

    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("vit_b16", "tiny"), default="vit_b16",
                        help="model size; tiny is a check in seconds (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=64,
                        help="images per step, P x K, a multiple of --images-per-patient "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=whole_at_least(0), default=0,
                        help="image side in px; 0: the model's image_size")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="the model's compute dtype (default: %(default)s)")
    parser.add_argument("--remat", action="store_true",
                        help="rematerialise the blocks in the backward pass (less memory)")
    parser.add_argument("--remat-policy", choices=REMAT_POLICIES,
                        default=default_config().remat_policy,
                        help="with --remat: what a block keeps for the backward pass "
                             "(default: %(default)s)")
    parser.add_argument("--attention", choices=ATTENTION_IMPLEMENTATIONS, default="auto",
                        help="attention implementation; auto: cuDNN on a GPU in "
                             "bfloat16/float16, XLA elsewhere (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps after the compile; the median is reported "
                             "(default: %(default)s)")
    parser.add_argument("--images-per-patient", type=int, default=4,
                        help="K images of each patient in the batch (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=1024,
                        help="identity classes of the classifier head (default: %(default)s)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense peak TFLOP/s of one device; 0: from PEAK_TFLOPS")
    parser.add_argument("--json", default="mfu.json",
                        help="report to write (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("batch", "steps", "images_per_patient", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.peak_tflops < 0:
        parser.error("--peak-tflops must be positive (or 0 for the table)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def work():
        check_json_file(args.json, "--json")
        result = run(args)
        print_report(result)
        write_text_atomic(args.json, strict_json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return exit_status(work)


if __name__ == "__main__":
    run_command(main)
