"""Throughput of full MaMI against the plain ViT it adapts, and of each addition alone.

Runs the variants interleaved (A B C D A B C D ...) in one process, so that load
from other processes on a shared machine hits all alike, and reports medians, the
per-round time ratios to the plain ViT and XLA's FLOP count of each variant. The
issue's target: ComPA and the slice adapters cost at most 10% of the plain ViT's
time (ViT-B/16, 224 px, batch 8, float32). Variants:

- ``mami``: ComPA (router, feature shift, factor generators, low-rank deltas) and
  the slice adapters, the released architecture;
- ``compa_only`` / ``adapter_only``: one of the two additions, to say which costs what;
- ``plain_vit``: neither (the CLIP ViT with MaMI's head);
- ``mami_separate`` / ``compa_only_separate``: the same with ComPA's factor generators
  run one by one (``compa_impl="separate"``, the reference path) instead of fused, to
  measure the fusion interleaved with the rest;
- ``mami_xla_attention``: MaMI with XLA's attention, against ``mami``'s default ("auto":
  cuDNN's fused attention on a GPU in bfloat16; the same as XLA's elsewhere).

``--compa-impl`` says how the variants without a suffix run the generators (default:
the model config's).

On a shared machine wall times measure the load as much as the code. The table also
gives each variant's CPU time (this process, all threads); with XLA single-threaded
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``) no thread spins at a barrier, and the
CPU time is the work done, robust to other processes (docs/speed.md#fused-compa).

``--mode forward`` times the embedding pass; ``--mode train`` the gradient of a
scalar of the embedding (forward + backward, no optimiser).
``benchmarks/speed_vs_torch.py`` calls ``measure`` for its report.

    python benchmarks/model_speed.py                 # the target configuration
    python benchmarks/model_speed.py --mode train --rounds 3
    python benchmarks/model_speed.py --rounds 3 --batch 2 --slices 1 --variants mami,plain_vit
    python benchmarks/model_speed.py --variants mami,mami_separate,plain_vit --json speed.json
    python benchmarks/model_speed.py --dtype bfloat16 --batch 128 --mode train \
        --variants mami,mami_separate,mami_xla_attention,plain_vit         # a GPU
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, REPO)

from mami_jax.models import MaMI, default_config  # noqa: E402
from mami_jax.models.config import COMPA_IMPLS  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402

#: Variant name -> what it changes in the model config; the rest is MaMI with
#: ``--compa-impl`` and the config's attention ("auto": cuDNN on a GPU in bfloat16).
VARIANTS = {"mami": {}, "compa_only": {"use_slice_adapter": False},
            "adapter_only": {"use_compa": False},
            "plain_vit": {"use_compa": False, "use_slice_adapter": False},
            "mami_separate": {"compa_impl": "separate"},
            "compa_only_separate": {"use_slice_adapter": False, "compa_impl": "separate"},
            "mami_xla_attention": {"attention": "xla"}}


def interleaved(runs: dict, rounds: int, desc: str = "rounds") -> tuple[dict, dict]:
    """(wall, cpu): name -> seconds per call, the callables run A B C A B C ... for
    ``rounds``; cpu is this process's user + system time during the call (all threads)."""
    wall, cpu = {k: [] for k in runs}, {k: [] for k in runs}
    for _ in tqdm(range(rounds), desc=desc, unit="round", leave=False):
        for name, run in runs.items():
            c0, start = process_cpu_s(), time.perf_counter()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(process_cpu_s() - c0)
    return wall, cpu


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarise(wall: dict, cpu: dict, reference: str, images: int) -> dict:
    """Medians, images/s and the median of per-round time ratios to ``reference``."""
    out = {}
    for name, values in wall.items():
        med = statistics.median(values)
        ratios = [a / b for a, b in zip(values, wall[reference])]
        out[name] = {"median_ms": med * 1e3, "images_per_s": images / med,
                     "cpu_ms": statistics.median(cpu[name]) * 1e3,
                     "times_ms": [round(v * 1e3, 1) for v in values],
                     f"ratio_to_{reference}": statistics.median(ratios)}
    return out


def random_params(tree, seed: int = 0, std: float = 0.02):
    """Random float32 values in the shapes of ``tree`` (numpy: nothing to compile).

    Compiling a jitted ``init`` of ViT-B takes minutes on a small CPU, and timing does
    not depend on the values; every entry is nonzero (LayerNorm scales near 1), so
    every path of the model computes something.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        value = std * rng.standard_normal(leaf.shape, dtype=np.float32)
        if str(getattr(path[-1], "key", "")) == "scale":
            value += 1.0
        return jnp.asarray(value)
    return jax.tree_util.tree_map_with_path(draw, tree)


def build(variant: str, args, base_cfg=None):
    """(run, flops): a jitted, compiled pass of ``variant`` and XLA's FLOP count of it."""
    cfg = (base_cfg or default_config()).copy_and_resolve_references()
    with cfg.unlocked():
        cfg.use_compa = cfg.use_slice_adapter = True
        cfg.dtype = args.dtype
        cfg.compa_impl = getattr(args, "compa_impl", None) or cfg.compa_impl
        cfg.update(VARIANTS[variant])
    model = MaMI(cfg)
    x = jax.random.normal(jax.random.key(0),
                          (args.batch, args.slices, args.size, args.size, 3))
    params = random_params(jax.eval_shape(model.init, jax.random.key(1), x)["params"])
    if args.mode == "forward":
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x).embedding)
    else:
        fn = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply({"params": p}, x).embedding)))
    compiled = fn.lower(params, x).compile()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    jax.block_until_ready(compiled(params, x))  # first run outside the timing
    return (lambda: jax.block_until_ready(compiled(params, x))), flops


