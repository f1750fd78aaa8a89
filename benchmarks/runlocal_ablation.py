"""Short single-config training runs that show whether a recipe learns re-identification.

The learnability experiments behind ``configs/*.py:runlocal`` (docs/experiments.md):
trains with the real loader, model, optimiser and step for ``--steps`` steps and
prints the losses and, every ``--eval-every`` steps, Rank-1 / mAP of the "reid"
protocol on the test patients and on the training patients (the second says
whether the model fits at all, the first whether it generalises). Embeddings
are scored raw and mean-centred: a large gap means the embeddings share one big
common component that cosine similarity cannot see past.

    python benchmarks/runlocal_ablation.py --config configs/fundus.py --steps 400 \\
        --eval-every 200 --phantoms /tmp/ph --set data.normalization=imagenet \\
        --set loss.id_neck=none

``--set key=value`` overrides the runlocal config (value read as its key's type, as the
privacy commands' ``--set``). Runs are sequential by design: the 2-core machines
these numbers come from are too small to run two at once without skewing both.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mami_jax import config_files  # noqa: E402
from mami_jax.config_overrides import apply_overrides  # noqa: E402
from mami_jax.config_renames import renamed_key_message  # noqa: E402
from mami_jax.runtime import sharding  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.data.loading import load_rows  # noqa: E402
from mami_jax.data.pipeline import make_train_loader  # noqa: E402
from mami_jax.evaluate.evaluator import embed_rows, group_indices, score_groups  # noqa: E402
from mami_jax.train.optim import learning_rate_schedule  # noqa: E402
from mami_jax.models.embed import make_embed_fn  # noqa: E402
from mami_jax.train.trainer import build_model_and_state_fns  # noqa: E402
from mami_jax.train.step import make_train_step  # noqa: E402


def load_config(path: str, overrides: list[str], steps: int, phantoms: str):
    cfg = config_files.load_config(path + ":runlocal")
    with cfg.unlocked():
        cfg.train.total_steps = steps
        cfg.eval.protocols, cfg.eval.verification = ("reid",), False
        if phantoms:
            cfg.phantoms.cache_dir = phantoms
    apply_overrides(cfg, overrides, moved=renamed_key_message)
    return cfg


def rank1_table(state, rows, cfg, embedder, mesh) -> str:
    parts = []
    for split in ("test", "train"):
        groups = group_indices(rows, split)
        idx = sorted(i for members in groups.values() for i in members)
        emb = embed_rows(embedder(state.params["mami"]), rows, idx, cfg.data, mesh, cfg.eval.batch_size)
        for label, e in ((split, emb), (split + "(centred)", emb - emb.mean(0))):
            res = score_groups(dict(zip(idx, e)), rows, groups, cfg.eval)
            parts.append(label + " " + " ".join(
                f"{k.split('/')[1]}:{v['rank1']:.2f}/{v['mAP']:.2f}" for k, v in res.items()))
    return " | ".join(parts)


def main(argv=None) -> int:
    ap = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/xray.py",
                    help="config file whose runlocal config is trained (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=400,
                    help="training steps (default: %(default)s)")
    ap.add_argument("--eval-every", type=int, default=200,
                    help="steps between the Rank-1 / mAP tables, and after the last step; "
                         "0: none (default: %(default)s)")
    ap.add_argument("--phantoms", default="", help="phantom cache folder (default: a temp dir)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a runlocal config value; repeatable")
    args = ap.parse_args(argv)
    return exit_status(lambda: run(args))


def run(args) -> None:
    """Trains for ``--steps`` steps, printing the losses and the Rank-1 tables."""
    cfg = load_config(args.config, args.set, args.steps, args.phantoms)
    print(f"{args.config} runlocal, {args.steps} steps, overrides {args.set}", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        rows = load_rows(cfg, workdir)
        mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
        loader = make_train_loader(rows, cfg.data, seed=cfg.seed)
        model, optimizer, init_state = build_model_and_state_fns(cfg, loader.num_classes, args.steps)
        state = jax.jit(init_state)(jax.random.key(cfg.seed))
        step_fn = jax.jit(make_train_step(model, optimizer, cfg.loss, lr_schedule=
                                          learning_rate_schedule(cfg.optim, args.steps),
                                          freeze=tuple(cfg.optim.freeze)),
                          donate_argnums=(0,))
        embedder = make_embed_fn(cfg.model)
        data_iter = iter(loader)
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            batch = next(data_iter)
            state, metrics = step_fn(state, {k: v for k, v in batch.items() if not k.startswith("_")})
            if step % 25 == 0 or step == args.steps:
                m = jax.device_get(metrics)
                print(f"step {step}: id={float(m['id']):.3f} triplet={float(m['triplet']):.3f} "
                      f"grad_norm={float(m['grad_norm']):.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
                print(f"eval step {step}: {rank1_table(state, rows, cfg, embedder, mesh)}",
                      flush=True)
        getattr(data_iter, "close", lambda: None)()


if __name__ == "__main__":
    run_command(main)
