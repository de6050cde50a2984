"""Compact exact search: a fast scan of compact codes, then exact re-ranking of a shortlist.

The index keeps only compact codes in memory: FAISS 4-bit product quantisation with SIMD
"fast scan", ``PQ{D/4}x4fs`` (4 dims per sub-quantiser: 48 bytes for a 384-d vector, 48 MB per
million photos) or ``PQ{D/2}x4fs`` (2 dims: 96 bytes). A query scans every code (no clustering,
so no part of the collection is ever skipped), keeps the ``shortlist`` best approximate scores,
and re-scores those rows exactly from the float32 embeddings, which may stay on disk
(``np.memmap``): only the shortlisted rows are read. The returned top-k is ordered by exact
score, ties by ascending id, like ``ExactBackend``.

The shortlist size is calibrated on the index itself (:func:`calibrate_shortlist`): probe
queries drawn from the collection are searched exactly, and the shortlist is the smallest that
holds the exact top-k of all of them (``target`` 1.0), times a safety margin. The layout is
chosen the same way (:func:`build_calibrated`): each is calibrated and the one with the least
work per query (codes scanned + rows re-ranked) is kept. Measured at 1M x 384-d on 2 cores
(README search section): the PQ96x4fs scan takes ~3 ms per query against ~11 ms for PQ192x4fs,
with a shortlist only ~1.3x longer, so large collections get the coarse codes; at 20k rows the
coarse codes need a shortlist of 14k rows against 3k, so small collections get the fine ones.
An 8-bit scalar quantiser (SQ8) decodes every code to floats and scans at ~140 ms.

The re-ranking computes float64 scores with ``np.einsum`` rather than a BLAS matrix-vector
product: a threaded OpenBLAS ``gemv`` over a ~1,500-row shortlist took ~8 ms on 2 shared cores
(against 0.3 ms), and its spinning threads doubled the time of the concurrent FAISS scan.

Incremental updates (:meth:`CompactExactBackend.add`) encode the new rows with the trained
quantiser; the shortlist grows in proportion to the collection, since the number of rows that
score close to a query grows with it. A query whose top-k touches the lowest approximate score of
its shortlist (a group of tied codes cut by the shortlist boundary) is searched again with a
shortlist twice as long, until the tie group fits or the whole collection is re-scored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tvt.search.base import SearchBackend, _import_faiss, _stable_order, save_faiss_cache

NAME = "compact-exact"
TRAIN_MAX = 65_536  # rows used to train the quantiser: more only slows the build
MIN_CODED = 256  # below this the whole collection is re-scored; no quantiser is trained
ADD_BLOCK = 131_072  # rows encoded at a time, so a memory-mapped collection is never copied whole
DEFAULT_MARGIN = 1.5


LAYOUTS = (4, 2)  # dims per 4-bit sub-quantiser tried by build_calibrated, cheapest scan first
# One float32 byte gathered for re-ranking costs about as much as ROW_COST code bytes scanned
# (1M x 384 on 2 shared cores: 48 MB of PQ96x4fs codes scanned in ~3 ms, 1,600 shortlisted rows
# = 2.5 MB gathered and re-scored in 1-2 ms, a ratio of 6-13; the choices measured at 1M and
# 20k rows are the same anywhere in that range). Only used to choose between code layouts.
ROW_COST = 6.0


def coarse_spec(dim: int, per_sub: int = 2) -> str:
    """The FAISS factory string of 4-bit PQ fast-scan codes with ``per_sub`` dims per
    sub-quantiser (fewer when ``dim`` is not a multiple of it)."""
    for p in range(per_sub, 0, -1):
        if dim % p == 0:
            return f"PQ{dim // p}x4fs"
    raise AssertionError("unreachable: every dim is divisible by 1")


def layout_specs(dim: int) -> list[str]:
    """The code layouts :func:`build_calibrated` chooses from, coarsest first."""
    return list(dict.fromkeys(coarse_spec(dim, p) for p in LAYOUTS))


class CompactExactBackend(SearchBackend):
    """``search(q, k)``: compact scan for a shortlist, exact float64 scores of its rows, top-k.

    ``embeddings`` [N, D] float32 (an ``np.memmap`` works: only shortlisted rows are read).
    ``shortlist`` is normally set by :func:`calibrate_shortlist`; until then it is 16 k.
    """

    def __init__(self, embeddings: np.ndarray, *, spec: str | None = None, index: Any = None,
                 params: dict[str, Any] | None = None, seed: int = 0) -> None:
        n, d = embeddings.shape
        spec = spec or coarse_spec(d)  # the finer layout, unless build_calibrated chose
        super().__init__(name=NAME, size=0, dim=d, params={"coarse": spec, **(params or {})})
        self._parts: list[np.ndarray] = []
        self._offsets: list[int] = []
        self.index = index
        if index is None and n >= MIN_CODED:
            self.index = _train(embeddings, spec, seed)
        self._append(embeddings, encode=index is None)

    # --------------------------------------------------------------- storage

    def add(self, embeddings: np.ndarray) -> None:
        """Append rows [M, D] (ids N..N+M-1); the shortlist grows with the collection."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"added embeddings have shape {embeddings.shape}, expected [M, {self.dim}]")
        if self.index is None and self.size + len(embeddings) >= MIN_CODED:
            self.index = _train(np.concatenate([self._rows(np.arange(self.size)), embeddings]),
                                self.params["coarse"], 0)
            self.index.add(np.ascontiguousarray(self._rows(np.arange(self.size)), dtype=np.float32))
        self._append(embeddings, encode=True)

    def _append(self, embeddings: np.ndarray, encode: bool) -> None:
        if encode and self.index is not None:
            for s in range(0, len(embeddings), ADD_BLOCK):
                self.index.add(np.ascontiguousarray(embeddings[s: s + ADD_BLOCK], dtype=np.float32))
        if len(embeddings):
            self._parts.append(embeddings)
            self._offsets.append(self.size)
            self.size += len(embeddings)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 rows [len(ids), D] of ascending ``ids``, read part by part in that order
        (sequential reads are kinder to a memory map)."""
        if len(self._parts) == 1:
            return np.asarray(self._parts[0][ids], dtype=np.float32)  # one gather, no second copy
        out = np.empty((len(ids), self.dim), np.float32)
        for part, off in zip(self._parts, self._offsets):
            lo, hi = np.searchsorted(ids, (off, off + len(part)))
            if hi > lo:
                out[lo:hi] = part[ids[lo:hi] - off]
        return out

    def query_cost(self, k: int) -> float:
        """Work of one top-``k`` query in scanned-byte units: every code, plus the shortlisted
        float32 rows weighted by :data:`ROW_COST`. Compares code layouts; it is not a time."""
        rows = self.shortlist_for(k) if self.index is not None else self.size
        codes = self.size * int(self.index.code_size) if self.index is not None else 0
        return float(codes + ROW_COST * rows * self.dim * 4)

    def memory_bytes(self) -> int:
        """Bytes of the in-memory compact index (codes + codebooks); the float32 rows are not counted."""
        if self.index is None:
            return 0
        faiss = _import_faiss()
        return int(faiss.serialize_index(self.index).nbytes)

    # --------------------------------------------------------------- search

    def shortlist_for(self, k: int) -> int:
        """Shortlist length for top-``k``: calibrated for ``k_calibrated``, scaled by k and by growth."""
        base = int(self.params.get("shortlist", 16 * k))
        k_cal = int(self.params.get("k_calibrated", k))
        grown = self.size / max(1, int(self.params.get("calibrated_n", self.size)))
        return min(self.size, max(k, math.ceil(base * max(1.0, k / k_cal) * max(1.0, grown))))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        length = self.shortlist_for(k)
        if self.index is None or length >= self.size:
            return self._rescore_all(q, k)
        approx, cand = self.index.search(q, length)
        out_s = np.empty((len(q), k), np.float32)
        out_i = np.empty((len(q), k), np.int64)
        for row in range(len(q)):
            out_s[row], out_i[row] = self._rerank_one(q[row], approx[row], cand[row], k, length)
        return out_s, out_i

    def _rerank_one(self, q: np.ndarray, approx: np.ndarray, cand: np.ndarray, k: int,
                    length: int) -> tuple[np.ndarray, np.ndarray]:
        while True:
            keep = cand >= 0
            by_id = np.argsort(cand[keep], kind="stable")  # ascending reads from the memory map
            ids, approx_kept = cand[keep][by_id], approx[keep][by_id]
            exact = _exact_scores(self._rows(ids), q[None])[0]
            order = np.lexsort((ids, -exact))[:k]
            # A tie group of codes may straddle the boundary: some members in, some out. Only a
            # result at the boundary score can be affected, so only then search again, longer.
            if length >= self.size or not (approx_kept[order] <= approx_kept.min()).any():
                return exact[order].astype(np.float32), ids[order]
            length = min(self.size, 2 * length)
            if length >= self.size:
                s, i = self._rescore_all(q[None], k)
                return s[0], i[0]
            a, c = self.index.search(q[None], length)
            approx, cand = a[0], c[0]

    def _rescore_all(self, q: np.ndarray, k: int, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """Exact float64 scores of every row, top-k per query (small collections, tie fallback)."""
        best_s = np.full((len(q), 0), -np.inf)
        best_i = np.zeros((len(q), 0), np.int64)
        for start in range(0, self.size, block):
            ids = np.arange(start, min(self.size, start + block))
            s = _exact_scores(self._rows(ids), q)
            best_s = np.concatenate([best_s, s], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
            best_s, best_i = _stable_order(best_s, best_i)
            best_s, best_i = best_s[:, :k], best_i[:, :k]
        return best_s.astype(np.float32), best_i


def _exact_scores(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float64 scores [Q, N] of float32 ``q`` [Q, D] against ``rows`` [N, D]. Each float32 product
    is exact in float64, so equal rows score equally and ties are real ties. ``np.einsum``, not a
    BLAS product: see the module docstring (threaded OpenBLAS gemv stalls a single query)."""
    return np.einsum("qd,nd->qn", q, rows, dtype=np.float64)


