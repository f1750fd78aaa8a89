"""Where the training step's time goes, Flax against PyTorch, op by op.

``speed_vs_torch.py`` says how the two training steps compare; this says why. It
profiles the same two steps (the trainer's jitted, donated Flax step and the package's
PyTorch module trained with the same recipe, same weights and batch) and attributes
their time to the same buckets:

- phase: ``forward`` (model and loss), ``backward`` (gradients), ``update`` (gradient
  norm and clipping, AdamW, the NaN guard);
- kind: ``matmul`` (dots, convolutions and the fusions built around them), ``copy``
  (copies and transposes: layout work that computes nothing), ``other`` (elementwise
  work, reductions, softmax, normalisation).

The Flax side uses the JAX profiler (``jax.profiler.trace``): XLA's CPU runtime records
one event per executed operation (thunk), named after the HLO instruction; the
instruction's metadata in the compiled module gives its phase (``jvp`` = forward,
``transpose(jvp)`` = backward, neither = update), its Flax module path and whether it
holds a dot. The PyTorch side uses ``torch.profiler``: self CPU time per aten operation,
the phase from the ``record_function`` scopes of ``speed_vs_torch.torch_train_step``.
Both sides are profiled interleaved (Flax step, torch step, ...) for ``--rounds`` steps
after a warm-up step each. Time per bucket is summed over the operations: XLA may run
independent operations at once and PyTorch ops run their own threads, so the sums are
CPU-side busy time of the operations, reported beside each side's wall time per step.

    python benchmarks/step_profile.py                    # ViT-B/16 MaMI, batch 8, 224 px
    python benchmarks/step_profile.py --preset tiny --rounds 1   # seconds; checks the script

Prints the buckets side by side, the Flax time per model part and the costliest
operations of each side; writes ``--json`` and a bar chart ``--png``.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax
from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks import speed_vs_torch  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_atomic, write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file, check_picture_file  # noqa: E402

PHASES = ("forward", "backward", "update")
KINDS = ("matmul", "copy", "other")

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_MATMUL_OPS = {"dot", "convolution"}
_COPY_OPS = {"copy", "transpose"}
#: XLA names a fusion after its root: these only move data (a transpose or relayout).
_COPY_FUSIONS = ("copy_", "transpose_", "wrapped_copy", "wrapped_transpose")


# --------------------------------------------------------------------------- HLO side

def parse_hlo(text: str) -> tuple[dict, set]:
    """(instructions, matmul computations): instruction name -> {name, opcode, op_name,
    calls} for every instruction of the module, and the computations holding a dot or
    convolution.
    HLO instruction names are unique within a module, so the name identifies a thunk.
    An instruction that carries no metadata (XLA drops it on some rewrites) takes the
    op_name of the first instruction inside its fused computation that has one, else
    that of the instruction scheduled before it (the module is printed in schedule
    order, so that is its neighbour in the program)."""
    instructions, holds_matmul, current = {}, set(), None
    first_op_name, previous = {}, {}
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and " = " not in line:
            current = head.group(1)
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode = m.groups()
        op_name = _OP_NAME.search(line)
        calls = _CALLS.search(line)
        instructions[name] = {"name": name, "opcode": opcode,
                              "op_name": op_name.group(1) if op_name else "",
                              "calls": calls.group(1) if calls else None,
                              "previous": previous.get(current, "")}
        if op_name:
            previous[current] = op_name.group(1)
        if opcode in _MATMUL_OPS and current is not None:
            holds_matmul.add(current)
        if op_name and current is not None:
            first_op_name.setdefault(current, op_name.group(1))
    for info in instructions.values():
        if not info["op_name"] and info["calls"]:
            info["op_name"] = first_op_name.get(info["calls"], "")
        if not info["op_name"]:
            info["op_name"] = info["previous"]
    return instructions, holds_matmul


def classify_instruction(info: dict, matmul_computations: set) -> tuple[str, str, str]:
    """(phase, kind, part) of one HLO instruction from its opcode and metadata."""
    op_name = info["op_name"]
    if "transpose(jvp(" in op_name:
        phase = "backward"
    elif "jvp(" in op_name or not op_name.startswith("jit("):
        phase = "forward"  # jvp, or a relayout of an input (op_name "state.params[...]")
    else:
        phase = "update"
    opcode = info["opcode"]
    if opcode in _MATMUL_OPS or (opcode == "fusion" and info["calls"] in matmul_computations):
        kind = "matmul"
    elif opcode in _COPY_OPS or (opcode == "fusion" and info["name"].startswith(_COPY_FUSIONS)):
        kind = "copy"
    else:
        kind = "other"
    part = "inputs (relayout)" if not op_name.startswith("jit(") else model_part(op_name)
    return phase, kind, part


def model_part(op_name: str) -> str:
    """The Flax module path of an operation with block numbers folded
    (``mami/block_*/attn``), the loss or ``optimizer`` for the update."""
    m = re.search(r"jvp\((\w*)\)+/(.*)", op_name)
    if not m:
        return "optimizer"
    path = [p for p in m.group(2).split("/")[:-1] if not p.startswith(("jit(", "jvp(", "vmap("))]
    if not m.group(1):
        return "loss"
    path = [re.sub(r"_\d+$", "_*", p) for p in path[:3]]
    return "/".join(path) or m.group(1)


def xla_thunk_times(trace_dir: str) -> dict:
    """Thunk name -> summed duration (s) of its events in the perfetto trace(s)."""
    files = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"the JAX profiler wrote no perfetto trace under {trace_dir}")
    totals = collections.Counter()
    for path in files:
        with gzip.open(path, "rt") as f:
            data = json.load(f)
        events = data["traceEvents"] if isinstance(data, dict) else data
        for e in events:
            if e.get("ph") == "X" and "dur" in e:
                totals[e["name"]] += e["dur"] * 1e-6
    return totals


def flax_buckets(times: dict, instructions: dict, matmul_computations: set,
                 steps: int) -> dict:
    """Per-step seconds by (phase, kind), by part, and the costliest thunks."""
    buckets, parts, ops = collections.Counter(), collections.Counter(), []
    by_source = collections.Counter()  # (phase, kind, op_name with blocks folded)
    for name, seconds in times.items():
        info = instructions.get(name)
        if info is None or info["opcode"] in ("conditional", "while", "call"):
            continue  # runtime events, and control flow whose body is counted op by op
        phase, kind, part = classify_instruction(info, matmul_computations)
        per_step = seconds / steps
        buckets[(phase, kind)] += per_step
        parts[(phase, part)] += per_step
        ops.append((per_step, name, phase, kind, info["op_name"]))
        by_source[(phase, kind, re.sub(r"block_\d+", "block_*", info["op_name"]))] += per_step
    ops.sort(reverse=True)
    return {"buckets": buckets, "parts": parts, "ops": ops, "by_source": by_source}


# --------------------------------------------------------------------------- torch side

_TORCH_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
                 "aten::_convolution", "aten::mkldnn_convolution", "aten::convolution_backward",
                 "aten::_scaled_dot_product_flash_attention_for_cpu"}
_TORCH_COPY = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy",
               "aten::cat", "aten::transpose_copy", "aten::permute_copy"}


def torch_phase(event) -> str | None:
    """The ``record_function`` phase scope an event runs under (None: outside a step).
    Backward ops run on autograd's thread, without the scope as a parent: those inside
    an autograd node are ``backward``."""
    node = event
    while node is not None:
        if node.name in speed_vs_torch.TORCH_PHASES:
            return speed_vs_torch.TORCH_PHASES[node.name]
        if node.name.startswith("autograd::engine::evaluate_function"):
            return "backward"
        node = node.cpu_parent
    return None


def torch_buckets(events, steps: int) -> dict:
    buckets, ops = collections.Counter(), collections.Counter()
    for e in events:
        phase = torch_phase(e)
        if phase is None or e.name in speed_vs_torch.TORCH_PHASES:
            continue
        kind = ("matmul" if e.name in _TORCH_MATMUL else
                "copy" if e.name in _TORCH_COPY else "other")
        seconds = e.self_cpu_time_total * 1e-6 / steps
        buckets[(phase, kind)] += seconds
        ops[(e.name, phase, kind)] += seconds
    return {"buckets": buckets,
            "ops": sorted(((s,) + key for key, s in ops.items()), reverse=True)}


# --------------------------------------------------------------------------- run

def build_steps(args):
    """(run_flax, run_torch, compiled Flax step): ``speed_vs_torch.train_pair``'s two
    training steps, each already run once."""
    pair = speed_vs_torch.train_pair(args, speed_vs_torch.model_config(args))
    compiled = pair.step.lower(pair.state, pair.gbatch).compile()
    holder = {"state": pair.state}

    def run_flax():
        holder["state"], metrics = compiled(holder["state"], pair.gbatch)
        jax.block_until_ready(metrics)

    def run_torch():
        pair.torch_step(pair.xt, pair.yt)

    run_flax()
    run_torch()
    return run_flax, run_torch, compiled


def profile(args) -> dict:
    import torch
    run_flax, run_torch, compiled = build_steps(args)
    instructions, matmul_computations = parse_hlo(compiled.as_text())
    walls = {"flax": [], "torch": []}
    xla_times, torch_events = collections.Counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for r in tqdm(range(args.rounds), desc="profiled steps", unit="round"):
            trace_dir = os.path.join(tmp, f"round{r}")
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                start = time.perf_counter()
                run_flax()
                walls["flax"].append(time.perf_counter() - start)
            xla_times.update(xla_thunk_times(trace_dir))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                run_torch()
                walls["torch"].append(time.perf_counter() - start)
            torch_events.extend(prof.events())
    flax = flax_buckets(xla_times, instructions, matmul_computations, args.rounds)
    torch_side = torch_buckets(torch_events, args.rounds)
    return {"wall_s": {k: statistics.median(v) for k, v in walls.items()},
            "flax": flax, "torch": torch_side}


def to_json(result: dict, settings: dict, top: int) -> dict:
    def table(buckets):
        return {f"{p}/{k}": round(buckets.get((p, k), 0.0) * 1e3, 2)
                for p in PHASES for k in KINDS}
    return {"settings": settings, "wall_ms": {k: v * 1e3 for k, v in result["wall_s"].items()},
            "buckets_ms": {"flax": table(result["flax"]["buckets"]),
                           "torch": table(result["torch"]["buckets"])},
            "flax_parts_ms": {f"{p}/{part}": round(s * 1e3, 2) for (p, part), s
                              in result["flax"]["parts"].most_common()},
            "flax_bucket_sources_ms": {
                f"{p}/{k}": [{"ms": round(ms * 1e3, 2), "op_name": o} for (pp, kk, o), ms
                             in result["flax"]["by_source"].most_common()
                             if (pp, kk) == (p, k)][:top]
                for p in PHASES for k in KINDS},
            "flax_top_ops": [{"ms": round(s * 1e3, 2), "name": n, "phase": p, "kind": k,
                              "op_name": o} for s, n, p, k, o in result["flax"]["ops"][:top]],
            "torch_top_ops": [{"ms": round(s * 1e3, 2), "name": n, "phase": p, "kind": k}
                              for s, n, p, k in result["torch"]["ops"][:top]]}


def print_report(report: dict, top: int) -> None:
    s = report["settings"]
    print(f"{s['preset']} batch {s['batch']} | {s['rounds']} profiled steps per side | "
          f"load avg {s['load']} | wall per step: flax {report['wall_ms']['flax']:.0f} ms, "
          f"torch {report['wall_ms']['torch']:.0f} ms (under the profilers)")
    flax, torch_ = report["buckets_ms"]["flax"], report["buckets_ms"]["torch"]
    print(f"{'phase/kind':18s} {'flax ms':>9s} {'torch ms':>9s} {'flax/torch':>10s}")
    for key in flax:
        ratio = flax[key] / torch_[key] if torch_[key] else float("nan")
        print(f"{key:18s} {flax[key]:9.1f} {torch_[key]:9.1f} {ratio:10.2f}")
    tf, tt = sum(flax.values()), sum(torch_.values())
    print(f"{'total (op time)':18s} {tf:9.1f} {tt:9.1f} {tf / tt:10.2f}")
    print("Where each Flax bucket's time comes from (op_name, blocks folded; ms per step):")
    for key, sources in report["flax_bucket_sources_ms"].items():
        for src in sources[:3]:
            print(f"  {key:16s} {src['ms']:8.1f}  {src['op_name'][-80:]}")
    print("Flax time by model part (ms per step):")
    for name, ms in list(report["flax_parts_ms"].items())[:top]:
        print(f"  {ms:8.1f}  {name}")
    print("Costliest Flax operations (ms per step):")
    for op in report["flax_top_ops"][:top]:
        print(f"  {op['ms']:8.1f}  {op['phase']:8s} {op['kind']:6s} {op['name']:28s} "
              f"{op['op_name'][-70:]}")
    print("Costliest torch operations (self ms per step):")
    for op in report["torch_top_ops"][:top]:
        print(f"  {op['ms']:8.1f}  {op['phase']:8s} {op['kind']:6s} {op['name']}")


def draw(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"matmul": ("#1f4e79", "#2e75b6", "#9dc3e6"),
               "copy": ("#7f3f00", "#c55a11", "#f4b183"),
               "other": ("#385723", "#70ad47", "#c5e0b4")}
    fig, ax = plt.subplots(figsize=(10, 2.6))
    for row, side in enumerate(("torch", "flax")):
        left = 0.0
        for kind in KINDS:
            for i, phase in enumerate(PHASES):
                ms = report["buckets_ms"][side][f"{phase}/{kind}"]
                ax.barh(row, ms, left=left, color=colours[kind][i],
                        label=f"{phase} {kind}" if row == 0 else None)
                left += ms
    ax.set_yticks([0, 1], ["PyTorch", "Flax (trainer step)"])
    ax.set_xlabel("op time per training step (ms)")
    s = report["settings"]
    ax.set_title(f"Training step by phase and kind: {s['preset']}, batch {s['batch']}")
    ax.legend(ncol=1, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("vit_b16", "tiny"), default="vit_b16",
                        help="model size; tiny takes seconds (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8,
                        help="images per step, P x K, a multiple of --images-per-patient "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=whole_at_least(0), default=0,
                        help="image side in px; 0: the model's image_size")
    parser.add_argument("--rounds", type=int, default=3, help="profiled steps per side")
    parser.add_argument("--images-per-patient", type=int, default=4,
                        help="K images of each patient in the batch (default: %(default)s)")
    parser.add_argument("--num-classes", type=int, default=128,
                        help="identity classes of the classifier head (default: %(default)s)")
    parser.add_argument("--top", type=int, default=15,
                        help="costliest operations listed per side (default: %(default)s)")
    parser.add_argument("--json", default="step_profile.json",
                        help="report to write (default: %(default)s)")
    parser.add_argument("--png", default="step_profile.png",
                        help="bar chart of the buckets to write (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("batch", "rounds", "images_per_patient", "num_classes", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch % args.images_per_patient:
        parser.error(f"--batch {args.batch} is not a multiple of --images-per-patient "
                     f"{args.images_per_patient}")
    args.dtype = "float32"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def work():
        check_json_file(args.json, "--json")
        check_picture_file(args.png, "--png")
        run(args)
    return exit_status(work)


def run(args) -> dict:
    """Profiles both steps, writes ``--json`` and ``--png``, prints the report; returns
    the report."""
    settings = {"preset": args.preset, "batch": args.batch, "rounds": args.rounds,
                "jax": jax.__version__, "load": " ".join(f"{v:.2f}" for v in os.getloadavg()),
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
                "command": " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:])}
    report = to_json(profile(args), settings, args.top)
    write_text_atomic(args.json, strict_json.dumps(report, indent=1) + "\n")
    draw(report, args.png)
    print_report(report, args.top)
    print(f"wrote {args.json} and {args.png}")
    return report


if __name__ == "__main__":
    run_command(main)
