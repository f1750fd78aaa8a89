"""Flax MaMI against the package's PyTorch module with the same weights, side by side.

One process, one set of weights (the Flax model's initialisation, converted with
``mami_jax.convert.to_torch_state_dict`` and loaded into
``mami_jax.convert.torch_model.MaMITorch``), the two sides run interleaved
(A B A B ...) so that load from other processes hits both alike; medians and the
median of the per-round time ratios flax/torch are reported. Parts:

- ``inference``: the whole model's forward pass, batch ``--batch`` of T=1 and of
  T=``--series-slices`` slices (jitted Flax apply; torch under ``inference_mode``).
- ``train``: one full training step on a batch of P x K images (forward, backward,
  gradient clipping, AdamW update; identity cross-entropy with label smoothing plus
  the batch-hard soft-margin triplet). The Flax side is the trainer's real step:
  ``train.step.make_train_step`` on the model, optimiser and shardings the trainer
  builds from ``mami_jax.config.base_config()``, jitted with the state donated, no
  input pipeline; its lowering and compile times are reported. The torch side is the
  same recipe written the PyTorch way (``torch.optim.AdamW`` with its defaults, the
  same decay groups and the classifier's 10x rate). The first step's losses of both
  sides are printed: same weights and batch, so they must agree.
- ``compa``: ComPA and slice adapters against the plain ViT (``model_speed.measure``),
  forward and forward+backward, with XLA's FLOP counts.

Peak memory: for Flax, XLA's buffer assignment of the compiled executable
(arguments + outputs - donated aliases + temporaries); for torch, the bytes held by
parameters, optimiser state and inputs plus the peak of allocations during one call
(``torch.profiler`` with ``profile_memory``). Both count tensors, not the allocator's
or the runtime's overhead. "img/s" counts slices (B*T per call); "cpu ms" is the
process's CPU time per call over all threads.

    python benchmarks/speed_vs_torch.py                       # ViT-B/16 224 px, float32
    python benchmarks/speed_vs_torch.py --parts inference --rounds 3 --series-slices 0
    python benchmarks/speed_vs_torch.py --preset tiny --rounds 2  # seconds; checks the script

Writes ``--json`` (default speed_vs_torch.json) with every figure and the settings.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import model_speed  # noqa: E402
from mami_jax.models import MaMI, default_config  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file  # noqa: E402

PARTS = ("inference", "train", "compa")

#: ``record_function`` scope of each phase of the torch training step -> the phase
#: (``step_profile.py`` attributes the profiled ops by them; no cost when not profiling).
TORCH_PHASES = {"train_step.forward": "forward", "train_step.backward": "backward",
                "train_step.update": "update"}

#: A model small enough to run every part in seconds (tests, a first look).
TINY = dict(width=64, depth=2, num_heads=2, image_size=32, rank=2, num_codes=4,
            generator_hidden=(16, 8), qkv_groups=4, mlp_groups=4, adapter_width=16)

#: Flax parameter paths without weight decay (train/optim.py's rule) and their torch names.
_TORCH_NO_DECAY = re.compile(r"(bias|class_embedding|positional_embedding|knowledge_pool|"
                             r"_static|ln_\w+\.weight)$")


def model_config(args):
    cfg = default_config()
    with cfg.unlocked():
        if args.preset == "tiny":
            cfg.update(TINY)
        cfg.dtype = args.dtype
    return cfg


def image_size(args, cfg) -> int:
    return args.size or cfg.image_size


# --------------------------------------------------------------------------- torch side

def torch_module(params, cfg):
    import torch
    from mami_jax.convert import to_torch_state_dict
    from mami_jax.convert.torch_model import MaMITorch

    state = to_torch_state_dict(jax.device_get(params), cfg)
    with torch.device("meta"):
        module = MaMITorch(cfg)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                           strict=True, assign=True)
    return module


def torch_triplet(emb, labels):
    """train/losses.batch_hard_soft_margin_triplet, all rows valid."""
    import torch
    sq = (emb * emb).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T).clamp_min(0.0)
    positive = d2 > 1e-12
    dist = torch.where(positive, torch.sqrt(torch.where(positive, d2, torch.ones_like(d2))),
                       torch.zeros_like(d2))
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    inf = torch.full_like(dist, float("inf"))
    hardest_pos = torch.where(same & ~eye, dist, -inf).max(1).values
    hardest_neg = torch.where(~same, dist, inf).min(1).values
    ok = (same & ~eye).any(1) & (~same).any(1)
    return torch.nn.functional.softplus(hardest_pos - hardest_neg)[ok].mean()


def torch_train_step(module, classifier, optim_cfg, loss_cfg):
    """step(images, labels) -> loss: the trainer's recipe (id + triplet, clip, AdamW)."""
    import torch
    import torch.nn.functional as F

    named = list(module.named_parameters())
    decay = [p for n, p in named if not _TORCH_NO_DECAY.search(n)]
    no_decay = [p for n, p in named if _TORCH_NO_DECAY.search(n)]
    lr = optim_cfg.learning_rate
    mult = float(dict(optim_cfg.lr_multipliers).get("classifier", 1.0))
    groups = [{"params": decay, "weight_decay": optim_cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"params": [classifier], "weight_decay": optim_cfg.weight_decay, "lr": lr * mult}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(optim_cfg.b1, optim_cfg.b2), eps=1e-8)
    params = decay + no_decay + [classifier]
    weights = dict(loss_cfg.terms)

    scope = {phase: name for name, phase in TORCH_PHASES.items()}
    record = torch.profiler.record_function

    def step(images, labels):
        opt.zero_grad(set_to_none=True)
        with record(scope["forward"]):
            emb = module(images)["embedding"]
            loss = (weights["id"] * F.cross_entropy(emb @ classifier, labels,
                                                    label_smoothing=loss_cfg.label_smoothing)
                    + weights["triplet"] * torch_triplet(emb, labels))
        with record(scope["backward"]):
            loss.backward()
        with record(scope["update"]):
            if optim_cfg.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip_norm)
            opt.step()
        return loss.detach()

    return step, opt


