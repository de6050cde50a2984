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


def voc_ap(rel: np.ndarray, n_rel: int, k: int | None) -> float:
    """AP@k of one ranked 0/1 list in the classic VOC code form (spec §6.2 semantics).

    Recall/precision arrays with sentinels, the precision envelope taken by a backward *Python*
    loop, then the sum over recall steps: the way VOC-style evaluation code (and the official
    TVT/SAKE evaluation) writes it. Equal to :func:`average_precision_reference` by construction.
    """
    big_k = len(rel) if k is None else min(k, len(rel))
    r = n_rel if k is None else min(big_k, n_rel)
    if r == 0:
        return 0.0
    tp = np.cumsum(rel[:big_k])
    rec, prec = tp / r, tp / np.arange(1, big_k + 1)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_metrics(scores: np.ndarray, ql: np.ndarray, gl: np.ndarray) -> dict:
    """Per-query loop, one metric at a time with its own (numpy default) argsort, as evaluation
    code does when each metric is its own function and mAP@all and mAP@200 are separate runs."""
    per_query = {name: np.zeros(len(ql)) for name in ("mAP@all", "mAP@200", "P@100", "P@200")}
    t_all = 0.0
    for i, label in enumerate(ql):
        t0 = time.perf_counter()
        rel = (gl[np.argsort(-scores[i])] == label).astype(np.int64)
        per_query["mAP@all"][i] = voc_ap(rel, int((gl == label).sum()), None)
        t_all += time.perf_counter() - t0
        rel = (gl[np.argsort(-scores[i])] == label).astype(np.int64)
        per_query["mAP@200"][i] = voc_ap(rel, int((gl == label).sum()), 200)
        for k in (100, 200):
            rel = (gl[np.argsort(-scores[i])] == label).astype(np.int64)
            per_query[f"P@{k}"][i] = rel[:k].sum() / min(k, len(rel))
    out = {k: float(v.mean()) for k, v in per_query.items()}
    return {**out, "per_query": per_query, "ap_all_seconds": t_all}


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from tvt.eval.metrics import retrieval_metrics, score_matrix
    from tvt.eval.metrics_reference import reference_metrics

    torch.set_num_threads(args.threads)
    q, ql, g, gl = make_data(args)
    sub = ref_subset(args)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.worker == "fast":
        res = retrieval_metrics(q, ql, g, gl, chunk=args.chunk, return_per_query=True, progress=args.progress)
        n = args.queries
    elif args.worker == "voc":
        sub = sub[: args.voc_queries]
        res = voc_metrics(score_matrix(q[sub], g), ql[sub], gl)
        n = len(sub)
    else:
        res = reference_metrics(score_matrix(q[sub], g), ql[sub], gl)
        n = len(sub)
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime
    per_query = {k: np.asarray(v)[sub if args.worker == "fast" else slice(None)].tolist()
                 for k, v in res["per_query"].items()}
    metrics = {k: v for k, v in res.items() if k not in ("per_query", "ap_all_seconds")}
    if "ap_all_seconds" in res:
        metrics["ap_all_seconds"] = res["ap_all_seconds"]
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
    p.add_argument("--voc-queries", type=int, default=100,
                   help="queries for the VOC-form loop (the first of the reference subsample; 0 = skip)")
    p.add_argument("--worker", choices=["fast", "ref", "voc"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    argv = [a for a in sys.argv[1:]]
    fast_runs = [measure("fast", argv) for _ in range(args.repeats)]
    ref = measure("ref", argv)
    voc = measure("voc", argv) if args.voc_queries > 0 else None
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
    if voc:
        t_voc_full = voc["seconds"] * args.queries / voc["queries"]
        cpu_voc_full = voc["cpu_seconds"] * args.queries / voc["queries"]
        sub_fast = {k: np.asarray(v)[: voc["queries"]] for k, v in fast["per_query"].items()}
        vdiff = max(float(np.max(np.abs(sub_fast[k] - np.asarray(v)))) for k, v in voc["per_query"].items())
        print(f"| per-query loop, VOC code form, one argsort per metric | {voc['queries']} | {voc['seconds']:.1f} "
              f"| {t_voc_full:.0f} (extrapolated) | {cpu_voc_full:.0f} (extrapolated) | {voc['rss_kb'] / gb:.2f} "
              f"| {t_ref_full / t_voc_full:.2f}x |")
        ms = 1000 * voc["metrics"]["ap_all_seconds"] / voc["queries"]
        print(f"\nretrieval_metrics vs the VOC-form loop: {t_voc_full / t_fast:.1f}x faster; the loop spends "
              f"{ms:.1f} ms per query on AP@all alone; max |difference| on its {voc['queries']} queries = {vdiff:.2e}")
    print(f"\n(input data alone: {fast['data_rss_kb'] / gb:.2f} GB RSS; load average at the end: "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
