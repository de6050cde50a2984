"""Compact exact search: a fast scan of compact codes, then exact re-ranking of a shortlist.

The index keeps only compact codes in memory: FAISS 4-bit product quantisation with SIMD
"fast scan" (``PQ{D/2}x4fs``: 4 bits per pair of dimensions, 96 bytes for a 384-d vector, 96 MB
per million photos). A query scans every code (no clustering, so no part of the collection is ever
skipped), keeps the ``shortlist`` best approximate scores, and re-scores those rows exactly from
the float32 embeddings, which may stay on disk (``np.memmap``): only the shortlisted rows are read.
The returned top-k is ordered by exact score, ties by ascending id, like ``ExactBackend``.

The shortlist size is calibrated on the index itself (:func:`calibrate_shortlist`): probe
queries drawn from the collection are searched exactly, and the shortlist is the smallest that
holds the exact top-k of all of them (``target`` 1.0), times a safety margin. Why PQ fast scan and
not an 8-bit scalar quantiser: on 2 cores a FAISS SQ8 scan of 1M x 384 takes ~140 ms per query
(it decodes every code to floats), a PQ fast scan ~5-10 ms (benchmarks/search.py). Coarser
codes (4 dims per sub-quantiser) scan faster but need shortlists 10x longer for the hardest
queries of a 100k collection, which costs more in re-ranking than it saves.

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


def coarse_spec(dim: int) -> str:
    """The FAISS factory string of the compact codes: 4-bit PQ fast scan, 2 dims per sub-quantiser."""
    for per_sub in (2, 1):
        if dim % per_sub == 0:
            return f"PQ{dim // per_sub}x4fs"
    raise AssertionError("unreachable: every dim is divisible by 1")


class CompactExactBackend(SearchBackend):
    """``search(q, k)``: compact scan for a shortlist, exact float64 scores of its rows, top-k.

    ``embeddings`` [N, D] float32 (an ``np.memmap`` works: only shortlisted rows are read).
    ``shortlist`` is normally set by :func:`calibrate_shortlist`; until then it is 16 k.
    """

    def __init__(self, embeddings: np.ndarray, *, spec: str | None = None, index: Any = None,
                 params: dict[str, Any] | None = None, seed: int = 0) -> None:
        n, d = embeddings.shape
        spec = spec or coarse_spec(d)
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
        """float32 rows [len(ids), D] of the given ids (any order), read part by part."""
        if len(self._parts) == 1:
            order = np.argsort(ids, kind="stable")  # ascending reads: kinder to a memory map
            out = np.empty((len(ids), self.dim), np.float32)
            out[order] = self._parts[0][ids[order]]
            return out
        out = np.empty((len(ids), self.dim), np.float32)
        for part, off in zip(self._parts, self._offsets):
            sel = np.nonzero((ids >= off) & (ids < off + len(part)))[0]
            if len(sel):
                local = ids[sel] - off
                order = np.argsort(local, kind="stable")  # ascending reads: kinder to a memory map
                out[sel[order]] = part[local[order]]
        return out

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
            ids, approx_kept = cand[keep], approx[keep]
            exact = self._rows(ids).astype(np.float64) @ q.astype(np.float64)
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
        q64 = q.astype(np.float64)
        best_s = np.full((len(q), 0), -np.inf)
        best_i = np.zeros((len(q), 0), np.int64)
        for start in range(0, self.size, block):
            ids = np.arange(start, min(self.size, start + block))
            s = q64 @ self._rows(ids).astype(np.float64).T
            best_s = np.concatenate([best_s, s], axis=1)
            best_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
            best_s, best_i = _stable_order(best_s, best_i)
            best_s, best_i = best_s[:, :k], best_i[:, :k]
        return best_s.astype(np.float32), best_i


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
    return CompactExactBackend(embeddings, spec=params.get("coarse"), index=index, params=params)


def reuse_trained(embeddings: np.ndarray, cache_dir: str | Path | None) -> CompactExactBackend | None:
    """After an index update: the quantiser trained for an older version of the index, emptied and
    refilled with the new rows (training is the slow part of a build), else None."""
    if cache_dir is None or len(embeddings) < MIN_CODED:
        return None
    for old in sorted(Path(cache_dir).glob(f"{NAME}-*.faiss")):
        try:
            params = json.loads(old.with_suffix(".json").read_text())
            index = _import_faiss().read_index(str(old))
        except (OSError, RuntimeError, ValueError):
            continue
        if int(index.d) == embeddings.shape[1] and params.get("coarse") == coarse_spec(embeddings.shape[1]):
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
