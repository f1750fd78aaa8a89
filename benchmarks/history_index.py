"""The history archive's vector search at hospital scale: build time, memory, query
latency and recall@10 of FAISS index kinds on synthetic 768-d embeddings.

    nice -n 10 python benchmarks/history_index.py --n 1000000 --dim 768 \\
        --data random,clustered --kinds flat,ivf --ivf-nprobe 1,4,16,64,256 \\
        --out /tmp/history_index.json --png /tmp/history_index.png

Data (``--data``, each measured separately):

- ``random``: Gaussian vectors, L2-normalised. They have no neighbourhood structure
  (in 768 dimensions every pair has a cosine near 0), the worst case for approximate
  search: the recall on them is a floor.
- ``clustered``: ``--clusters`` centres (random unit vectors); every vector is a
  centre chosen uniformly plus Gaussian noise of norm about ``--spread``, normalised,
  like the images of one patient around that patient's identity (at spread 0.5 two
  members of a cluster have a cosine near 0.8, members of two clusters near 0). The
  queries are new members of the archived clusters, like a new image of an archived
  patient.

Vectors are generated chunk by chunk from a seeded stream and added as they come, so
only the index holds the archive (1M x 768 float32 = 2.9 GB per index; one index
lives at a time). Indexes are built with ``make_index`` of
``mami_jax.apps.history.archive``, so kinds and settings are the archive's, searched by
inner product. Per data and kind: build time (IVF training on the first
``--ivf-train`` vectors plus adding every vector; generation time excluded), index
bytes (the vectors, ids, centroids or graph links the index holds), resident memory
after the build and the peak over build and searches (Linux VmRSS / VmHWM, the peak
reset before each kind), and per search setting (``--ivf-nprobe``, ``--hnsw-ef-search``, comma
lists): single-query latency (median and 95th percentile over ``--latency-queries``
one-at-a-time searches, ``--flat-latency-queries`` for the exact index), batched
throughput over all ``--queries`` and recall@k against the exact (``flat``) top k of
the same queries. The exact index is always built first (it is the reference).
Prints a table, writes the JSON and a PNG of recall against latency.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mami_jax.apps.history.archive import KINDS, make_index  # noqa: E402
from mami_jax.runtime import strict_json  # noqa: E402
from mami_jax.runtime.atomic_files import write_atomic, write_text_atomic  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402
from mami_jax.runtime.output_guard import check_json_file, check_picture_file  # noqa: E402

DATA = ("random", "clustered")
CHUNK = 65536


class Stream:
    """Deterministic chunks of unit vectors of one synthetic data set.

    Chunk ``i`` of stream ``part`` (0: the archive, 1: the queries) is drawn from its own
    seeded generator, so a chunk is the same whenever it is made and the archive never
    needs to exist outside the index.
    """

    def __init__(self, data: str, dim: int, seed: int, clusters: int, spread: float):
        self.data, self.dim, self.seed = data, dim, seed
        self.spread = float(spread)
        self.centres = (self._unit(np.random.default_rng([seed, 2, 0]), clusters)
                        if data == "clustered" else None)

    def _unit(self, rng, n: int) -> np.ndarray:
        v = rng.standard_normal((n, self.dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    def chunk(self, part: int, i: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, part, i + 1])
        if self.centres is None:
            return self._unit(rng, n)
        members = rng.integers(0, len(self.centres), n)
        v = self.centres[members] + (self.spread / np.sqrt(self.dim)) * rng.standard_normal(
            (n, self.dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    def chunks(self, part: int, n: int):
        for i, start in enumerate(range(0, n, CHUNK)):
            yield self.chunk(part, i, min(CHUNK, n - start))

    def take(self, part: int, n: int) -> np.ndarray:
        return np.concatenate(list(self.chunks(part, n))) if n else np.zeros((0, self.dim), np.float32)


def memory_gb() -> dict:
    """Resident (VmRSS) and peak resident (VmHWM) memory of this process, GB (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 2**20   # kB
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Resets VmHWM to the current resident size (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def index_bytes(index, kind: str) -> int:
    """The bytes the index holds: vectors, ids, IVF centroids or HNSW links."""
    import faiss
    n, d = index.ntotal, index.d
    if kind == "flat":
        return n * d * 4
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        return n * (ivf.code_size + 8) + ivf.nlist * d * 4
    h = faiss.downcast_index(index).hnsw
    return n * d * 4 + h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4


def build(kind: str, stream: Stream, n: int, settings: dict):
    """(index, build seconds, resident memory after the build)."""
    train = stream.take(0, min(n, settings["train_size"])) if kind == "ivf" else None
    reset_peak()
    t0 = time.perf_counter()
    index = make_index(kind, stream.dim, settings, train if train is not None else np.zeros(
        (0, stream.dim), np.float32))
    elapsed = time.perf_counter() - t0
    del train
    for chunk in tqdm(stream.chunks(0, n), total=-(-n // CHUNK), desc=f"{stream.data}: build {kind}",
                      unit="chunk", leave=False):
        t = time.perf_counter()
        index.add(chunk)
        elapsed += time.perf_counter() - t
    return index, elapsed, {"rss_after_build_gb": memory_gb().get("VmRSS")}


def set_search(index, kind: str, value: int) -> dict:
    import faiss
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(int(value), ivf.nlist)
        return {"nprobe": int(ivf.nprobe)}
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(value)
        return {"ef_search": int(value)}
    return {}


def search_figures(index, queries: np.ndarray, k: int, latency_queries: int, exact):
    """Single-query latency, batched throughput, recall@k against ``exact`` (ids)."""
    times = []
    for q in queries[:latency_queries]:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    batched = time.perf_counter() - t
    info = {"latency_ms_median": 1e3 * float(np.median(times)),
            "latency_ms_p95": 1e3 * float(np.percentile(times, 95)),
            "latency_queries": len(times), "batch_queries_per_s": len(queries) / batched}
    reference = ids if exact is None else exact
    info["recall_at_k"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, reference)]))
    return info, ids


