"""Time and peak memory of chunked re-ID evaluation on random embeddings.

Shows that memory is bounded by ``chunk_size x gallery``, not by
``queries x gallery`` (100k x 100k float32 would be 40 GB):

    python benchmarks/eval_scale.py --queries 100000 --gallery 100000 --dim 768 \\
        --chunk-size 256 2048

Each (queries, chunk size) run happens in a fresh child process, so its peak
resident set size (``ru_maxrss``) is its own; with ``--repeats`` the variants
are interleaved (A B A B ...) and the median time is reported. The child
prints the RSS after the embeddings exist ("base") and the peak; "peak - base"
is what the evaluation added, to compare with the estimate
``3 x chunk x gallery x 4 bytes`` (two score blocks in flight plus one sorted
copy; see ``mami_jax/evaluate/retrieval.py``).

Embeddings are Gaussian, pids uniform over ``--patients`` patients and study
ids uniform over ``--studies`` studies per patient, so a query has about
``gallery / patients`` same-patient gallery items, a fraction of them in its
own study (excluded). ``--queries`` may be given several values to show that
memory does not grow with the number of queries.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, REPO)

from mami_jax.runtime.cli_parser import OneLineErrorParser  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    import numpy as np

    from mami_jax.evaluate.retrieval import chunked_reid_metrics

    rng = np.random.default_rng(args.seed)
    query = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    qp = rng.integers(0, args.patients, args.queries)
    gp = rng.integers(0, args.patients, args.gallery)
    qs = rng.integers(0, args.studies, args.queries)
    gs = rng.integers(0, args.studies, args.gallery)
    base = _rss_mb()
    start = time.perf_counter()
    m = chunked_reid_metrics(query, gallery, qp, gp, qs, gs, chunk_size=args.chunk_size,
                             metric=args.metric)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "queries": args.queries, "gallery": args.gallery, "chunk_size": args.chunk_size,
        "seconds": seconds, "base_rss_mb": base, "peak_rss_mb": peak,
        "rank1": m["rank1"], "mAP": m["mAP"], "num_valid_queries": m["num_valid_queries"],
        "num_skipped_queries": m["num_skipped_queries"]}))


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[100_000],
                        help="query embeddings; several values, one run each "
                             "(default: %(default)s)")
    parser.add_argument("--gallery", type=int, default=100_000,
                        help="gallery embeddings (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=768,
                        help="embedding dimension (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, nargs="+", default=[256, 2048],
                        help="queries scored at a time; several values, one run each "
                             "(default: %(default)s)")
    parser.add_argument("--patients", type=int, default=20_000,
                        help="patient ids, drawn uniformly for the embeddings "
                             "(default: %(default)s)")
    parser.add_argument("--studies", type=int, default=3,
                        help="study ids per patient, drawn uniformly; a query's own study is "
                             "excluded (default: %(default)s)")
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                        help="retrieval distance (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each variant, interleaved; the median time is reported "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random embeddings and ids (default: %(default)s)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def work():
        if args.child:
            args.queries, args.chunk_size = args.queries[0], args.chunk_size[0]
            child(args)
        else:
            run(args)
    return exit_status(work)


def run(args) -> None:
    """Runs every (queries, chunk size) variant in a child process; prints the table."""
    variants = [(q, c) for q in args.queries for c in args.chunk_size]
    results = {v: [] for v in variants}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for r in range(args.repeats):
        for q, c in variants:  # interleaved: A B A B ...
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--queries", str(q),
                   "--chunk-size", str(c), "--gallery", str(args.gallery), "--dim",
                   str(args.dim), "--patients", str(args.patients), "--studies",
                   str(args.studies), "--metric", args.metric, "--seed", str(args.seed)]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results[(q, c)].append(row)
            print(f"# repeat {r}: {json.dumps(row)}", flush=True)

    full_gb = max(args.queries) * args.gallery * 4 / 1e9
    print(f"\nqueries x gallery float32 matrix would be {full_gb:.1f} GB; "
          f"dim {args.dim}, metric {args.metric}, {args.patients} patients")
    print(f"{'queries':>8} {'chunk':>6} {'median s':>9} {'base MB':>8} {'peak MB':>8} "
          f"{'peak-base':>9} {'3*chunk*G*4 MB':>15} {'rank1':>7} {'mAP':>7} {'valid q':>8}")
    for (q, c), rows in results.items():
        t = statistics.median(r["seconds"] for r in rows)
        base = statistics.median(r["base_rss_mb"] for r in rows)
        peak = max(r["peak_rss_mb"] for r in rows)
        est = 3 * c * args.gallery * 4 / 2**20
        print(f"{q:>8} {c:>6} {t:>9.1f} {base:>8.0f} {peak:>8.0f} {peak - base:>9.0f} "
              f"{est:>15.0f} {rows[0]['rank1']:>7.4f} {rows[0]['mAP']:>7.4f} "
              f"{rows[0]['num_valid_queries']:>8}")


if __name__ == "__main__":
    run_command(main)
