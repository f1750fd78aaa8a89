"""How much identity gradient independently trained re-ID models share, and what an ensemble
of them can therefore do to a model it never saw.

    python benchmarks/privacy_gradient_agreement.py --manifest MANIFEST \
        --member NAME=WORKDIR [--member ...] --held-out NAME=WORKDIR [--held-out ...] \
        [--modality xray] [--split test] [--config configs/privacy.py:runlocal,transfer=...] \
        [--set KEY=VALUE ...] [--white-box NAME=SWEEP_JSON ...] --out DIR

Every model's gradient of its own protection score at the original images of ``--split``
(``gradient_agreement.model_gradients``: the objective, smoothing and mask ``protect`` would
use with ``--config``), then: the cosine of every two models' gradients; for each held-out
model, the cosine between the mean of the first k members' gradients and its own, k = 1 ..
number of members, beside what one shared part of cosine c (the mean over pairs) predicts
and its ceiling sqrt(c). Writes DIR/gradient_agreement.json, DIR/gradient_agreement.md and
DIR/gradient_agreement.png (alignment against ensemble size, per held-out model). Bad
input ends with one ``error: ...`` line (exit status 2 for usage, 1 otherwise).

``--white-box NAME=SWEEP_JSON`` (NAME a held-out model; repeat it to pool several sweeps of
one model): the ``privacy_transfer.json`` of that model protecting against itself at several
budgets (``--sizes 1``, one ``perturb.epsilon=`` variant each, the same objective and
smoothing). From it: the budget
its own protection needs to reach twice chance, the budget the first k members would need
(that divided by their alignment with it), the ceiling's, and the Rank-1 the model is
predicted to keep at the configuration's budget with k members (its white-box Rank-1 at
the budget times the alignment): a first-order estimate to set beside a measured
``privacy_transfer.py`` run.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mami_jax.apps.privacy.named_models import named  # noqa: E402
from mami_jax.apps.privacy import ensemble  # noqa: E402
from mami_jax.apps.privacy import gradient_agreement as ga  # noqa: E402
from mami_jax.apps.privacy.protect import epsilon_for, select_rows  # noqa: E402
from mami_jax.apps.privacy.quality import psnr_of_rms  # noqa: E402
from mami_jax.config_files import load_config  # noqa: E402
from mami_jax.config_overrides import apply_set_flags  # noqa: E402
from mami_jax.data.manifest import read_manifest  # noqa: E402
from mami_jax.experiment_config import experiment_spec, load_experiment  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import make_dirs, write_atomic, write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402


def summary(names: list[str], members: int, grads: np.ndarray) -> dict:
    """The figures of one run from its gradients (models, views, pixels), the first
    ``members`` of ``names`` being the ensemble's, in order, the rest held out."""
    cos = ga.pairwise_cosines(grads)
    c = ga.shared_cosine(cos)
    ks = np.arange(1, members + 1)
    return {"models": names, "members": names[:members], "views": int(grads.shape[1]),
            "pairwise_cosine": cos.round(4).tolist(), "shared_cosine": c,
            "ceiling": float(np.sqrt(c)),
            "predicted": ga.predicted_alignment(c, ks).round(4).tolist(),
            "alignment": {name: ga.prefix_alignment(grads[:members], grads[i]).round(4).tolist()
                          for i, name in enumerate(names) if i >= members}}


def prediction(result: dict, sweep: dict, name: str, budget: float) -> dict:
    """The first-order estimate for held-out model ``name`` from its white-box ``sweep``
    (the module's docstring): budgets the goal (twice chance) needs, Rank-1 at ``budget``."""
    budgets, rank1, chance = ga.white_box_curve(sweep)
    own = ga.budget_to_reach(budgets, rank1, 2 * chance)
    align = np.array(result["alignment"][name])
    return {"goal_rank1": 2 * chance, "budget": budget, "white_box_budget": own,
            "white_box": {"budgets": budgets.tolist(), "rank1": rank1.tolist()},
            "needed_budget": (own / align).round(5).tolist(),
            "needed_budget_ceiling": own / result["ceiling"],
            "needed_psnr_db": [round(psnr_of_rms(b), 2) for b in own / align],
            "predicted_rank1": ga.rank1_at(budgets, rank1, budget * align).round(3).tolist()}


