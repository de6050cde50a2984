"""Latency, recall, memory and build time of every search backend, in one run (not a test).

For each collection size, L2-normalised vectors (default 384-d, the ViT-S width) are searched
with 100 query vectors of the same distribution. Exact torch search gives the ground truth. IVF
and HNSW are calibrated (nprobe / efSearch raised until recall@k reaches ``--target`` on 100
*other* queries); compact-exact calibrates its shortlist on the index itself, as in the product,
and reads its float32 rows from a memory-mapped ``.npy`` file, as in the product.

Latency is the median over single-query calls (what a person waiting on the web page sees) and
the median of ``--repeats`` calls with all 100 queries (per query). Memory is the bytes of the
searchable structure in RAM (``faiss.serialize_index`` size; the float32 matrix for torch).
The floor of each storage is the time of one pass over an array of that many bytes (a torch sum,
``--threads`` threads): what a full scan of that storage costs at least on this machine. Each
single-query time is also given as a multiple of its floor.

HNSW is built in blocks of rows with ``--hnsw-m`` / ``--hnsw-efc`` (defaults M 32,
efConstruction 80, as the product builds it; efConstruction 40 builds ~2x faster but its graph
reached recall@100 0.92 at 1M, README); a build that passes ``--hnsw-budget`` seconds is stopped
and its progress (rows added, seconds) is reported in place of timings. The machine may be shared: each row records the 1-minute load average when its
timings ended, and the run prints the load average at its start and end.

``--data clustered`` (default) draws vectors around 1000 centres with cosine ~0.7 to their centre,
closer to real image embeddings; ``--data random`` is i.i.d. directions, the hardest case for
approximate search.

    python benchmarks/search.py --sizes 1000000                   # the README table
    python benchmarks/search.py --sizes 100000 --backends exact compact-exact
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# compact-exact:PQ192x4fs is the same path over 2 dims per sub-quantiser (twice the bytes of the
# default codes), kept to show the measured reason for the default. HNSW last: slowest build.
ALL = ["exact", "faiss-flat", "faiss-sq8", "faiss-ivf", "compact-exact", "compact-exact:PQ192x4fs", "faiss-hnsw"]
HNSW_BLOCK = 50_000  # rows added between checks of the HNSW build budget


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


def time_batch(backend, queries: np.ndarray, k: int, repeats: int) -> float:
    """ms per query when all queries go in one call (median of ``repeats`` calls)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        backend.search(queries, k)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / len(queries)


def pass_ms(nbytes: int, repeats: int = 5) -> float:
    """The floor: median ms of one pass (a torch sum) over a fresh array of ``nbytes`` bytes."""
    import torch

    x = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
    x.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def memory_bytes(backend, db: np.ndarray) -> int:
    import faiss

    if backend.name == "exact":
        return int(db.nbytes)
    if backend.name == "compact-exact":
        return backend.memory_bytes()
    return int(faiss.serialize_index(backend.index).nbytes)


def build(name: str, db: np.ndarray, rows_file: Path, cal: tuple[np.ndarray, np.ndarray], args: argparse.Namespace):
    """The backend ``name`` built and calibrated as the product does."""
    from tvt.search.backends import ExactBackend, _exact_top, build_faiss, calibrate, calibration_queries, make_backend
    from tvt.search.compact import CompactExactBackend, calibrate_shortlist

    if name == "exact":
        return ExactBackend(db)
    if name == "compact-exact":
        return make_backend("compact-exact", np.load(rows_file, mmap_mode="r"), k_calibrate=args.k)
    if name.startswith("compact-exact:"):  # the same path over another coarse code (e.g. PQ192x4fs, SQ8)
        rows = np.load(rows_file, mmap_mode="r")
        backend = CompactExactBackend(rows, spec=name.split(":", 1)[1])
        q = calibration_queries(rows)
        calibrate_shortlist(backend, q, _exact_top(rows, q, args.k)[1], args.k)
        return backend
    if name == "faiss-hnsw":
        backend = build_hnsw(db, args)
        if backend is None:
            return None
    else:
        backend = build_faiss(name, db)
    if name in ("faiss-ivf", "faiss-hnsw"):
        calibrate(backend, cal[0], cal[1], args.k, args.target)
    return backend