def _train(embeddings: np.ndarray, spec: str, seed: int) -> Any:
    """An untrained-then-trained FAISS index ``spec`` (inner product), trained on a row sample."""
    faiss = _import_faiss()
    n, d = embeddings.shape
    index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    rows = np.arange(n) if n <= TRAIN_MAX else np.sort(np.random.default_rng(seed).choice(n, TRAIN_MAX, replace=False))
    index.train(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    return index


def calibrate_shortlist(backend: CompactExactBackend, queries: np.ndarray, exact_ids: np.ndarray, k: int = 100,
                        target: float = 1.0, margin: float = DEFAULT_MARGIN) -> float:
    """Set ``backend``'s shortlist: the smallest length whose approximate ranking holds a fraction
    ``target`` of the exact top-``k`` (``exact_ids`` [Q, k]) of ``queries`` [Q, D], times ``margin``.

    Returns the fraction held at the chosen length (the calibration recall before the margin).
    """
    n = backend.size
    k = min(k, n)
    if backend.index is None or n == 0:
        backend.params.update(shortlist=n, k_calibrated=k, calibrated_n=n, **{f"recall@{k}": 1.0})
        return 1.0
    length = min(n, max(8 * k, 1024))
    while True:
        _, cand = backend.index.search(np.ascontiguousarray(queries, dtype=np.float32), length)
        positions = np.sort(np.concatenate([np.nonzero(np.isin(c, e[:k]))[0] for c, e in zip(cand, exact_ids)]))
        need = math.ceil(target * k * len(queries) - 1e-9)
        if len(positions) >= need or length >= n:
            break
        length = min(n, 4 * length)
    needed = int(positions[need - 1]) + 1 if 0 < need <= len(positions) else n
    # the fraction held at the unmargined length; re-scoring the whole collection is exact
    reached = float(np.searchsorted(positions, needed) / (k * len(queries))) if needed < n else 1.0
    shortlist = min(n, max(k, 64 * math.ceil(needed * margin / 64)))
    backend.params.update(shortlist=shortlist, k_calibrated=k, calibrated_n=n, margin=margin,
                          **{f"recall@{k}": round(reached, 4)})
    return reached


def build_calibrated(embeddings: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, k: int = 100,
                     target: float = 1.0) -> tuple[CompactExactBackend, float]:
    """The calibrated backend of the cheapest code layout (:data:`LAYOUTS`) for this collection.

    Coarser codes scan faster but need a longer shortlist where the exact top-k is not well
    separated from the rest (small or diffuse collections; measured: PQ96x4fs needs 14k of 20k
    rows where PQ192x4fs needs 3k, and 1.6k against 1.2k at 1M clustered rows). Each layout is
    calibrated and costed by :meth:`CompactExactBackend.query_cost`; a finer layout is skipped
    when scanning its codes alone costs more than the best so far. Returns (backend, recall).
    """
    best: tuple[CompactExactBackend, float] | None = None
    specs = layout_specs(embeddings.shape[1])
    for spec in specs if len(embeddings) >= MIN_CODED else specs[:1]:  # too small for codes: one backend
        if best is not None and len(embeddings) * _code_bytes(spec) >= best[0].query_cost(k):
            break
        backend = CompactExactBackend(embeddings, spec=spec)
        recall = calibrate_shortlist(backend, queries, exact_ids, k, target)
        if best is None or backend.query_cost(k) < best[0].query_cost(k):
            best = (backend, recall)
    assert best is not None  # layout_specs is never empty
    return best


def _code_bytes(spec: str) -> int:
    """Bytes per vector of a ``PQ{M}x4fs`` layout (4 bits per sub-quantiser)."""
    return (4 * int(spec[2:].split("x", 1)[0]) + 7) // 8


# ------------------------------------------------------------------- cache


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{NAME}-{key[:16] or 'nokey'}.faiss"


def load_cached(embeddings: np.ndarray, cache_dir: str | Path | None, key: str) -> CompactExactBackend | None:
    """The cached codes of exactly these embeddings (same checksum key), else None."""
    if cache_dir is None:
        return None
    path = cache_path(cache_dir, key)
    try:
        params = json.loads(path.with_suffix(".json").read_text())
        index = _import_faiss().read_index(str(path))
    except (OSError, RuntimeError, ValueError):
        return None  # missing or damaged: rebuilt, never trusted
    if int(index.ntotal) != len(embeddings) or int(index.d) != embeddings.shape[1]:
        return None
    if params.get("coarse") not in layout_specs(embeddings.shape[1]):
        return None  # codes of a layout no longer chosen from: rebuilt once
    return CompactExactBackend(embeddings, spec=params.get("coarse"), index=index, params=params)


def reuse_trained(embeddings: np.ndarray, cache_dir: str | Path | None) -> CompactExactBackend | None:
    """After an index update: the quantiser trained for an older version of the index (in the
    layout chosen then), emptied and refilled with the new rows, else None."""
    if cache_dir is None or len(embeddings) < MIN_CODED:
        return None
    for old in sorted(Path(cache_dir).glob(f"{NAME}-*.faiss")):
        try:
            params = json.loads(old.with_suffix(".json").read_text())
            index = _import_faiss().read_index(str(old))
        except (OSError, RuntimeError, ValueError):
            continue
        if int(index.d) == embeddings.shape[1] and params.get("coarse") in layout_specs(embeddings.shape[1]):
            index.reset()  # keeps the trained codebooks, drops the codes
            return CompactExactBackend(embeddings, spec=params["coarse"], index=_refill(index, embeddings),
                                       params={"coarse": params["coarse"], "reused_quantiser": True})
    return None


def _refill(index: Any, embeddings: np.ndarray) -> Any:
    for s in range(0, len(embeddings), ADD_BLOCK):
        index.add(np.ascontiguousarray(embeddings[s: s + ADD_BLOCK], dtype=np.float32))
    return index


def save_cached(backend: CompactExactBackend, cache_dir: str | Path | None, key: str) -> None:
    """Write codes + calibration atomically; older compact caches are removed. A cache that
    cannot be written (read-only index folder) only costs a rebuild next time."""
    if cache_dir is None or backend.index is None:
        return
    save_faiss_cache(backend.index, backend.params, cache_path(cache_dir, key), NAME)
