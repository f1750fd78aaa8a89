"""Train-step time of the runlocal model under glibc malloc and under jemalloc.

The allocator is fixed when a process starts, so each variant is a child process
(the same script with ``--child``); children run interleaved (system, jemalloc,
system, jemalloc, ...) so that load from other processes on a shared machine hits both
alike. Each child compiles the runlocal train step (batch 32 of ``--size`` px images;
80 is the runlocal pathology crop), runs ``--steps`` steps, and reports ms/step, user
and system CPU ms/step and page faults per step. The summary prints medians and the
ratio. Why it matters: mami_jax/runtime/malloc_preload.py.

    python benchmarks/malloc_speed.py                  # 3 rounds, 80 px
    python benchmarks/malloc_speed.py --rounds 5 --size 32 --json malloc.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, REPO)

from benchmarks.child_report import child_report  # noqa: E402
from mami_jax import config_files  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402

#: The config whose runlocal model each child trains.
CONFIG = os.path.join(REPO, "configs", "pathology.py")


def child(size: int, steps: int) -> dict:
    import jax
    import numpy as np

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from runlocal_ablation import load_config
    from mami_jax.train.optim import learning_rate_schedule
    from mami_jax.train.trainer import build_model_and_state_fns
    from mami_jax.train.step import make_train_step

    cfg = load_config(CONFIG, [], 100, "")
    model, opt, init = build_model_and_state_fns(cfg, 100, 100)
    step = jax.jit(make_train_step(model, opt, cfg.loss,
                                   lr_schedule=learning_rate_schedule(cfg.optim, 100)),
                   donate_argnums=(0,))
    rng = np.random.default_rng(0)
    batch = {"images": rng.standard_normal((32, 1, size, size, 3)).astype(np.float32),
             "label": np.repeat(np.arange(8), 4).astype(np.int32), "mask": np.ones(32, bool),
             "modality": np.zeros(32, np.int32), "index": np.arange(32, dtype=np.int32)}
    batch = {k: v for k, v in batch.items() if not k.startswith("_")}
    state = jax.jit(init)(jax.random.key(0))
    state, metrics = step(state, batch)  # compile outside the timing
    jax.block_until_ready(metrics)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    return {"ms_per_step": wall / steps * 1e3,
            "user_ms": (r1.ru_utime - r0.ru_utime) / steps * 1e3,
            "sys_ms": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
            "faults": (r1.ru_minflt - r0.ru_minflt) / steps}


def run_child(variant: str, library: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    if variant == "jemalloc":
        from mami_jax.runtime.malloc_preload import DEFAULT_MALLOC_CONF
        env.update(LD_PRELOAD=library, MALLOC_CONF=DEFAULT_MALLOC_CONF)
    return child_report([sys.executable, __file__, "--child", "--size", str(args.size),
                         "--steps", str(args.steps)],
                        f"the {variant} child (--size {args.size} --steps {args.steps})", env)


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=80,
                        help="side in px of the batch's 32 images, a multiple of the model's "
                             "patch size; 80 is the runlocal pathology crop "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=15,
                        help="train steps each child times (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of one system and one jemalloc child, interleaved "
                             "(default: %(default)s)")
    parser.add_argument("--json", help="also write the rounds, medians and settings to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.size, args.steps, args.rounds) < 1:
        parser.error("--size, --steps and --rounds must be at least 1")
    # The model cuts images into patches: another side failed in every child, after the
    # parent had looked for jemalloc and each child had built the model.
    patch = config_files.load_config(CONFIG + ":runlocal").model.patch_size
    if args.size % patch:
        parser.error(f"--size {args.size}: not a multiple of {patch}, the patch size of the "
                     f"runlocal model of {os.path.relpath(CONFIG, REPO)}")

    def work():
        if args.child:
            print(json.dumps(child(args.size, args.steps)))
        else:
            run(args)
    return exit_status(work)


def run(args) -> None:
    """Runs the children, system and jemalloc interleaved; prints the rounds and medians
    and writes them to ``--json``."""
    from mami_jax.runtime.malloc_preload import find_jemalloc
    if args.json:                     # a slip in it is refused before anything else
        check_json_file(args.json, "--json")
    library = find_jemalloc()
    if library is None:
        raise FileNotFoundError("no jemalloc found (apt-get install libjemalloc2); "
                                "nothing to compare")
    results = {"system": [], "jemalloc": []}
    for r in range(args.rounds):
        for variant in results:
            res = run_child(variant, library, args)
            results[variant].append(res)
            print(f"round {r} {variant:8s} " + " ".join(f"{k} {v:.0f}" for k, v in res.items()),
                  flush=True)
    med = {v: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for v, rs in results.items()}
    print(f"size={args.size} steps={args.steps} rounds={args.rounds} jemalloc={library}")
    for variant, m in med.items():
        print(f"median {variant:8s} " + " ".join(f"{k} {v:.0f}" for k, v in m.items()))
    ratio = med['jemalloc']['ms_per_step'] / med['system']['ms_per_step']
    print(f"jemalloc / system step time: {ratio:.2f}")
    if args.json:
        settings = {"size": args.size, "steps": args.steps, "rounds": args.rounds,
                    "jemalloc": library, "cpus": os.cpu_count()}
        write_text_atomic(args.json, strict_json.dumps(
            {"settings": settings, "rounds": results, "medians": med,
             "jemalloc_over_system_step_time": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    run_command(main)