def build_hnsw(db: np.ndarray, args: argparse.Namespace):
    """The HNSW backend built block by block; None (progress printed) when past ``--hnsw-budget``."""
    from tvt.search.backends import build_faiss

    backend = build_faiss("faiss-hnsw", db[:0], hnsw_degree=args.hnsw_m, ef_construction=args.hnsw_efc)
    start = time.perf_counter()
    for s in range(0, len(db), HNSW_BLOCK):
        backend.index.add(np.ascontiguousarray(db[s: s + HNSW_BLOCK]))
        elapsed = time.perf_counter() - start
        print(f"faiss-hnsw: {backend.index.ntotal:,} of {len(db):,} rows in {elapsed:.0f} s "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        if elapsed > args.hnsw_budget and backend.index.ntotal < len(db):
            args.hnsw_progress = f"{backend.index.ntotal:,} of {len(db):,} rows in {elapsed:.0f} s"
            return None
    backend.size = int(backend.index.ntotal)
    return backend


def bench_size(n: int, args: argparse.Namespace, floors: dict[int, float]) -> list[dict]:
    from tvt.search.backends import ExactBackend, recall_at_k

    rng = np.random.default_rng(args.seed)
    centres = make_vectors(1000, args.dim, "random", rng, None) if args.data == "clustered" else None
    db = make_vectors(n, args.dim, args.data, rng, centres)
    test_q = make_vectors(args.queries, args.dim, args.data, rng, centres)
    cal_q = make_vectors(args.queries, args.dim, args.data, rng, centres)
    exact = ExactBackend(db)
    _, truth = exact.search(test_q, args.k)
    _, cal_truth = exact.search(cal_q, args.k)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "embeddings.npy"
        np.save(rows_file, db)
        for name in args.backends:
            if name == "faiss-hnsw" and n > args.hnsw_max:
                print(f"skipping faiss-hnsw at {n:,} (> --hnsw-max {args.hnsw_max:,})", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            backend = build(name, db, rows_file, (cal_q, cal_truth), args)
            build_s = time.perf_counter() - t0
            if backend is None:  # HNSW past its build budget: its progress is the result
                rows.append({"n": n, "backend": name, "stopped": args.hnsw_progress, "load": round(os.getloadavg()[0], 1)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                continue
            _, ids = backend.search(test_q, args.k)
            nbytes = memory_bytes(backend, db)
            if nbytes not in floors:
                floors[nbytes] = pass_ms(nbytes)
            row = {
                "n": n, "backend": name, "build_s": round(build_s, 1),
                "params": {k: v for k, v in backend.params.items() if not k.startswith(("recall", "calibrated", "k_cal"))},
                "memory_mb": round(nbytes / 1e6, 1), "floor_ms": round(floors[nbytes], 2),
                "recall": round(recall_at_k(ids, truth, args.k), 4),
                "ms_single": round(time_single(backend, test_q, args.k, args.budget), 2),
                "ms_batch": round(time_batch(backend, test_q, args.k, args.repeats), 3),
                "load": round(os.getloadavg()[0], 1),
            }
            row["x_floor_single"] = round(row["ms_single"] / floors[nbytes], 2)
            row["x_floor_batch"] = round(row["ms_batch"] * len(test_q) / floors[nbytes], 2)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if backend is not exact:
                del backend
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"| vectors | backend | parameters | build (s) | memory (MB) | recall@{args.k} | ms, 1 query per call "
             f"(× floor) | ms/query, {args.queries} per call (batch × floor) | floor: one pass (ms) | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "stopped" in r:
            lines.append(f"| {r['n']:,} | {r['backend']} | build stopped at {r['stopped']} | - | - | - | - | - | - | {r['load']} |")
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['n']:,} | {r['backend']} | {params} | {r['build_s']} | {r['memory_mb']:,} | "
                     f"{r['recall']:.4f} | {r['ms_single']:.2f} ({r['x_floor_single']:.2f}×) | "
                     f"{r['ms_batch']:.3f} ({r['x_floor_batch']:.2f}×) | {r['floor_ms']:.2f} | {r['load']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--data", choices=["random", "clustered"], default="clustered")
    p.add_argument("--backends", nargs="+", default=ALL)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--target", type=float, default=0.999, help="recall@k IVF and HNSW are tuned to")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size (slow build)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree M")
    p.add_argument("--hnsw-efc", type=int, default=80, help="HNSW efConstruction")
    p.add_argument("--hnsw-budget", type=float, default=1200.0, help="stop an HNSW build after this many seconds")
    p.add_argument("--budget", type=float, default=10.0, help="seconds for the one-query timing per backend")
    p.add_argument("--repeats", type=int, default=3, help="calls with all queries, median taken")
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
        args.backends = [b for b in args.backends if b == "exact"]
        fver = "not installed"
    load0 = os.getloadavg()[0]
    floors: dict[int, float] = {}
    rows = [r for n in args.sizes for r in bench_size(n, args, floors)]
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