def torch_bytes(*objs) -> int:
    """Bytes of every tensor in modules, optimisers' states, tensors or lists of them."""
    import torch
    total, seen = 0, set()

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                add(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for t in state.values():
                    add(t)
        elif isinstance(obj, (list, tuple)):
            for t in obj:
                add(t)
        else:
            add(obj)
    return total


def torch_peak_transient(fn) -> int:
    """Peak bytes allocated during one call of ``fn`` over what was held before it."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def xla_peak(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return -1
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


# --------------------------------------------------------------------------- parts

def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def inference_part(args, cfg, slices: int) -> dict:
    import torch
    size = image_size(args, cfg)
    model = MaMI(cfg)
    x = np.array(jax.random.normal(jax.random.key(0), (args.batch, slices, size, size, 3)))
    params = model_speed.random_params(
        jax.eval_shape(model.init, jax.random.key(1), x[:1, :1])["params"])
    module = torch_module(params, cfg).eval()
    xt = torch.from_numpy(x)
    xj = jnp.asarray(x)

    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, xj).compile()
    ours = jax.block_until_ready(compiled(params, xj))
    with torch.inference_mode():
        theirs = module(xt)
    err = rel_err(ours.embedding, theirs["embedding"].numpy())

    def run_torch():
        with torch.inference_mode():
            module(xt)

    wall, cpu = model_speed.interleaved(
        {"flax": lambda: jax.block_until_ready(compiled(params, xj)), "torch": run_torch},
        args.rounds, desc=f"inference T={slices}")
    out = model_speed.summarise(wall, cpu, "torch", args.batch * slices)
    out["flax"]["peak_mib"] = xla_peak(compiled) / 2**20
    out["torch"]["peak_mib"] = (torch_bytes(module, xt) + torch_peak_transient(run_torch)) / 2**20
    out["embedding_rel_err"] = err
    return out


def experiment_config(args, cfg):
    from mami_jax.config import base_config
    config = base_config()
    with config.unlocked():
        config.model = cfg
        config.loss.terms = {"id": 1.0, "triplet": 1.0}
    return config


def trainer_step(config, num_classes: int, total_steps: int):
    """(jitted step, state, mesh): the step train/trainer.py builds, minus data and
    checkpoints. The state has the trainer's structure and shardings; its parameters
    are ``model_speed.random_params`` instead of the trainer's jitted init (minutes of
    compiling on a small CPU, and the step's speed does not depend on the values)."""
    from mami_jax.runtime import sharding
    from mami_jax.train.optim import learning_rate_schedule
    from mami_jax.train.step import TrainState, make_train_step
    from mami_jax.train.trainer import build_model_and_state_fns

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    model, optimizer, init_state = build_model_and_state_fns(config, num_classes, total_steps)
    rng = jax.random.key(config.seed)
    abstract = jax.eval_shape(init_state, rng)
    state_shardings = sharding.tree_shardings(abstract, config.partition_rules, mesh)
    params = model_speed.random_params(abstract.params, seed=config.seed)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=jax.jit(optimizer.init)(params),
                       rng=jax.random.key_data(jax.random.fold_in(rng, 1)))
    state = jax.device_put(state, state_shardings)
    step_fn = make_train_step(model, optimizer, config.loss,
                              accum_steps=int(config.optim.grad_accum_steps),
                              lr_schedule=learning_rate_schedule(config.optim, total_steps))
    step = jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))
    return step, state, mesh