def measure_data(data: str, args, settings: dict, sweeps: dict) -> dict:
    stream = Stream(data, args.dim, args.seed, args.clusters, args.spread)
    queries = stream.take(1, args.queries)
    out, exact = {}, None
    kinds = ["flat"] + [k for k in args.kinds if k != "flat"]   # the exact reference first
    for kind in kinds:
        index, seconds, mem = build(kind, stream, args.n, settings)
        info = {"build_s": seconds, "index_bytes": index_bytes(index, kind), **mem, "settings": []}
        if kind == "ivf":
            info["nlist"] = int(__import__("faiss").extract_index_ivf(index).nlist)
        if kind == "hnsw":
            info.update(M=int(settings["hnsw_m"]),
                        ef_construction=int(__import__("faiss").downcast_index(index).hnsw.efConstruction))
        latency_n = args.flat_latency_queries if kind == "flat" else args.latency_queries
        for value in tqdm(sweeps.get(kind, [None]), desc=f"{data}: search {kind}", leave=False):
            setting = set_search(index, kind, value) if value is not None else {}
            figures, ids = search_figures(index, queries, args.k, latency_n, exact)
            if kind == "flat":
                exact = ids
            info["settings"].append({**setting, **figures})
        info["peak_rss_gb"] = memory_gb().get("VmHWM")   # over the build and the searches
        del index
        out[kind] = info
        print(f"{data} {kind}: built in {seconds:.1f} s", flush=True)
    return out


