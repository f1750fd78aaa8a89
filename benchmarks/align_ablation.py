"""The alignment ablation on the phantoms: none, single-image and difference alignment to
the embedded teachers, several seeds, Rank-1 and mAP per modality.

Each run is the real quick-start job (``python -m mami_jax.main
--config=configs/all.py:runlocal[,align=TEACHERS]``) in its own workdir under
``OUT/runs``, on one shared phantom cache and a teacher-feature store per teacher set
(``OUT/teachers/<set>``, extracted by the set's first run: a run extracts only its own
teachers into a folder that has none, and a store holding ``anatomy`` alone was refused by
the first ``efficientnet`` run; ``--teachers-dir`` names one store holding every teacher
instead). A finished run (its final metrics.json exists) is not run again, so a killed
ablation resumes where it stopped; a run of another ``--align-weight`` lies in a folder of
its own (``...-w<weight>-s<seed>``), or a sweep of weights read the first weight's runs
under the later ones' labels.

    python benchmarks/align_ablation.py --out /tmp/ablation --steps 1000 --seeds 0 1

Writes ``OUT/ablation.json`` (every run's metrics and the per-arm summary),
``OUT/ablation.png`` (mean mAP per arm, one dot per seed) and prints the table. The
verdict line compares difference alignment to ``anatomy`` with no alignment: the gap in
mean mAP (over modalities, averaged over seeds) against the seed spread (the largest
max-min over seeds of either arm).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_atomic, write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402

MODALITIES = ("xray", "ct", "fundus", "mri", "pathology")
TEACHER_SETS = {"anatomy": "anatomy", "efficientnet": "efficientnet_lite0",
                "both": "anatomy+efficientnet_lite0"}
#: Arm name -> (align variant or None, teacher set or None), in the order they run: the
#: arms the verdict needs first, so a stopped ablation still answers its main question.
ARMS = {
    "none": (None, None),
    "difference/anatomy": ("difference", "anatomy"),
    "difference/efficientnet": ("difference", "efficientnet"),
    "difference/both": ("difference", "both"),
    "single/anatomy": ("single", "anatomy"),
    "single/efficientnet": ("single", "efficientnet"),
    "single/both": ("single", "both"),
}


def training_command(arm: str, seed: int, steps: int, workdir: str, phantoms: str,
                     teachers_dir: str, align_weight: float | None = None) -> list[str]:
    variant, teachers = ARMS[arm]
    words = "runlocal" if variant is None else f"runlocal,align={TEACHER_SETS[teachers]}"
    cmd = [sys.executable, "-m", "mami_jax.main", f"--config=configs/all.py:{words}",
           f"--workdir={workdir}", f"--config.seed={seed}",
           f"--config.train.total_steps={steps}", "--config.train.eval_at_start=False",
           f"--config.train.checkpoint_every={steps}", "--config.train.eval_every=0"]
    if phantoms:
        cmd.append(f"--config.phantoms.cache_dir={phantoms}")
    if variant is not None:
        cmd += [f"--config.loss.align.variant={variant}",
                f"--config.data.teacher_features.dir={teachers_dir}"]
        if align_weight is not None:
            cmd.append(f"--config.loss.terms.align={align_weight}")
    return cmd


def read_metrics(path: str) -> dict:
    with open(path) as f:
        m = json.load(f)
    return {mod: {"rank1": m[f"phantoms/{mod}/reid"]["rank1"],
                  "mAP": m[f"phantoms/{mod}/reid"]["mAP"]} for mod in MODALITIES}


def summarise(results: dict) -> dict:
    """Per arm: seeds, per-modality means, mean mAP and Rank-1 per seed and their spread."""
    out = {}
    for arm, by_seed in results.items():
        if not by_seed:
            continue
        seeds = sorted(by_seed)
        mean_map = [float(np.mean([by_seed[s][m]["mAP"] for m in MODALITIES])) for s in seeds]
        mean_r1 = [float(np.mean([by_seed[s][m]["rank1"] for m in MODALITIES])) for s in seeds]
        out[arm] = {
            "seeds": seeds,
            "per_modality": {m: {k: float(np.mean([by_seed[s][m][k] for s in seeds]))
                                 for k in ("rank1", "mAP")} for m in MODALITIES},
            "mean_mAP_per_seed": mean_map, "mean_rank1_per_seed": mean_r1,
            "mean_mAP": float(np.mean(mean_map)), "mean_rank1": float(np.mean(mean_r1)),
            "mAP_spread": float(max(mean_map) - min(mean_map)),
        }
    return out


def verdict(summary: dict) -> str:
    a, b = summary.get("difference/anatomy"), summary.get("none")
    if not a or not b or len(a["seeds"]) < 2 or len(b["seeds"]) < 2:
        return "verdict: needs 'none' and 'difference/anatomy' with two seeds or more"
    gap, spread = a["mean_mAP"] - b["mean_mAP"], max(a["mAP_spread"], b["mAP_spread"])
    word = "beats" if gap > spread else "does not beat"
    return (f"verdict: difference/anatomy {word} none on mean mAP: gap {gap:+.3f}, "
            f"seed spread {spread:.3f}")


def table(summary: dict) -> str:
    head = f"{'arm':<26}{'seeds':>6}" + "".join(f"{m:>14}" for m in MODALITIES)
    head += f"{'mean R1':>9}{'mean mAP':>10}{'spread':>8}"
    lines = [head, " " * 32 + "".join(f"{'R1 / mAP':>14}" for _ in MODALITIES)]
    for arm, s in summary.items():
        cells = "".join(f"{s['per_modality'][m]['rank1']:>8.2f} /{s['per_modality'][m]['mAP']:>4.2f}"
                        for m in MODALITIES)
        lines.append(f"{arm:<26}{len(s['seeds']):>6}{cells}{s['mean_rank1']:>9.3f}"
                     f"{s['mean_mAP']:>10.3f}{s['mAP_spread']:>8.3f}")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    arms = list(summary)
    fig, ax = plt.subplots(figsize=(1.3 * len(arms) + 2, 4))
    ax.bar(range(len(arms)), [summary[a]["mean_mAP"] for a in arms], color="#9ab")
    for i, a in enumerate(arms):
        ys = summary[a]["mean_mAP_per_seed"]
        ax.plot([i] * len(ys), ys, "ko", ms=4)
    ax.set_xticks(range(len(arms)), [a.replace("/", "\n") for a in arms], fontsize=8)
    hi = max(max(summary[a]["mean_mAP_per_seed"]) for a in arms)
    ax.set_ylim(0.0, min(1.0, hi + 0.03))      # bars from 0: a cut axis enlarges the gaps
    ax.set_ylabel("mean mAP over modalities (reid)")
    ax.set_title("alignment ablation on the phantoms (dots: seeds)")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def run_name(arm: str, seed: int, align_weight: float | None) -> str:
    """The folder of one run under ``OUT/runs``: the arm, the align weight when one is
    given (an arm without alignment trains the same whatever it is) and the seed."""
    weight = (f"-w{align_weight:g}" if align_weight is not None and ARMS[arm][0] is not None
              else "")
    return f"{arm.replace('/', '-')}{weight}-s{seed}"


def teacher_store(out: str, arm: str) -> str:
    """The default feature store of ``arm``'s teacher set, one folder per set (none for the
    arm without alignment)."""
    teachers = ARMS[arm][1]
    return os.path.join(out, "teachers", TEACHER_SETS[teachers]) if teachers else ""


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for runs/, ablation.json, ablation.png")
    p.add_argument("--steps", type=int, default=2600, help="training steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="training seeds, each arm run once per seed (default: %(default)s)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                   help="alignment arms to run: variant/teacher set, or none (default: all)")
    p.add_argument("--phantoms", default="", help="shared phantom cache (default: per run)")
    p.add_argument("--teachers-dir", default="",
                   help="one teacher-feature store holding every teacher of the arms "
                        "(default: OUT/teachers/<set>, one per teacher set, each extracted "
                        "by its first run)")
    p.add_argument("--align-weight", type=float, default=None,
                   help="weight of the align term (default: the config's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)
    return exit_status(lambda: run(args))


def run(args) -> int:
    """Runs (or, with --dry-run, prints) the ablation's plan; the exit status."""
    out = os.path.abspath(args.out)
    shared_teachers = os.path.abspath(args.teachers_dir) if args.teachers_dir else ""
    phantoms = os.path.abspath(args.phantoms) if args.phantoms else os.path.join(out, "phantoms")
    plan = [(arm, seed) for seed in args.seeds for arm in args.arms]
    plan.sort(key=lambda x: (list(ARMS).index(x[0]) // 2, x[1], list(ARMS).index(x[0])))
    results = {arm: {} for arm in args.arms}
    for i, (arm, seed) in enumerate(plan, 1):
        workdir = os.path.join(out, "runs", run_name(arm, seed, args.align_weight))
        final = os.path.join(workdir, "eval", f"step_{args.steps}", "metrics.json")
        cmd = training_command(arm, seed, args.steps, workdir, phantoms,
                               shared_teachers or teacher_store(out, arm), args.align_weight)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        if not os.path.isfile(final):
            print(f"[{i}/{len(plan)}] {arm} seed {seed}: running ({workdir}/run.log)", flush=True)
            os.makedirs(workdir, exist_ok=True)
            t0 = time.time()
            with open(os.path.join(workdir, "run.log"), "w") as log:
                rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            if rc != 0:
                print(f"error: {arm} seed {seed} exited {rc}; see {workdir}/run.log",
                      file=sys.stderr)
                return 1
            print(f"[{i}/{len(plan)}] {arm} seed {seed}: done in {time.time() - t0:.0f} s",
                  flush=True)
        else:
            print(f"[{i}/{len(plan)}] {arm} seed {seed}: finished earlier", flush=True)
        results[arm][seed] = read_metrics(final)
        summary = summarise(results)
        write_text_atomic(os.path.join(out, "ablation.json"), strict_json.dumps(
            {"steps": args.steps, "align_weight": args.align_weight, "runs": {a: {str(s): r for s, r in v.items()}
                                           for a, v in results.items()},
             "summary": summary, "verdict": verdict(summary)}, indent=1))
    if args.dry_run:
        return 0
    summary = summarise(results)
    print(table(summary))
    print(verdict(summary))
    plot(summary, os.path.join(out, "ablation.png"))
    return 0


if __name__ == "__main__":
    run_command(main)
