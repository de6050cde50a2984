"""Nearest-neighbour search backends over L2-normalised embeddings (cosine = inner product).

* ``exact``: torch matmul + top-k, always available, the reference every other backend is
  measured against.
* ``faiss-flat``: FAISS ``IndexFlatIP`` (exact, BLAS-backed), needs the ``[index]`` extra.
* ``faiss-ivf``: FAISS ``IndexIVFFlat`` (approximate). ``nlist`` grows with the collection and
  ``nprobe`` is calibrated so that the measured recall@k reaches a target.
* ``faiss-hnsw``: FAISS ``IndexHNSWFlat`` (approximate). ``efSearch`` is calibrated the same way.
* ``faiss-sq8``: FAISS ``IndexScalarQuantizer`` with 8 bits per dimension (approximate scores of
  a full scan; a quarter of the memory of float32).
* ``compact-exact``: 4-bit PQ fast scan of every row, then exact re-ranking of a shortlist whose
  length is calibrated on the index (:mod:`tvt.search.compact`): the exact top-k, from compact
  codes in memory (96 bytes per 384-d photo) and float32 rows that may stay on disk.

``auto`` picks the fastest backend that meets the recall target for the collection's size
(:func:`choose_backend`). Derived indexes are cached in ``INDEX_DIR/cache`` with their
calibration. Every backend returns ``(scores, ids)`` arrays of shape [Q, k], best first; ids index
rows of the embedding matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import InputError
from tvt.search import compact
from tvt.search.base import (  # noqa: F401  (re-exported: the public names of this module)
    SearchBackend,
    _as_queries,
    _import_faiss,
    _stable_order,
    faiss_available,
    recall_at_k,
    save_faiss_cache,
)
from tvt.vectors import l2_normalize

BACKEND_NAMES = ("auto", "exact", "compact-exact", "faiss-flat", "faiss-sq8", "faiss-ivf", "faiss-hnsw")
FAISS_BACKENDS = ("faiss-flat", "faiss-sq8", "faiss-ivf", "faiss-hnsw")
# Below this a single exact torch query takes a few ms on 2 cores (README: 2.5 ms at 10k) and
# needs no build; above it the compact scan is faster (README search table).
AUTO_COMPACT_MIN = 50_000
AUTO_APPROX_MIN = AUTO_COMPACT_MIN  # the older name of the same threshold
DEFAULT_TARGET_RECALL = 0.95  # approximate backends (IVF, HNSW) when asked for by name
EXACT_QUALITY = 0.999  # a recall target at or above this asks for exact results


class ExactBackend(SearchBackend):
    """Exact cosine search in torch: ``scores = E @ q^T`` then top-k, in blocks of queries.

    The embedding matrix [N, D] is wrapped without a copy. Query blocks keep the score matrix
    (N x block floats) bounded whatever the number of queries.
    """

    def __init__(self, embeddings: np.ndarray, query_block: int = 64) -> None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not emb.flags.writeable:  # a read-only memory map: torch wants its own writable copy
            emb = emb.copy()
        super().__init__(name="exact", size=emb.shape[0], dim=emb.shape[1])
        self._emb = torch.from_numpy(emb)
        self.query_block = query_block

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_s, out_i = [], []
        with torch.inference_mode():
            for start in range(0, q.shape[0], self.query_block):
                qb = torch.from_numpy(q[start : start + self.query_block])
                # [N, D] @ [D, B]: the layout that is fastest for few queries (memory bound).
                scores = torch.mm(self._emb, qb.T).T
                s, i = scores.topk(k, dim=1)
                out_s.append(s.numpy())
                out_i.append(i.numpy())
        return np.concatenate(out_s), np.concatenate(out_i)


class FaissBackend(SearchBackend):
    """Any FAISS index with inner-product metric; ``set_param`` tunes nprobe / efSearch."""

    def __init__(self, name: str, index: Any, dim: int, params: dict[str, Any]) -> None:
        super().__init__(name=name, size=int(index.ntotal), dim=dim, params=dict(params))
        self.index = index

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(q, k)

    def set_param(self, value: int) -> None:
        """Set the search-time knob (``nprobe`` for IVF, ``efSearch`` for HNSW)."""
        if self.name == "faiss-ivf":
            self.index.nprobe = int(value)
            self.params["nprobe"] = int(value)
        elif self.name == "faiss-hnsw":
            self.index.hnsw.efSearch = int(value)
            self.params["efSearch"] = int(value)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: about 2 sqrt(n), a power of two, in [1, 65536].

    k-means wants at least ~39 training points per list, hence the cap n/39. 2 sqrt(n) keeps the
    build within a minute or two at 1M vectors on 2 cores.
    """
    if n < 78:
        return 1
    nlist = min(65536, 2 ** round(math.log2(2.0 * math.sqrt(n))))
    while nlist > n / 39.0:
        nlist //= 2
    return int(nlist)