def measure(args, base_cfg=None) -> dict:
    """Interleaved timing of ``args.variants``; ratios and FLOPs relative to plain_vit."""
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or "plain_vit" not in names:
        what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "no plain_vit"
        raise ValueError(f"--variants {args.variants!r}: {what}; names from "
                         f"{sorted(VARIANTS)}, plain_vit included")
    built = {name: build(name, args, base_cfg) for name in names}
    wall, cpu = interleaved({k: run for k, (run, _) in built.items()}, args.rounds,
                            desc=f"ComPA vs plain ViT, {args.mode}")
    out = summarise(wall, cpu, "plain_vit", args.batch * args.slices)
    for name, (_, flops) in built.items():
        out[name]["gflops"] = flops / 1e9
        out[name]["flop_ratio_to_plain_vit"] = flops / built["plain_vit"][1]
    for fused in ("mami", "compa_only"):  # fused against separate generators, per round
        if fused in wall and fused + "_separate" in wall:
            out[fused]["ratio_to_separate"] = statistics.median(
                a / b for a, b in zip(wall[fused], wall[fused + "_separate"]))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8,
                        help="images per pass (default: %(default)s)")
    parser.add_argument("--slices", type=int, default=1,
                        help="slices T of each image; T > 1 runs the slice adapters "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=whole_at_least(1), default=224,
                        help="image side in px (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved timed runs of every variant; medians are reported "
                             "(default: %(default)s)")
    parser.add_argument("--dtype", default="float32",
                        help="the model's compute dtype (default: %(default)s)")
    parser.add_argument("--mode", choices=("forward", "train"), default="forward",
                        help="forward: the embedding pass; train: the gradient of a scalar "
                             "of it, no optimiser (default: %(default)s)")
    parser.add_argument("--variants", default="mami,compa_only,adapter_only,plain_vit",
                        help=f"comma-separated, plain_vit included; from {sorted(VARIANTS)}")
    parser.add_argument("--compa-impl", choices=COMPA_IMPLS, default=default_config().compa_impl,
                        help="how the variants without a suffix run ComPA's generators")


def print_table(results: dict, args, load: dict) -> None:
    print(f"device={jax.devices()[0].device_kind} mode={args.mode} batch={args.batch} "
          f"slices={args.slices} size={args.size} dtype={args.dtype} rounds={args.rounds} "
          f"compa_impl={args.compa_impl}")
    print(f"load average (1/5/15 min) at start {load['start']}, at end {load['end']}")
    print(f"{'variant':20s} {'median ms':>10s} {'cpu ms':>9s} {'slices/s':>9s} "
          f"{'time/plain':>10s} {'cpu/plain':>9s} {'GFLOP':>8s} {'FLOP/plain':>10s} "
          f"{'time/separate':>13s}")
    plain_cpu = results["plain_vit"]["cpu_ms"]
    for name, r in results.items():
        separate = f"{r['ratio_to_separate']:13.3f}" if "ratio_to_separate" in r else ""
        print(f"{name:20s} {r['median_ms']:10.1f} {r['cpu_ms']:9.1f} {r['images_per_s']:9.2f} "
              f"{r['ratio_to_plain_vit']:10.3f} {r['cpu_ms'] / plain_cpu:9.3f} "
              f"{r['gflops']:8.1f} {r['flop_ratio_to_plain_vit']:10.3f} {separate}")


def load_average() -> list:
    return [round(v, 2) for v in os.getloadavg()]


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--json", help="also write the results and settings to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1 or args.slices < 1:
        parser.error("--rounds, --batch and --slices must be at least 1")
    return exit_status(lambda: run(args))


def run(args) -> dict:
    """Measures, prints the table and writes ``--json``; the results."""
    if args.json:                     # a slip in it is refused before the work
        check_json_file(args.json, "--json")
    load = {"start": load_average()}
    results = measure(args)
    load["end"] = load_average()
    print_table(results, args, load)
    if args.json:
        settings = dict(vars(args), device=jax.devices()[0].device_kind, jax=jax.__version__,
                        cpus=os.cpu_count(), load_average=load)
        write_text_atomic(args.json, strict_json.dumps({"settings": settings, "results": results},
                                                indent=2) + "\n")
    return results


if __name__ == "__main__":
    run_command(main)
