"""Forward throughput of full MaMI against the plain ViT it adapts.

Runs the two variants interleaved (A B A B ...) in one process, so that load
from other processes on a shared machine hits both alike, and reports medians
and the ratio. The issue's target: ComPA and the slice adapters cost at most
10% of the plain ViT's time (ViT-B/16, 224 px, batch 8, float32).

    python benchmarks/model_speed.py                 # the target configuration
    python benchmarks/model_speed.py --rounds 3 --batch 2 --slices 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from mami_jax.models import MaMI, default_config


def build(use_compa: bool, args):
    cfg = default_config()
    with cfg.unlocked():
        cfg.use_compa = use_compa
        cfg.use_slice_adapter = use_compa
        cfg.dtype = args.dtype
    model = MaMI(cfg)
    x = jnp.asarray(jax.random.normal(jax.random.key(0),
                                      (args.batch, args.slices, args.size, args.size, 3)))
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x).embedding)
    fwd(params, x).block_until_ready()  # compile outside the timing
    return lambda: fwd(params, x).block_until_ready()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    variants = {"mami": build(True, args), "plain_vit": build(False, args)}
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    images = args.batch * args.slices
    print(f"device={jax.devices()[0].device_kind} batch={args.batch} slices={args.slices} "
          f"size={args.size} dtype={args.dtype} rounds={args.rounds}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:10s} median {t * 1e3:9.1f} ms  {images / t:8.2f} slices/s")
    ratios = [a / b for a, b in zip(times["mami"], times["plain_vit"])]
    print(f"time ratio mami/plain_vit: median {statistics.median(ratios):.3f} "
          f"(per-round {', '.join(f'{r:.3f}' for r in ratios)}); "
          f"overhead {100 * (med['mami'] / med['plain_vit'] - 1):.1f}%")


if __name__ == "__main__":
    main()