def train_pair(args, cfg):
    """The two training steps on one batch, not yet compiled or run: the trainer's Flax
    ``step`` with its ``state`` and global batch ``gbatch``, and the torch ``module``,
    ``classifier``, optimiser ``opt`` and ``torch_step`` with the same weights and batch
    (``xt``, ``yt``). ``train_part`` times them; ``step_profile.py`` profiles them."""
    import types

    import torch
    from mami_jax.runtime import sharding

    size = image_size(args, cfg)
    config = experiment_config(args, cfg)
    k = args.images_per_patient
    if args.batch % k:
        raise ValueError(f"--batch {args.batch} is not a multiple of "
                         f"--images-per-patient {k}")
    step, state, mesh = trainer_step(config, args.num_classes, total_steps=1000)
    rng = np.random.default_rng(0)
    batch = {"images": rng.standard_normal((args.batch, 1, size, size, 3), dtype=np.float32),
             "label": np.repeat(np.arange(args.batch // k), k).astype(np.int32),
             "mask": np.ones(args.batch, bool)}
    module = torch_module(state.params["mami"], cfg).train()
    classifier = torch.tensor(np.array(jax.device_get(state.params["classifier"]["kernel"])),
                              requires_grad=True)
    torch_step, opt = torch_train_step(module, classifier, config.optim, config.loss)
    return types.SimpleNamespace(
        step=step, state=state, gbatch=sharding.global_batch(batch, mesh), module=module,
        classifier=classifier, opt=opt, torch_step=torch_step,
        xt=torch.from_numpy(batch["images"]), yt=torch.from_numpy(batch["label"]).long())


def train_part(args, cfg) -> dict:
    pair = train_pair(args, cfg)
    step, state, gbatch = pair.step, pair.state, pair.gbatch
    torch_step, xt, yt = pair.torch_step, pair.xt, pair.yt

    t0 = time.perf_counter()
    lowered = step.lower(state, gbatch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    peak = xla_peak(compiled)

    holder = {"state": state}

    def run_flax():
        holder["state"], metrics = compiled(holder["state"], gbatch)
        return jax.block_until_ready(metrics)

    flax_loss = float(run_flax()["loss"])          # first step: same weights on both sides
    torch_loss = float(torch_step(xt, yt))
    wall, cpu = model_speed.interleaved({"flax_trainer": run_flax,
                                         "torch": lambda: torch_step(xt, yt)}, args.rounds,
                                        desc="train step")
    out = model_speed.summarise(wall, cpu, "torch", args.batch)
    out["flax_trainer"].update(peak_mib=peak / 2**20, lower_s=t1 - t0, compile_s=t2 - t1,
                               gflops=flops / 1e9)
    held = torch_bytes(pair.module, pair.classifier, pair.opt, xt)
    out["torch"]["peak_mib"] = (held + torch_peak_transient(lambda: torch_step(xt, yt))) / 2**20
    out["first_loss"] = {"flax": flax_loss, "torch": torch_loss}
    return out


def compa_part(args, cfg) -> dict:
    out = {}
    for mode in ("forward", "train"):
        ns = argparse.Namespace(batch=args.batch, slices=1, size=image_size(args, cfg),
                                rounds=args.rounds, dtype=args.dtype, mode=mode,
                                variants="mami,compa_only,adapter_only,plain_vit")
        out[mode] = model_speed.measure(ns, cfg)
    return out


# --------------------------------------------------------------------------- report

def print_report(report: dict) -> None:
    s = report["settings"]
    print(f"{s['device']} | jax {s['jax']} torch {s['torch']} | torch threads "
          f"{s['torch_threads']}, {s['cpus']} cpus | batch {s['batch']} size {s['size']} "
          f"{s['dtype']} | {s['rounds']} interleaved rounds | load avg at start {s['load']}")
    print(f"{'part':16s} {'side':13s} {'median ms':>10s} {'img/s':>8s} {'cpu ms':>9s} "
          f"{'peak MiB':>9s} {'flax/torch':>10s}")
    for part, res in report["results"].items():
        if part == "compa":
            continue
        for side in ("flax", "flax_trainer", "torch"):
            if side not in res:
                continue
            r = res[side]
            ratio = f"{r['ratio_to_torch']:10.3f}" if side != "torch" else ""
            print(f"{part:16s} {side:13s} {r['median_ms']:10.1f} {r['images_per_s']:8.2f} "
                  f"{r['cpu_ms']:9.0f} {r['peak_mib']:9.0f} {ratio}")
        if "first_loss" in res:
            t = res["flax_trainer"]
            print(f"{'':16s} first-step loss flax {res['first_loss']['flax']:.6f} torch "
                  f"{res['first_loss']['torch']:.6f}; trainer step lower {t['lower_s']:.1f} s, "
                  f"compile {t['compile_s']:.1f} s, {t['gflops']:.0f} GFLOP (XLA count)")
        if "embedding_rel_err" in res:
            print(f"{'':16s} embedding relative difference flax vs torch "
                  f"{res['embedding_rel_err']:.1e}")
    for mode, res in report["results"].get("compa", {}).items():
        print(f"ComPA + adapters vs plain ViT, {mode}:")
        print(f"  {'variant':13s} {'median ms':>10s} {'time/plain':>10s} {'GFLOP':>8s} "
              f"{'FLOP/plain':>10s}")
        for name, r in res.items():
            print(f"  {name:13s} {r['median_ms']:10.1f} {r['ratio_to_plain_vit']:10.3f} "
                  f"{r['gflops']:8.1f} {r['flop_ratio_to_plain_vit']:10.3f}")


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("vit_b16", "tiny"), default="vit_b16",
                        help="model size; tiny runs every part in seconds "
                             "(default: %(default)s)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--batch", type=int, default=8,
                        help="images per call; for train P x K, a multiple of "
                             "--images-per-patient (default: %(default)s)")
    parser.add_argument("--series-slices", type=whole_at_least(0), default=8,
                        help="T of the second inference run; 0 skips it")
    parser.add_argument("--size", type=whole_at_least(0), default=0,
                        help="image side in px; 0: the model's image_size")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved timed runs of each side; medians are reported "
                             "(default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=("float32",),
                        help="the torch module computes in float32 only")
    parser.add_argument("--images-per-patient", type=int, default=4,
                        help="train: K images of each patient in the batch "
                             "(default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=128,
                        help="train: identity classes of the classifier head "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=whole_at_least(0), default=0,
                        help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--json", default="speed_vs_torch.json",
                        help="report to write, rewritten after each part "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        parser.error(f"--parts {args.parts!r}: expected a comma list of {PARTS}")
    for name in ("batch", "rounds", "images_per_patient", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.parts = parts
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def work():
        check_json_file(args.json, "--json")
        run(args)
    return exit_status(work)


def run(args) -> dict:
    """Measures ``args.parts``, rewriting ``--json`` after each; prints the report and
    returns it."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = model_config(args)
    settings = {"device": f"{jax.devices()[0].device_kind} ({platform.processor() or '?'})",
                "jax": jax.__version__, "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                "batch": args.batch, "size": image_size(args, cfg), "dtype": args.dtype,
                "rounds": args.rounds, "preset": args.preset,
                "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "command": " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:])}
    results = {}
    report = {"settings": settings, "results": results}
    jobs = [(f"inference T={t}", lambda t=t: inference_part(args, cfg, t))
            for t in sorted({1, args.series_slices} - {0}) if "inference" in args.parts]
    if "train" in args.parts:
        jobs.append(("train T=1", lambda: train_part(args, cfg)))
    if "compa" in args.parts:
        jobs.append(("compa", lambda: compa_part(args, cfg)))
    # The JSON is rewritten after every part: a long run keeps what it has measured if it
    # is stopped.
    for name, job in jobs:
        results[name] = job()
        settings["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
        write_text_atomic(args.json, strict_json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    run_command(main)
