"""Do MaMI's execution paths compute the same model on this device?

The execution keys (``models/config.py`` EXECUTION_KEYS: dtype, attention, compa_impl)
change how the model runs, never what it computes, and a checkpoint trained under one
is evaluated under another. The unit tests check that on a CPU; the paths that exist
only on an accelerator (cuDNN's fused attention, the fused generators as the default,
matrix units' reduced-precision float32) can only be checked where they run. This
script does that: the same random parameters and inputs go through each path, and the
embedding and the gradient of a fixed projection of it are compared with a float32
reference at the highest matmul precision (``‖out − ref‖ / ‖ref‖``).

Paths (``PATHS``): float32 at the device's default matmul precision (TF32 on NVIDIA
matrix units), with separate and fused generators; bfloat16 with XLA's attention and
with cuDNN's (the GPU default, ``attention="auto"``). cuDNN paths are skipped off a GPU,
with that reason. A path fails when its error exceeds its dtype's tolerance
(``TOLERANCE``) or is not finite; the status is 1 then.

    python benchmarks/execution_parity.py                    # ViT-B/16, T = 2 slices
    python benchmarks/execution_parity.py --depth 4          # the same blocks, compiled faster
    python benchmarks/execution_parity.py --preset tiny      # under a minute on a CPU
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, REPO)

from benchmarks.model_speed import random_params  # noqa: E402
from benchmarks.speed_vs_torch import TINY  # noqa: E402
from mami_jax.models import MaMI, default_config  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402

#: name -> (dtype, attention, compa_impl, matmul precision). The first is the reference.
PATHS = {
    "reference": ("float32", "xla", "separate", "highest"),
    "float32": ("float32", "xla", "separate", "default"),
    "float32_fused": ("float32", "xla", "fused", "default"),
    "bfloat16": ("bfloat16", "xla", "separate", "default"),
    "bfloat16_fused": ("bfloat16", "xla", "fused", "default"),
    "bfloat16_cudnn_fused": ("bfloat16", "cudnn", "fused", "default"),
}

#: Largest relative error accepted per compute dtype: float32 at TF32 rounds its
#: operands to 10 mantissa bits (about 3e-4 per product); bfloat16 to 7 (about 4e-3),
#: and a 12-block network compounds that.
TOLERANCE = {"float32": 5e-3, "bfloat16": 5e-2}


def skip_reason(attention: str) -> str | None:
    if attention == "cudnn" and jax.default_backend() != "gpu":
        return f"cuDNN attention runs on a GPU only (backend: {jax.default_backend()})"
    return None


def outputs(cfg, params, images, projection, precision: str):
    """(embedding, gradient of <embedding, projection> w.r.t. the parameters), float32."""
    model = MaMI(cfg)

    def score(p):
        embedding = model.apply({"params": p}, images).embedding.astype(jnp.float32)
        return jnp.sum(embedding * projection), embedding

    with jax.default_matmul_precision(precision):
        (_, embedding), grads = jax.jit(jax.value_and_grad(score, has_aux=True))(params)
    flat = jnp.concatenate([g.astype(jnp.float32).ravel() for g in jax.tree.leaves(grads)])
    return np.asarray(embedding, np.float64), np.asarray(flat, np.float64)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def run(args) -> dict:
    base = default_config()
    if args.preset == "tiny":
        base.update(TINY)
    if args.depth:
        base.depth = args.depth
    size = args.size or base.image_size
    key_x, key_p, key_w = jax.random.split(jax.random.key(args.seed), 3)
    images = jax.random.normal(key_x, (args.batch, args.slices, size, size, 3))
    model = MaMI(base)
    params = random_params(jax.eval_shape(model.init, key_p, images)["params"], seed=args.seed)
    shape = jax.eval_shape(lambda p: model.apply({"params": p}, images).embedding, params)
    projection = jax.random.normal(key_w, shape.shape)
    results, reference = {}, None
    for name, (dtype, attention, impl, precision) in PATHS.items():
        reason = skip_reason(attention)
        if reason:
            results[name] = {"skipped": reason}
            continue
        cfg = base.copy_and_resolve_references()
        cfg.dtype, cfg.attention, cfg.compa_impl = dtype, attention, impl
        embedding, grads = outputs(cfg, params, images, projection, precision)
        if reference is None:
            reference = (embedding, grads)
        errors = {"embedding": relative_error(embedding, reference[0]),
                  "gradient": relative_error(grads, reference[1])}
        ok = all(np.isfinite(e) and e <= TOLERANCE[dtype] for e in errors.values())
        results[name] = dict(errors, dtype=dtype, attention=attention, compa_impl=impl,
                             precision=precision, tolerance=TOLERANCE[dtype], ok=bool(ok))
    return {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "jax": jax.__version__, "preset": args.preset, "depth": base.depth,
            "batch": args.batch,
            "slices": args.slices, "size": size, "paths": results}


def print_report(report: dict) -> None:
    print(f"{report['device']} ({report['backend']}, jax {report['jax']}) | "
          f"{report['preset']} ({report['depth']} blocks) batch {report['batch']} x "
          f"{report['slices']} slices {report['size']} px | error relative to float32 at the highest precision")
    print(f"{'path':22s} {'embedding':>10s} {'gradient':>10s} {'tolerance':>9s}  result")
    for name, r in report["paths"].items():
        if "skipped" in r:
            print(f"{name:22s} {'':>10s} {'':>10s} {'':>9s}  skipped: {r['skipped']}")
        else:
            print(f"{name:22s} {r['embedding']:10.2e} {r['gradient']:10.2e} "
                  f"{r['tolerance']:9.0e}  {'ok' if r['ok'] else 'FAILED'}")


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("vit_b16", "tiny"), default="vit_b16",
                        help="model size; tiny runs in under a minute on a CPU "
                             "(default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4,
                        help="random images in the batch (default: %(default)s)")
    parser.add_argument("--slices", type=int, default=2,
                        help="T > 1 runs the slice adapters too")
    parser.add_argument("--size", type=whole_at_least(0), default=0,
                        help="image side in px; 0: the model's image_size")
    parser.add_argument("--depth", type=int, default=0,
                        help="blocks; 0: the preset's (fewer compile faster, same block shapes)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random parameters, inputs and projection "
                             "(default: %(default)s)")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.slices < 1 or args.depth < 0:
        parser.error("--batch and --slices must be at least 1, --depth at least 0")

    def work() -> int:
        if args.json:
            check_json_file(args.json, "--json")
        report = run(args)
        print_report(report)
        if args.json:
            write_text_atomic(args.json, strict_json.dumps(report, indent=1) + "\n")
        failed = [n for n, r in report["paths"].items() if r.get("ok") is False]
        if failed:
            raise ValueError(f"{', '.join(failed)} differ from the reference beyond tolerance")
        return 0
    return exit_status(work)


if __name__ == "__main__":
    run_command(main)