def hnsw_m(n: int) -> int:
    """HNSW graph degree: 32 is a good trade-off for 384-d embeddings up to millions of items."""
    return 16 if n < 50_000 else 32


def build_faiss(name: str, embeddings: np.ndarray, *, seed: int = 0, hnsw_degree: int | None = None,
                ef_construction: int = 80) -> FaissBackend:
    """Build the FAISS index ``name`` over ``embeddings`` [N, D] (float32, L2-normalised).

    ``hnsw_degree`` (M; default :func:`hnsw_m` of N) and ``ef_construction`` set the HNSW graph's
    degree and build-time beam: lower values build faster and cap the recall the graph can reach.
    """
    faiss = _import_faiss()
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = emb.shape
    if name == "faiss-flat":
        index = faiss.IndexFlatIP(d)
        params: dict[str, Any] = {}
    elif name == "faiss-ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # 64 points per list train the centroids well; more only slows the build
        sample = 64 * nlist
        train = emb if n <= sample else emb[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
        index.train(train)
        index.nprobe = min(nlist, 16)
        params = {"nlist": nlist, "nprobe": index.nprobe}
    elif name == "faiss-sq8":
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)
        params = {}
    elif name == "faiss-hnsw":
        m = hnsw_degree or hnsw_m(n)
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = 64
        params = {"M": m, "efConstruction": ef_construction, "efSearch": 64}
    else:
        raise InputError(f"unknown FAISS backend {name!r}; choose one of {', '.join(FAISS_BACKENDS)}")
    index.add(emb)
    return FaissBackend(name, index, d, params)