def table(results: dict) -> str:
    lines = [f"{results['n']} x {results['dim']}-d unit vectors, {results['queries']} queries, "
             f"k = {results['k']}, {results['threads']} FAISS thread(s)",
             "| data | index | search setting | build s | index GB | peak RSS GB | "
             "latency ms (median / p95) | batched queries/s | recall@10 |",
             "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for data, kinds in results["data"].items():
        for kind, i in kinds.items():
            for s in i["settings"]:
                name = (f"nlist {i['nlist']}, nprobe {s['nprobe']}" if kind == "ivf" else
                        f"M {i['M']}, efSearch {s['ef_search']}" if kind == "hnsw" else "exact")
                peak = i.get("peak_rss_gb")
                lines.append(
                    f"| {data} | {kind} | {name} | {i['build_s']:.1f} | "
                    f"{i['index_bytes'] / 2**30:.2f} | {peak if peak is None else f'{peak:.1f}'} | "
                    f"{s['latency_ms_median']:.2f} / {s['latency_ms_p95']:.2f} | "
                    f"{s['batch_queries_per_s']:.0f} | {s['recall_at_k']:.3f} |")
    return "\n".join(lines)


def picture(results: dict, path: str) -> None:
    """recall@k against median single-query latency, one panel per data set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    datas = list(results["data"])
    fig, axes = plt.subplots(1, len(datas), figsize=(5.5 * len(datas), 4.2), squeeze=False)
    for ax, data in zip(axes[0], datas):
        for kind, i in results["data"][data].items():
            xs = [s["latency_ms_median"] for s in i["settings"]]
            ys = [s["recall_at_k"] for s in i["settings"]]
            ax.plot(xs, ys, "o-" if len(xs) > 1 else "s", label=kind)
            for s, x, y in zip(i["settings"], xs, ys):
                tag = s.get("nprobe", s.get("ef_search"))
                if tag is not None:
                    ax.annotate(str(tag), (x, y), textcoords="offset points", xytext=(4, -10),
                                fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("single-query latency, median (ms)")
        ax.set_ylabel(f"recall@{results['k']} vs exact")
        ax.set_title(f"{data}: {results['n']:,} x {results['dim']}-d")
        ax.grid(alpha=0.3)
        ax.legend(title="index (labels: nprobe / efSearch)", fontsize=8, title_fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)


def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(text)
    return values


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="archived embeddings")
    p.add_argument("--dim", type=int, default=768,
                   help="embedding dimension (default: %(default)s)")
    p.add_argument("--data", default="random,clustered", help=f"comma list of {', '.join(DATA)}")
    p.add_argument("--clusters", type=int, default=5000, help="clustered: number of centres")
    p.add_argument("--spread", type=float, default=0.5, help="clustered: noise norm around a centre")
    p.add_argument("--queries", type=int, default=1000,
                   help="queries of the batched search and recall (default: %(default)s)")
    p.add_argument("--latency-queries", type=int, default=100,
                   help="one-at-a-time searches timed for the latency (default: %(default)s)")
    p.add_argument("--flat-latency-queries", type=int, default=30,
                   help="one-at-a-time searches of the exact index (each scans every vector)")
    p.add_argument("--k", type=int, default=10,
                   help="neighbours searched; recall@k is against the exact top k "
                        "(default: %(default)s)")
    p.add_argument("--kinds", default="flat,ivf", help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--ivf-nlist", type=int, default=1024,
                   help="ivf: number of lists (centroids) (default: %(default)s)")
    p.add_argument("--ivf-nprobe", default="1,4,16,64,256", help="comma list searched")
    p.add_argument("--ivf-train", type=int, default=65536, help="vectors IVF is trained on")
    p.add_argument("--hnsw-m", type=int, default=32,
                   help="hnsw: graph links per vector, M (default: %(default)s)")
    p.add_argument("--hnsw-ef-search", default="16,64,128,256", help="comma list searched")
    p.add_argument("--threads", type=int, default=1,
                   help="FAISS OpenMP threads (on a shared machine more threads busy-wait)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic vectors (default: %(default)s)")
    p.add_argument("--out", default="history_index.json",
                   help="JSON report to write (default: %(default)s)")
    p.add_argument("--png", default=None, help="recall/latency picture (default: --out with .png)")
    args = p.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    datas = [d for d in args.data.split(",") if d]
    try:
        sweeps = {"ivf": int_list(args.ivf_nprobe), "hnsw": int_list(args.hnsw_ef_search)}
    except ValueError:
        sweeps = None
    bad = [k for k in args.kinds if k not in KINDS] + [d for d in datas if d not in DATA]
    if (bad or not args.kinds or not datas or sweeps is None or min(
            args.n, args.dim, args.queries, args.k, args.clusters, args.latency_queries,
            args.flat_latency_queries) < 1 or args.k > args.n):
        print(f"error: --kinds must name some of {', '.join(KINDS)}, --data some of "
              f"{', '.join(DATA)} (unknown: {bad}); --ivf-nprobe and --hnsw-ef-search comma lists "
              f"of positive integers; --n, --dim, --queries, --k (at most --n), --clusters and the "
              f"latency counts positive", file=sys.stderr)
        return 2
    return exit_status(lambda: run(args, datas, sweeps))


def run(args, datas: list[str], sweeps: dict) -> int:
    """Measures every data and index kind, prints the table, writes the JSON and the
    picture; the exit status."""
    png = args.png or os.path.splitext(args.out)[0] + ".png"
    check_json_file(args.out, "--out")
    check_picture_file(png, "--png")
    try:
        import faiss
    except ImportError:
        print("error: the benchmark needs FAISS: pip install -e '.[apps]'", file=sys.stderr)
        return 1
    faiss.omp_set_num_threads(args.threads)
    settings = dict(ivf_nlist=args.ivf_nlist, ivf_nprobe=sweeps["ivf"][0], hnsw_m=args.hnsw_m,
                    hnsw_ef_search=sweeps["hnsw"][0], train_size=args.ivf_train)
    results = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
               "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
               "clusters": args.clusters, "spread": args.spread, "seed": args.seed,
               "vectors_gb": args.n * args.dim * 4 / 2**30,
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "data": {}}
    for data in datas:
        results["data"][data] = measure_data(data, args, settings, sweeps)
    results["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(table(results))
    write_text_atomic(args.out, strict_json.dumps(results, indent=1, sort_keys=True) + "\n")
    picture(results, png)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    run_command(main)
