"""Time and peak memory of chunked re-ID evaluation on random embeddings.

Shows that memory is bounded by ``chunk_size x gallery``, not by
``queries x gallery`` (100k x 100k float32 would be 40 GB):

    python benchmarks/eval_scale.py --queries 100000 --gallery 100000 --dim 768 \\
        --chunk-size 256 2048

Each (queries, chunk size) run happens in a fresh child process, so its peak
resident set size is its own; with ``--repeats`` the variants are interleaved
(A B A B ...) and the median time is reported. The child first evaluates a tiny
problem, so that the JAX runtime's start-up memory is in the base, not in what
the evaluation adds; then it resets its peak (Linux VmHWM, as
``history_index.py``) and prints the RSS after the embeddings exist ("base")
and the peak over the evaluation; "peak - base" is what the evaluation added,
to compare with the estimate ``3 x chunk x gallery x 4 bytes`` (two score
blocks in flight plus one sorted copy; see ``mami_jax/evaluate/retrieval.py``).
Where the peak cannot be reset it is the process's ``ru_maxrss``, start-up
included.

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
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, REPO)

from benchmarks.child_report import child_report  # noqa: E402
from mami_jax.runtime.cli_parser import OneLineErrorParser, whole_at_least  # noqa: E402
from mami_jax.runtime.error_line import exit_status  # noqa: E402
from mami_jax.runtime.interrupts import run_command  # noqa: E402


def child(args) -> None:
    import numpy as np

    from benchmarks.history_index import memory_gb, reset_peak
    from mami_jax.evaluate.retrieval import chunked_reid_metrics

    rng = np.random.default_rng(args.seed)
    query = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    qp = rng.integers(0, args.patients, args.queries)
    gp = rng.integers(0, args.patients, args.gallery)
    qs = rng.integers(0, args.studies, args.queries)
    gs = rng.integers(0, args.studies, args.gallery)
    # The first call starts the JAX runtime (tens of MB): a tiny problem first, so that
    # the peak below is what the evaluation of this size adds.
    tiny = np.ones((2, args.dim), np.float32)
    chunked_reid_metrics(tiny, tiny, [0, 1], [0, 1], [0, 0], [1, 1], chunk_size=1,
                         metric=args.metric)
    peak_is_reset = reset_peak()
    base = memory_gb().get("VmRSS", float("nan")) * 1024
    start = time.perf_counter()
    m = chunked_reid_metrics(query, gallery, qp, gp, qs, gs, chunk_size=args.chunk_size,
                             metric=args.metric)
    seconds = time.perf_counter() - start
    peak = (memory_gb().get("VmHWM", float("nan")) * 1024 if peak_is_reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
    print(json.dumps({
        "queries": args.queries, "gallery": args.gallery, "chunk_size": args.chunk_size,
        "seconds": seconds, "base_rss_mb": base, "peak_rss_mb": peak,
        "rank1": m["rank1"], "mAP": m["mAP"], "num_valid_queries": m["num_valid_queries"],
        "num_skipped_queries": m["num_skipped_queries"]}))


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=whole_at_least(1), nargs="+", default=[100_000],
                        help="query embeddings; several values, one run each "
                             "(default: %(default)s)")
    parser.add_argument("--gallery", type=whole_at_least(1), default=100_000,
                        help="gallery embeddings (default: %(default)s)")
    parser.add_argument("--dim", type=whole_at_least(1), default=768,
                        help="embedding dimension (default: %(default)s)")
    parser.add_argument("--chunk-size", type=whole_at_least(1), nargs="+", default=[256, 2048],
                        help="queries scored at a time; several values, one run each "
                             "(default: %(default)s)")
    parser.add_argument("--patients", type=whole_at_least(1), default=20_000,
                        help="patient ids, drawn uniformly for the embeddings "
                             "(default: %(default)s)")
    parser.add_argument("--studies", type=whole_at_least(1), default=3,
                        help="study ids per patient, drawn uniformly; a query's own study is "
                             "excluded (default: %(default)s)")
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                        help="retrieval distance (default: %(default)s)")
    parser.add_argument("--repeats", type=whole_at_least(1), default=1,
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
            row = child_report(cmd, f"the child of --queries {q} --chunk-size {c}", env)
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