def calibration_queries(embeddings: np.ndarray, n: int = 200, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """Probe queries [n, D]: random database rows plus Gaussian noise, re-normalised.

    The noise keeps a query from sitting exactly on a database point, which would make
    approximate search look better than it is for real (sketch) queries.
    """
    rng = np.random.default_rng(seed)
    rows = embeddings[rng.choice(len(embeddings), size=min(n, len(embeddings)), replace=False)]
    q = rows + noise * rng.standard_normal(rows.shape).astype(np.float32) / math.sqrt(rows.shape[1])
    return l2_normalize(q.astype(np.float32)).numpy()


def calibrate(
    backend: FaissBackend,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    k: int = 100,
    target: float = DEFAULT_TARGET_RECALL,
) -> float:
    """Raise nprobe / efSearch (doubling) until recall@k >= ``target``; return the recall reached.

    ``exact_ids`` [Q, k] are the exact top-k of ``queries``. The chosen value stays set on the
    backend and is recorded in ``backend.params`` with the measured recall.
    """
    k = min(k, backend.size)
    if backend.name == "faiss-ivf":
        values = [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if v < backend.params["nlist"]]
        values.append(backend.params["nlist"])
    elif backend.name == "faiss-hnsw":
        values = [v for v in (16, 32, 64, 128, 256, 512, 1024, 2048) if v >= k] or [k]
    else:
        values = [0]
    recall = 0.0
    for value in values:
        backend.set_param(value)
        _, ids = backend.search(queries, k)
        recall = recall_at_k(ids, exact_ids, k)
        if recall >= target:
            break
    backend.params[f"recall@{k}"] = round(recall, 4)
    return recall


def choose_backend(n: int, have_faiss: bool | None = None, target: float = EXACT_QUALITY) -> str:
    """The backend ``auto`` resolves to for ``n`` vectors and recall target ``target``.

    Measured on 2 cores (README search table): exact torch search is fastest below
    :data:`AUTO_COMPACT_MIN` vectors (no build, a few ms); above it the compact scan with exact
    re-ranking answers the exact top-k 10-30x faster than a full float32 pass. A target below
    :data:`EXACT_QUALITY` accepts approximate results, and a calibrated IVF index is faster still.
    Without FAISS everything is exact torch search. HNSW answers fast too but takes minutes per
    100k vectors to build on 2 cores, so it is only used when asked for.
    """
    have_faiss = faiss_available() if have_faiss is None else have_faiss
    if n < AUTO_COMPACT_MIN or not have_faiss:
        return "exact"
    return "compact-exact" if target >= EXACT_QUALITY else "faiss-ivf"


def make_backend(
    name: str,
    embeddings: np.ndarray,
    *,
    cache_dir: str | Path | None = None,
    cache_key: str = "",
    target_recall: float | None = None,
    k_calibrate: int = 100,
    log: Callable[[str], None] | None = None,
) -> SearchBackend:
    """Create backend ``name`` (one of :data:`BACKEND_NAMES`) over ``embeddings`` [N, D].

    Calibrated backends reach ``target_recall`` at ``k_calibrate`` against exact search (default:
    1.0 for ``compact-exact`` and ``auto``, :data:`DEFAULT_TARGET_RECALL` for IVF/HNSW) and, when
    ``cache_dir`` is given, are saved there (file name includes ``cache_key``, e.g. the embeddings
    checksum) so the next start skips the build. ``embeddings`` may be an ``np.memmap``.
    """
    if name not in BACKEND_NAMES:
        raise InputError(f"unknown search backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        name = choose_backend(len(embeddings), target=1.0 if target_recall is None else target_recall)
    if name == "exact":
        return ExactBackend(embeddings)
    if len(embeddings) == 0:
        raise InputError("the index is empty; add photos with `tvt index` before searching")
    if name == "compact-exact":
        return _make_compact(embeddings, cache_dir, cache_key, 1.0 if target_recall is None else target_recall,
                             k_calibrate, log)
    target_recall = DEFAULT_TARGET_RECALL if target_recall is None else target_recall
    cached = _load_cached(name, cache_dir, cache_key, embeddings.shape[1])
    if cached is not None:
        return cached
    if log:
        log(f"building {name} index over {len(embeddings)} vectors")
    backend = build_faiss(name, embeddings)
    if name in ("faiss-ivf", "faiss-hnsw"):
        queries = calibration_queries(embeddings)
        _, exact_ids = ExactBackend(embeddings).search(queries, k_calibrate)
        recall = calibrate(backend, queries, exact_ids, k_calibrate, target_recall)
        if log:
            log(f"{name}: {backend.params} (recall@{min(k_calibrate, len(embeddings))} {recall:.3f})")
    _save_cached(backend, cache_dir, cache_key)
    return backend


def _make_compact(embeddings: np.ndarray, cache_dir: str | Path | None, cache_key: str, target: float,
                  k_calibrate: int, log: Callable[[str], None] | None) -> SearchBackend:
    """The compact-exact backend: from the cache, or built (reusing an older trained quantiser) and calibrated."""
    backend = compact.load_cached(embeddings, cache_dir, cache_key)
    if backend is not None:
        return backend
    if log:
        log(f"building {compact.NAME} codes over {len(embeddings)} vectors")
    queries = calibration_queries(embeddings)
    _, exact_ids = _exact_top(embeddings, queries, k_calibrate)
    backend = compact.reuse_trained(embeddings, cache_dir)
    if backend is not None:
        recall = compact.calibrate_shortlist(backend, queries, exact_ids, k_calibrate, target)
    else:
        backend, recall = compact.build_calibrated(embeddings, queries, exact_ids, k_calibrate, target)
    if log:
        log(f"{compact.NAME}: {backend.params['coarse']} codes, shortlist {backend.params['shortlist']} of "
            f"{len(embeddings)} (calibration recall@{min(k_calibrate, len(embeddings))} {recall:.4f} before a "
            f"{compact.DEFAULT_MARGIN}x margin)")
    compact.save_cached(backend, cache_dir, cache_key)
    return backend


def _exact_top(embeddings: np.ndarray, queries: np.ndarray, k: int, block: int = 262_144) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of ``queries`` over ``embeddings`` read in row blocks (a memory map is never loaded whole)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(embeddings), block):
        s, i = ExactBackend(embeddings[start: start + block]).search(queries, k)
        best_s, best_i = _stable_order(np.concatenate([best_s, s], 1), np.concatenate([best_i, i + start], 1))
        best_s, best_i = best_s[:, :k], best_i[:, :k]
    return best_s, best_i


def _cache_path(name: str, cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{name}-{key[:16] or 'nokey'}.faiss"


def _load_cached(name: str, cache_dir: str | Path | None, key: str, dim: int) -> FaissBackend | None:
    if cache_dir is None or name in ("faiss-flat", "faiss-sq8"):
        return None
    path = _cache_path(name, cache_dir, key)
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    import json

    faiss = _import_faiss()
    try:
        params = json.loads(meta_path.read_text())
        index = faiss.read_index(str(path))
    except (OSError, RuntimeError, ValueError):
        return None  # a damaged cache is rebuilt, never trusted
    backend = FaissBackend(name, index, dim, params)
    backend.set_param(params.get("nprobe", params.get("efSearch", 0)))
    return backend


def _save_cached(backend: SearchBackend, cache_dir: str | Path | None, key: str) -> None:
    """Store an approximate index for the next start; older caches of the same kind are removed.

    A cache that cannot be written (read-only index folder) only costs a rebuild next time.
    """
    if cache_dir is None or not isinstance(backend, FaissBackend) or backend.name in ("faiss-flat", "faiss-sq8"):
        return
    save_faiss_cache(backend.index, backend.params, _cache_path(backend.name, cache_dir, key), backend.name)
