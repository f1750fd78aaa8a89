"""The history archive's vector search at hospital scale: build time, memory, query
latency and recall of FAISS index kinds on random embeddings.

    nice -n 10 python benchmarks/history_index.py --n 1000000 --dim 768 \\
        --kinds flat,ivf,hnsw --out /tmp/history_index.json

Embeddings are Gaussian, L2-normalised (as ``mami_jax.apps.history.archive`` stores
them), searched by inner product with ``make_index`` of that module, so the kinds and
settings are the archive's. For each kind: build time (training, for IVF, plus adding
every vector), index memory (the serialised index's size: vectors plus lists or graph),
the process's peak resident memory so far, single-query latency (median and 95th
percentile over ``--latency-queries`` one-at-a-time searches of k = 10), batched
throughput over ``--queries`` queries, and recall@10 against the exact (``flat``)
top 10 of the same queries. Random vectors have no cluster structure, the hardest case
for approximate search: recall on real embeddings is higher at the same settings.
Prints a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mami_jax.apps.history.archive import KINDS, make_index, normalized  # noqa: E402
from mami_jax.runtime.atomic_files import write_text_atomic  # noqa: E402


def random_unit(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out[start:stop] = normalized(rng.standard_normal((stop - start, dim), dtype=np.float32))
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def measure(kind: str, data: np.ndarray, queries: np.ndarray, settings: dict, k: int,
            latency_queries: int, chunk: int = 65536):
    import faiss
    t0 = time.perf_counter()
    train = data[np.random.default_rng(1).choice(len(data), min(len(data), settings["train_size"]),
                                                 replace=False)] if kind == "ivf" else data[:0]
    index = make_index(kind, data.shape[1], settings, train)
    for start in tqdm(range(0, len(data), chunk), desc=f"build {kind}", unit="chunk",
                      leave=False):
        index.add(data[start:start + chunk])
    build = time.perf_counter() - t0
    memory = len(faiss.serialize_index(index))
    times = []
    for q in queries[:latency_queries]:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, ids = index.search(queries, k)
    batched = time.perf_counter() - t
    info = {"build_s": build, "index_bytes": memory, "peak_rss_gb": peak_rss_gb(),
            "latency_ms_median": 1e3 * float(np.median(times)),
            "latency_ms_p95": 1e3 * float(np.percentile(times, 95)),
            "batch_queries_per_s": len(queries) / batched}
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        info.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
    if kind == "hnsw":
        info.update(M=int(settings["hnsw_m"]), ef_search=int(index.hnsw.efSearch))
    del index
    return info, ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="archived embeddings")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", default="flat,ivf,hnsw", help=f"comma list of {', '.join(KINDS)}")
    p.add_argument("--ivf-nlist", type=int, default=1024)
    p.add_argument("--ivf-nprobe", type=int, default=16)
    p.add_argument("--ivf-train", type=int, default=65536, help="vectors IVF is trained on")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--hnsw-ef-search", type=int, default=128)
    p.add_argument("--threads", type=int, default=1,
                   help="FAISS OpenMP threads (on a shared machine more threads busy-wait)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="history_index.json")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or args.n < 1 or args.queries < 1:
        print(f"error: --kinds must name some of {', '.join(KINDS)} (got {args.kinds!r}) and "
              f"--n, --queries be positive", file=sys.stderr)
        return 2
    import faiss
    faiss.omp_set_num_threads(args.threads)
    settings = dict(ivf_nlist=args.ivf_nlist, ivf_nprobe=args.ivf_nprobe, hnsw_m=args.hnsw_m,
                    hnsw_ef_search=args.hnsw_ef_search, train_size=args.ivf_train)
    data = random_unit(args.n, args.dim, args.seed)
    queries = random_unit(args.queries, args.dim, args.seed + 1)
    results = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
               "threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
               "data_gb": data.nbytes / 2**30, "kinds": {}}
    exact = None
    for kind in ["flat"] + [k for k in kinds if k != "flat"]:  # exact first: the reference
        info, ids = measure(kind, data, queries, settings, args.k, args.latency_queries)
        if kind == "flat":
            exact = ids
        info["recall_at_k"] = float(np.mean([len(set(a) & set(b)) / args.k
                                             for a, b in zip(ids, exact)]))
        if kind in kinds:
            results["kinds"][kind] = info
        print(f"{kind}: built in {info['build_s']:.1f} s", flush=True)
    lines = [f"{args.n} x {args.dim}-d unit vectors, {args.queries} queries, k = {args.k}, "
             f"{results['threads']} threads",
             "| index | build s | index GB | peak RSS GB | latency ms (median / p95) | "
             "batched queries/s | recall@10 |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for kind, i in results["kinds"].items():
        lines.append(f"| {kind} | {i['build_s']:.1f} | {i['index_bytes'] / 2**30:.2f} | "
                     f"{i['peak_rss_gb']:.1f} | {i['latency_ms_median']:.2f} / "
                     f"{i['latency_ms_p95']:.2f} | {i['batch_queries_per_s']:.0f} | "
                     f"{i['recall_at_k']:.3f} |")
    print("\n".join(lines))
    write_text_atomic(args.out, json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
