"""Transfer of the privacy protection to re-ID models it never saw, against ensemble size.

    python benchmarks/privacy_transfer.py --manifest MANIFEST --workdir RUN \
        --member DIR [--member DIR ...] --sizes 1,2,4 \
        --held-out NAME=MODEL [--held-out ...] [--modality xray] [--split val] \
        [--config configs/privacy.py:runlocal] [--set KEY=VALUE ...] \
        [--variant NAME:KEY=VALUE;KEY=VALUE ...] --out DIR

For each variant (a set of privacy-config overrides; "default" without any) and each
ensemble size n, the rows of ``--split`` (and ``--modality``, when given) are protected
against ``--workdir`` plus the first n - 1 ``--member`` runs (written under
DIR/<variant>-n<n>/ as ``protect`` writes them), then matched, protected queries against
the unprotected gallery, by every ``--held-out`` model (which should be in no ensemble)
and by ``--workdir``'s own ("protecting"); a modality that ``perturb.modality_ensemble``
names is protected by its own members instead, whatever n. Every model (``--workdir``,
``--member``, ``--held-out``) is a workdir, ``WORKDIR@STEP``, a released or exported
``.pth``/``.safetensors`` file or a converter folder (``Embedder.load``). Models are loaded once. Writes
DIR/privacy_transfer.json, DIR/privacy_transfer.md and DIR/privacy_transfer.png
(Rank-1 after protection against ensemble size per variant, or against the variant when
one size is given; per model, with chance). Bad input ends with one ``error: ...`` line
(exit status 2 for usage, 1 otherwise).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mami_jax.apps.privacy.member_reading import (  # noqa: E402
    refuse_other_readings, unchecked_warning)
from mami_jax.apps.privacy.named_models import named  # noqa: E402
from mami_jax.apps.privacy import attack_eval, ensemble  # noqa: E402
from mami_jax.apps.privacy.quality import psnr_summary  # noqa: E402
from mami_jax.apps.privacy.protect import protect_rows, select_rows  # noqa: E402
from mami_jax.config_files import load_config  # noqa: E402
from mami_jax.config_overrides import apply_overrides, apply_set_flags  # noqa: E402
from mami_jax.data.manifest import MODALITIES, read_manifest, write_manifest  # noqa: E402
from mami_jax.experiment_config import experiment_spec, load_experiment  # noqa: E402
from mami_jax.inference import Embedder  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import make_dirs, write_atomic, write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition(":")
    if not name:
        raise ValueError(f"--variant {text!r}: expected NAME:KEY=VALUE;KEY=VALUE")
    return name, [kv for kv in rest.split(";") if kv] if sep else []


def _num(v) -> str:
    """An AUC to 3 places; n/a where no group had both kinds of pairs."""
    return "n/a" if v is None else f"{v:.3f}"


def markdown(result: dict) -> str:
    lines = ["| variant | ensemble size | model | chance R1 | R1 before | R1 after | AUC before "
             "| AUC after | PSNR dB (mean) | PSNR dB (min) | unchanged |", "| --- " * 11 + "|"]
    for run in result["runs"]:
        for model, rep in run["attack"].items():
            v = rep["mean"]
            lines.append(f"| {run['variant']} | {run['size']} | {model} | {v['chance_rank1']:.3f} | "
                         f"{v['rank1_before']:.3f} | {v['rank1_after']:.3f} | "
                         f"{_num(v['auc_before'])} | {_num(v['auc_after'])} | "
                         f"{run['psnr_db']:.2f} | {run['psnr_db_min']:.2f} | "
                         f"{run.get('unchanged', 0)} |")
    return "\n".join(lines) + "\n"


def panels(result: dict) -> list[dict]:
    """What the figure draws: one panel per variant with Rank-1 after protection against
    ensemble size, or, when every run has one ensemble size, one panel with Rank-1 against
    the variant (in the order run). Each panel: title, x label, x ticks (labels), and per
    model its Rank-1 values and before-protection Rank-1; the chance Rank-1."""
    runs = result["runs"]
    if not runs:
        return []
    models = list(runs[0]["attack"])
    where = f"{result['args']['split']} {result['args']['modality'] or 'all'}"
    sizes = sorted({r["size"] for r in runs})
    if len(sizes) == 1:
        groups = [(f"ensemble of {sizes[0]}: {where}", "variant", runs,
                   [r["variant"] for r in runs])]
    else:
        variants = list(dict.fromkeys(r["variant"] for r in runs))
        groups = []
        for variant in variants:
            rs = [r for r in runs if r["variant"] == variant]
            groups.append((f"{variant}: {where}", "models in the ensemble", rs,
                           [str(r["size"]) for r in rs]))
    out = []
    for title, xlabel, rs, ticks in groups:
        out.append({"title": title, "xlabel": xlabel, "ticks": ticks,
                    "chance": rs[0]["attack"][models[0]]["mean"]["chance_rank1"],
                    "models": {m: {"after": [r["attack"][m]["mean"]["rank1_after"] for r in rs],
                                   "before": rs[0]["attack"][m]["mean"]["rank1_before"]}
                               for m in models}})
    return out


def figure(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    drawn = panels(result)
    fig, axes = plt.subplots(1, max(1, len(drawn)), figsize=(5.2 * max(1, len(drawn)), 3.8),
                             squeeze=False)
    for ax, panel in zip(axes[0], drawn):
        xs = list(range(len(panel["ticks"])))
        for model, v in panel["models"].items():
            ax.plot(xs, v["after"], "o-", label=f"{model} (before {v['before']:.2f})")
        ax.axhline(panel["chance"], color="grey", ls=":", label=f"chance {panel['chance']:.3f}")
        ax.axhline(2 * panel["chance"], color="grey", ls="--", label="twice chance (goal)")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel("Rank-1 of protected queries")
        ax.set_xticks(xs)
        ax.set_xticklabels(panel["ticks"], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(panel["title"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="manifest CSV of the images")
    p.add_argument("--workdir", required=True, help="the protecting model (first member)")
    p.add_argument("--member", action="append", default=[], help="further members, in order")
    p.add_argument("--sizes", default="1,2,4",
                   help="comma list of ensemble sizes n: --workdir plus the first n - 1 "
                        "--member (default: %(default)s)")
    p.add_argument("--held-out", action="append", default=[], metavar="NAME=MODEL",
                   help="a model in no ensemble that matches the protected queries; "
                        "repeatable")
    p.add_argument("--modality", default="",
                   help="only this modality's rows are protected (default: all)")
    p.add_argument("--split", default="val",
                   help="split whose rows are protected (default: %(default)s)")
    p.add_argument("--config", default="configs/privacy.py:runlocal",
                   help="privacy config FILE[:ARG] (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a privacy config value, in every variant; repeatable")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE;...",
                   help="a named set of privacy config overrides, run at every size; "
                        "repeatable (default: one variant 'default' without any)")
    p.add_argument("--out", required=True,
                   help="folder for the protected runs and privacy_transfer.json, .md, .png")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes {args.sizes}: give ensemble sizes as integers, e.g. 1,2,4")
    try:
        named(args.held_out, "--held-out")    # checked before any work; args stay as given
    except ValueError as e:
        p.error(str(e))
    if min(sizes) < 1 or max(sizes) > 1 + len(args.member):
        p.error(f"--sizes {args.sizes}: sizes from 1 to {1 + len(args.member)} (the models given)")
    # a missing run, a bad manifest, config or override: one line
    return exit_status(lambda: run(args, p, sizes, [parse_variant(v) for v in args.variant]
                                   or [("default", [])]))


def run(args, p, sizes, variants) -> int:
    base_cfg = load_config(args.config, kind="privacy")
    apply_set_flags(base_cfg, args.set, p.error)
    spec = experiment_spec(args.workdir, base_cfg.experiment)
    experiment = load_experiment(spec)
    rows = read_manifest(args.manifest)
    targets = [r for r in select_rows(rows, args.split, args.manifest)
               if not args.modality or r.modality == args.modality]
    if not targets:
        p.error(f"no rows of split {args.split!r} and modality {args.modality!r}")
    names = [args.workdir] + args.member[:max(sizes) - 1]
    modalities = {r.modality for r in targets}
    refuse_other_readings({args.workdir: modalities}, experiment.data, role="--workdir",
                          against=(f"the experiment config it is read with ({spec})",
                                   "set the privacy config's experiment to the one it was "
                                   "trained with, or to '' (--set experiment=) to read it "
                                   "with its own config.json"))
    unchecked = refuse_other_readings({n: modalities for n in names[1:]}, experiment.data)
    if unchecked:
        print(unchecked_warning(unchecked), file=sys.stderr, flush=True)
    unknown = refuse_other_readings(
        {model: modalities for _, model in named(args.held_out, "--held-out")},
        experiment.data, role="--held-out model")
    if unknown:
        print(f"warning: --held-out model(s) {', '.join(unknown)} carry no training config: "
              f"read with {spec} unchecked", file=sys.stderr, flush=True)
    members = ensemble.load_ensemble(names, experiment)
    loaded = dict(zip(names, members))
    judges = {"protecting": members[0].embedder}
    for name, model in named(args.held_out, "--held-out"):
        judges[name] = Embedder.load(model, experiment, action="evaluate",
                                     role=f"--held-out {name}")
    originals = {name: e.embed_rows(targets) for name, e in judges.items()}
    result = {"args": vars(args), "runs": []}
    make_dirs(args.out)
    manifest_dir = os.path.dirname(os.path.abspath(args.manifest))
    for variant, overrides in variants:
        for n in sizes:
            cfg = load_config(args.config, kind="privacy")
            apply_overrides(cfg, list(args.set) + overrides)
            out = os.path.abspath(os.path.join(args.out, f"{variant}-n{n}"))
            by_modality = ensemble.load_modality_members(members[0], loaded, cfg.perturb,
                                                         experiment)
            new_rows, records = protect_rows(rows, targets, members[:n], cfg, manifest_dir, out,
                                             modality_members=by_modality)
            write_manifest(new_rows, os.path.join(out, "manifest.csv"))
            protected = read_manifest(os.path.join(out, "manifest.csv"))
            attack = {name: attack_eval.attack_report(originals[name], e.embed_rows(protected),
                                                      targets)
                      for name, e in judges.items()}
            run = {"variant": variant, "overrides": overrides, "size": n,
                   "members": [args.workdir] + args.member[:n - 1],
                   "modality_members": ensemble.modality_ensembles(cfg.perturb, MODALITIES),
                   **psnr_summary([r["psnr_db"] for r in records]),
                   "score_before": float(np.mean([r["score_before"] for r in records])),
                   "score_after": float(np.mean([r["score_after"] for r in records])),
                   "attack": attack}
            result["runs"].append(run)
            print(variant, n, {k: round(v["mean"]["rank1_after"], 3) for k, v in attack.items()},
                  flush=True)
            write_text_atomic(os.path.join(args.out, "privacy_transfer.json"),
                              strict_json.dumps(result, indent=1))
            write_text_atomic(os.path.join(args.out, "privacy_transfer.md"), markdown(result))
    figure(result, os.path.join(args.out, "privacy_transfer.png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    run_command(main)
