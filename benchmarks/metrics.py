"""Speed and memory of the retrieval metrics at QuickDraw's size (not a test).

Random 384-d features, 92,291 sketch queries against 54,151 photos in 30 classes of uneven size
(QuickDraw's unseen split). Measures the full metric set (mAP@all, mAP@200, P@100, P@200) of
:func:`tvt.eval.metrics.retrieval_metrics`, and the plain per-query reference (a stable argsort
of every score row) on a subsample of queries, extrapolated to all queries; checks that the two
agree on the subsample. Each measurement runs in a fresh subprocess, so the peak RSS
(``ru_maxrss``, which sees torch's allocations) belongs to it alone.

    python benchmarks/metrics.py                       # full size, a few minutes
    python benchmarks/metrics.py --queries 5000 --ref-queries 100
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

import numpy as np


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random features and labels; class frequencies vary by a factor of ~3, as in the real splits."""
    rng = np.random.default_rng(args.seed)
    weights = rng.uniform(0.5, 1.5, args.classes)
    weights /= weights.sum()
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    g = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    ql = rng.choice(args.classes, args.queries, p=weights)
    gl = rng.choice(args.classes, args.gallery, p=weights)
    return q, ql, g, gl


def ref_subset(args: argparse.Namespace) -> np.ndarray:
    """Indices of the queries checked against the reference."""
    rng = np.random.default_rng(args.seed + 1)
    return np.sort(rng.choice(args.queries, min(args.ref_queries, args.queries), replace=False))


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from tvt.eval.metrics import reference_metrics, retrieval_metrics, score_matrix

    torch.set_num_threads(args.threads)
    q, ql, g, gl = make_data(args)
    sub = ref_subset(args)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.worker == "fast":
        res = retrieval_metrics(q, ql, g, gl, chunk=args.chunk, return_per_query=True, progress=args.progress)
        n = args.queries
    else:
        res = reference_metrics(score_matrix(q[sub], g), ql[sub], gl)
        n = len(sub)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    per_query = {k: np.asarray(v)[sub if args.worker == "fast" else slice(None)].tolist()
                 for k, v in res["per_query"].items()}
    metrics = {k: v for k, v in res.items() if k != "per_query"}
    print(json.dumps(dict(seconds=seconds, cpu_seconds=cpu, queries=n, rss_kb=usage.ru_maxrss,
                          data_rss_kb=usage0.ru_maxrss, metrics=metrics, per_query=per_query)))


def measure(kind: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--worker", kind], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{kind} worker failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=92291)
    p.add_argument("--gallery", type=int, default=54151)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=30)
    p.add_argument("--ref-queries", type=int, default=300)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--worker", choices=["fast", "ref"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    argv = [a for a in sys.argv[1:]]
    fast_runs = [measure("fast", argv) for _ in range(args.repeats)]
    ref = measure("ref", argv)
    fast = fast_runs[0]
    t_fast = statistics.median(r["seconds"] for r in fast_runs)
    t_ref_full = ref["seconds"] * args.queries / ref["queries"]
    diff = max(float(np.max(np.abs(np.asarray(fast["per_query"][k]) - np.asarray(v))))
               for k, v in ref["per_query"].items())
    gb = 1024**2  # ru_maxrss is in KiB on Linux
    print(f"{args.queries} queries x {args.gallery} gallery, {args.dim}-d, {args.classes} classes, "
          f"{args.threads} threads; metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in fast["metrics"].items()
                                                          if isinstance(v, float)))
    print(f"reference check on {ref['queries']} queries: max |per-query difference| = {diff:.2e}"
          f" ({'identical' if diff <= 1e-12 else 'MISMATCH'})\n")
    cpu_ref_full = ref["cpu_seconds"] * args.queries / ref["queries"]
    print("| method | queries | time (s) | time for all queries (s) | CPU time, all queries (s) | peak RSS (GB) "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|")
    print(f"| retrieval_metrics (median of {args.repeats}) | {args.queries} | {t_fast:.1f} | {t_fast:.1f} "
          f"| {fast['cpu_seconds']:.0f} | {fast['rss_kb'] / gb:.2f} | {t_ref_full / t_fast:.1f}x |")
    print(f"| per-query reference (stable argsort) | {ref['queries']} | {ref['seconds']:.1f} | {t_ref_full:.0f} "
          f"(extrapolated) | {cpu_ref_full:.0f} (extrapolated) | {ref['rss_kb'] / gb:.2f} | 1.0x |")
    print(f"\n(input data alone: {fast['data_rss_kb'] / gb:.2f} GB RSS; load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