def markdown(result: dict) -> str:
    names = result["models"]
    lines = [f"Views: {result['views']}. Mean cosine between two models' gradients: "
             f"{result['shared_cosine']:.3f}; ceiling of any ensemble's alignment with an unseen "
             f"model, sqrt(c): {result['ceiling']:.3f}.", "",
             "| | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
    for name, row in zip(names, result["pairwise_cosine"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    ks = range(1, len(result["members"]) + 1)
    lines += ["", "Alignment of the mean of the first k members with each held-out model:", "",
              "| k | " + " | ".join(str(k) for k in ks) + " |", "| --- " * (len(ks) + 1) + "|",
              "| predicted | " + " | ".join(f"{v:.3f}" for v in result["predicted"]) + " |"]
    for name, values in result["alignment"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    for name, pred in result.get("prediction", {}).items():
        lines += ["", f"{name}: its own protection reaches Rank-1 {pred['goal_rank1']:.3f} (twice "
                  f"chance) at budget {pred['white_box_budget']:.4f}; any ensemble of such members "
                  f"needs at least {pred['needed_budget_ceiling']:.4f}.", "",
                  "| k | " + " | ".join(str(k) for k in ks) + " |", "| --- " * (len(ks) + 1) + "|",
                  "| budget needed | " + " | ".join(f"{v:.4f}" for v in pred["needed_budget"]) + " |",
                  "| PSNR needed (dB) | " + " | ".join(f"{v:.1f}" for v in pred["needed_psnr_db"])
                  + " |",
                  f"| Rank-1 predicted at {pred['budget']:.4f} | "
                  + " | ".join(f"{v:.3f}" for v in pred["predicted_rank1"]) + " |"]
    return "\n".join(lines) + "\n"


def figure(result: dict, path: str, title: str) -> None:
    """Alignment against ensemble size; with white-box sweeps a second panel: each
    held-out model's Rank-1 under its own protection against the budget, with the budget
    the whole ensemble's change is worth to it (the budget times the alignment) marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = np.arange(1, len(result["members"]) + 1)
    preds = result.get("prediction", {})
    fig, axes = plt.subplots(1, 2 if preds else 1, figsize=(10.4 if preds else 5.2, 3.8),
                             squeeze=False)
    ax = axes[0][0]
    for name, values in result["alignment"].items():
        ax.plot(ks, values, "o-", label=f"held out: {name}")
    ax.plot(ks, result["predicted"], "k--", label=f"one shared part, c = {result['shared_cosine']:.2f}")
    ax.axhline(result["ceiling"], color="grey", ls=":", label=f"ceiling sqrt(c) = {result['ceiling']:.2f}")
    ax.set_xlabel("members averaged")
    ax.set_ylabel("cosine with the unseen model's gradient")
    ax.set_ylim(0, 1)
    ax.set_xticks(ks)
    ax.set_title(title)
    ax.legend(fontsize=7)
    if preds:
        ax = axes[0][1]
        for i, (name, pred) in enumerate(preds.items()):
            colour = f"C{i}"
            curve = pred["white_box"]
            ax.plot(curve["budgets"], curve["rank1"], "o-", color=colour,
                    label=f"{name} against itself")
            worth = pred["budget"] * result["alignment"][name][-1]
            ax.axvline(worth, color=colour, ls="--",
                       label=f"{len(ks)} members' change, as worth to {name}: {worth:.4f}")
        some = next(iter(preds.values()))
        ax.axhline(some["goal_rank1"], color="grey", ls="--", label="twice chance (goal)")
        ax.axvline(some["budget"], color="black", ls=":", label=f"budget {some['budget']:.4f}")
        ax.set_xlabel("l2 budget (RMS change per pixel)")
        ax.set_ylabel("Rank-1 after protection")
        ax.set_ylim(0, 1)
        ax.set_title("how much change the identity needs")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="manifest CSV of the images")
    p.add_argument("--member", action="append", default=[], metavar="NAME=WORKDIR",
                   help="ensemble members, in the order they are added")
    p.add_argument("--held-out", action="append", default=[], metavar="NAME=WORKDIR",
                   help="a model outside the ensemble, compared with it; repeatable")
    p.add_argument("--modality", default="",
                   help="only this modality's images (default: all); needed with --white-box")
    p.add_argument("--split", default="test",
                   help="split whose original images are used (default: %(default)s)")
    p.add_argument("--config", default="configs/privacy.py:runlocal",
                   help="privacy config FILE[:ARG] whose objective, smoothing and mask are "
                        "used (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a privacy config value; repeatable")
    p.add_argument("--white-box", action="append", default=[], metavar="NAME=SWEEP_JSON",
                   help="privacy_transfer.json of held-out model NAME protecting against "
                        "itself at several budgets; repeatable")
    p.add_argument("--out", required=True,
                   help="folder for gradient_agreement.json, .md and .png")
    args = p.parse_args(argv)
    try:
        members, held_out = named(args.member, "--member"), named(args.held_out, "--held-out")
        sweep_files = named(args.white_box, "--white-box")
    except ValueError as e:
        p.error(str(e))
    if len(members) < 2 or not held_out:
        p.error("give at least two --member and one --held-out")
    unknown = sorted({n for n, _ in sweep_files} - {n for n, _ in held_out})
    if unknown:
        p.error(f"--white-box {unknown[0]}: not a --held-out model")
    sweeps = {}
    for name, path in sweep_files:       # several sweeps of one model: their runs together
        try:
            with open(path) as f:
                runs = json.load(f)["runs"]
            sweeps.setdefault(name, {"runs": []})["runs"].extend(runs)
            ga.white_box_curve({"runs": runs})
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--white-box {name}={path}: {e}")
    if sweeps and not args.modality:
        p.error("--white-box needs --modality (the budget is per modality)")
    return exit_status(lambda: run(args, p, members, held_out, sweeps))


def run(args, p, members, held_out, sweeps) -> int:
    cfg = load_config(args.config, kind="privacy")
    apply_set_flags(cfg, args.set, p.error)
    rows = read_manifest(args.manifest)
    targets = [r for r in select_rows(rows, args.split, args.manifest)
               if not args.modality or r.modality == args.modality]
    if not targets:
        p.error(f"no rows of split {args.split!r} and modality {args.modality!r}")
    everyone = members + held_out
    experiment = load_experiment(experiment_spec(everyone[0][1], cfg.experiment))
    models = ensemble.load_ensemble([w for _, w in everyone], experiment)
    grads = ga.model_gradients(rows, targets, models, cfg)
    result = {"args": vars(args), **summary([n for n, _ in everyone], len(members), grads)}
    if sweeps:
        budget = epsilon_for(cfg.perturb, args.modality)
        result["prediction"] = {name: prediction(result, sweep, name, budget)
                                for name, sweep in sweeps.items()}
    make_dirs(args.out)
    write_text_atomic(os.path.join(args.out, "gradient_agreement.json"),
                      strict_json.dumps(result, indent=1))
    write_text_atomic(os.path.join(args.out, "gradient_agreement.md"), markdown(result))
    figure(result, os.path.join(args.out, "gradient_agreement.png"),
           f"{args.split} {args.modality or 'all'}: {result['views']} views")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    run_command(main)
