"""Latency and recall of the search backends (not a test).

For each collection size, random L2-normalised vectors (default 384-d, the ViT-S width) are
searched with 100 random query vectors. Exact torch search gives the ground truth; each
approximate FAISS index is first calibrated (nprobe / efSearch raised until recall@k reaches the
target on 100 *other* queries of the same distribution), then measured on the test queries.
Latency is reported two ways: one query per call (what a person waiting on the web page sees,
median over the single calls) and a batch of 100 queries per call (per query). Torch and FAISS
use ``--threads`` threads.

``--data random`` (default) is i.i.d. Gaussian directions, the hardest case for approximate
search (no structure to exploit); ``--data clustered`` draws vectors around 1000 centres, closer
to real image embeddings.

    python benchmarks/search.py                                   # 10k, 100k, 1M, all backends
    python benchmarks/search.py --sizes 10000 --backends exact faiss-ivf
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def make_vectors(n: int, d: int, kind: str, rng: np.random.Generator, centres: np.ndarray | None) -> np.ndarray:
    """[n, d] float32 unit vectors, built in blocks to bound peak memory at 1M x 384."""
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = rng.standard_normal((m, d), dtype=np.float32)
        if kind == "clustered":
            x = centres[rng.integers(0, len(centres), m)] + x / np.sqrt(d)  # cos to its centre ~0.7
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s: s + m] = x
    return out


def time_single(backend, queries: np.ndarray, k: int, budget_s: float) -> float:
    """Median ms of one-query calls (at least 5 calls, more while within ``budget_s``)."""
    backend.search(queries[:1], k)  # warm-up
    times, start = [], time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        backend.search(q[None], k)
        times.append(time.perf_counter() - t)
        if len(times) >= 5 and time.perf_counter() - start > budget_s:
            break
    return 1000 * statistics.median(times)


def time_batch(backend, queries: np.ndarray, k: int) -> float:
    """ms per query when all queries go in one call (best of 2)."""
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        backend.search(queries, k)
        best = min(best, time.perf_counter() - t)
    return 1000 * best / len(queries)


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    from tvt.search.backends import ExactBackend, build_faiss, calibrate, recall_at_k

    rng = np.random.default_rng(args.seed)
    centres = make_vectors(1000, args.dim, "random", rng, None) if args.data == "clustered" else None
    db = make_vectors(n, args.dim, args.data, rng, centres)
    test_q = make_vectors(args.queries, args.dim, args.data, rng, centres)
    cal_q = make_vectors(args.queries, args.dim, args.data, rng, centres)
    exact = ExactBackend(db)
    _, truth = exact.search(test_q, args.k)
    _, cal_truth = exact.search(cal_q, args.k)
    rows = []
    for name in args.backends:
        if name == "faiss-hnsw" and n > args.hnsw_max:
            continue
        t0 = time.perf_counter()
        backend = exact if name == "exact" else build_faiss(name, db)
        if name in ("faiss-ivf", "faiss-hnsw"):
            calibrate(backend, cal_q, cal_truth, args.k, args.target)
        build_s = time.perf_counter() - t0
        _, ids = backend.search(test_q, args.k)
        row = {
            "n": n, "backend": name, "build_s": round(build_s, 1),
            "params": {k: v for k, v in backend.params.items() if not k.startswith("recall")},
            "recall": round(recall_at_k(ids, truth, args.k), 4),
            "ms_single": round(time_single(backend, test_q, args.k, args.budget), 2),
            "ms_batch": round(time_batch(backend, test_q, args.k), 2),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.sweep and name in ("faiss-ivf", "faiss-hnsw"):
            rows += sweep(backend, test_q, truth, args)
            backend.set_param(row["params"].get("nprobe", row["params"].get("efSearch")))
        if backend is not exact:
            del backend
    return rows


def sweep(backend, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Recall and latency of an approximate index at each search-time setting (the trade-off curve)."""
    from tvt.search.backends import recall_at_k

    knob = "nprobe" if backend.name == "faiss-ivf" else "efSearch"
    top = backend.params["nlist"] if knob == "nprobe" else 2048
    grid = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    values = [v for v in grid if v <= top and (knob == "nprobe" or v >= args.k)]
    rows = []
    for v in values:
        backend.set_param(v)
        _, ids = backend.search(queries, args.k)
        row = {"n": backend.size, "backend": backend.name + " (sweep)", "build_s": "",
               "params": {knob: v}, "recall": round(recall_at_k(ids, truth, args.k), 4),
               "ms_single": round(time_single(backend, queries, args.k, 2.0), 2),
               "ms_batch": round(time_batch(backend, queries, args.k), 2)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"| vectors | backend | parameters | build (s) | recall@{args.k} | ms/query, 1 per call | "
             f"ms/query, {args.queries} per call |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['n']:,} | {r['backend']} | {params} | {r['build_s']} | {r['recall']:.3f} | "
                     f"{r['ms_single']:.2f} | {r['ms_batch']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--data", choices=["random", "clustered"], default="random")
    p.add_argument("--backends", nargs="+", default=["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"])
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--target", type=float, default=0.95, help="recall@k the approximate indexes are tuned to")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size (slow build)")
    p.add_argument("--budget", type=float, default=10.0, help="seconds for the one-query timing per backend")
    p.add_argument("--sweep", action="store_true", help="also print recall/latency at every nprobe / efSearch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
        fver = faiss.__version__
    except ImportError:
        args.backends = [b for b in args.backends if not b.startswith("faiss")]
        fver = "not installed"
    load0 = os.getloadavg()[0]
    rows = [r for n in args.sizes for r in bench_size(n, args)]
    env = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, {args.threads} threads; "
           f"torch {torch.__version__}, faiss {fver}; {args.data} {args.dim}-d data; "
           f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(table(rows, args))
    print(f"\n{env}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
