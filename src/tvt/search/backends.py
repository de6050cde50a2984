"""Nearest-neighbour search backends over L2-normalised embeddings (cosine = inner product).

* ``exact``: torch matmul + top-k, always available, the reference every other backend is
  measured against.
* ``faiss-flat``: FAISS ``IndexFlatIP`` (exact, BLAS-backed), needs the ``[index]`` extra.
* ``faiss-ivf``: FAISS ``IndexIVFFlat`` (approximate). ``nlist`` grows with the collection and
  ``nprobe`` is calibrated so that the measured recall@k reaches a target.
* ``faiss-hnsw``: FAISS ``IndexHNSWFlat`` (approximate). ``efSearch`` is calibrated the same way.

``auto`` picks exact search below :data:`AUTO_APPROX_MIN` vectors (or when FAISS is missing) and
IVF above. Approximate indexes are cached in ``INDEX_DIR/cache`` with their calibration. Every backend returns ``(scores, ids)`` arrays of
shape [Q, k], best first; ids index rows of the embedding matrix.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import InputError

BACKEND_NAMES = ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
AUTO_APPROX_MIN = 200_000  # below this a single exact query stays within tens of ms on 2 cores
DEFAULT_TARGET_RECALL = 0.95


def faiss_available() -> bool:
    """True when the optional ``faiss`` package can be imported."""
    return importlib.util.find_spec("faiss") is not None


def _import_faiss() -> Any:
    if not faiss_available():
        raise InputError(
            "this search backend needs FAISS, which is not installed; install the extra with "
            "`pip install 'tvt[index]'` (faiss-cpu) or use --backend exact"
        )
    import faiss

    return faiss


def _as_queries(q: np.ndarray | torch.Tensor, dim: int) -> np.ndarray:
    """Queries as a C-contiguous float32 [Q, D] array (a single [D] vector becomes [1, D])."""
    arr = q.detach().cpu().numpy() if isinstance(q, torch.Tensor) else np.asarray(q)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"query embeddings have shape {tuple(arr.shape)}, expected [Q, {dim}]")
    return arr


def _stable_order(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending, ties by ascending id, so results are deterministic."""
    order = np.lexsort((ids, -scores), axis=1) if scores.size else np.zeros_like(ids)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


@dataclass
class SearchBackend:
    """Base class: ``search(queries [Q, D], k) -> (scores [Q, k], ids [Q, k])``."""

    name: str = "base"
    size: int = 0
    dim: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _as_queries(queries, self.dim)
        k = min(int(k), self.size)
        if k <= 0:
            empty = np.zeros((q.shape[0], 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores, ids = self._search(q, k)
        scores, ids = scores.astype(np.float32), ids.astype(np.int64)
        # An approximate index pads with id -1 when it finds fewer than k; score those -inf so
        # they sort last, and callers drop ids < 0.
        scores[ids < 0] = -np.inf
        return _stable_order(scores, ids)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ExactBackend(SearchBackend):
    """Exact cosine search in torch: ``scores = E @ q^T`` then top-k, in blocks of queries.

    The embedding matrix [N, D] is wrapped without a copy. Query blocks keep the score matrix
    (N x block floats) bounded whatever the number of queries.
    """

    def __init__(self, embeddings: np.ndarray, query_block: int = 64) -> None:
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
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


def build_faiss(name: str, embeddings: np.ndarray, *, seed: int = 0) -> FaissBackend:
    """Build the FAISS index ``name`` over ``embeddings`` [N, D] (float32, L2-normalised)."""
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
    elif name == "faiss-hnsw":
        m = hnsw_m(n)
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
        params = {"M": m, "efConstruction": 80, "efSearch": 64}
    else:
        raise InputError(f"unknown FAISS backend {name!r}; choose one of {', '.join(BACKEND_NAMES[2:])}")
    index.add(emb)
    return FaissBackend(name, index, d, params)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k; both [Q, >=k] id arrays."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k) if hits else 1.0


def calibration_queries(embeddings: np.ndarray, n: int = 200, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """Probe queries [n, D]: random database rows plus Gaussian noise, re-normalised.

    The noise keeps a query from sitting exactly on a database point, which would make
    approximate search look better than it is for real (sketch) queries.
    """
    rng = np.random.default_rng(seed)
    rows = embeddings[rng.choice(len(embeddings), size=min(n, len(embeddings)), replace=False)]
    q = rows + noise * rng.standard_normal(rows.shape).astype(np.float32) / math.sqrt(rows.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


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


def choose_backend(n: int, have_faiss: bool | None = None) -> str:
    """The backend ``auto`` resolves to for ``n`` vectors: exact below :data:`AUTO_APPROX_MIN`
    (or without FAISS), else IVF. HNSW answers faster at equal recall but takes minutes per 100k
    vectors to build on 2 cores (see benchmarks/search.py), so it is only used when asked for."""
    have_faiss = faiss_available() if have_faiss is None else have_faiss
    return "exact" if n < AUTO_APPROX_MIN or not have_faiss else "faiss-ivf"


def make_backend(
    name: str,
    embeddings: np.ndarray,
    *,
    cache_dir: str | Path | None = None,
    cache_key: str = "",
    target_recall: float = DEFAULT_TARGET_RECALL,
    k_calibrate: int = 100,
    log: Callable[[str], None] | None = None,
) -> SearchBackend:
    """Create backend ``name`` (one of :data:`BACKEND_NAMES`) over ``embeddings`` [N, D].

    Approximate indexes are calibrated to ``target_recall`` at ``k_calibrate`` against exact
    search and, when ``cache_dir`` is given, saved there (file name includes ``cache_key``, e.g.
    the embeddings checksum) so the next start skips the build.
    """
    if name not in BACKEND_NAMES:
        raise InputError(f"unknown search backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        name = choose_backend(len(embeddings))
    if name == "exact":
        return ExactBackend(embeddings)
    if len(embeddings) == 0:
        raise InputError("the index is empty; add photos with `tvt index` before searching")
    cached = _load_cached(name, cache_dir, cache_key, embeddings.shape[1])
    if cached is not None:
        return cached
    if log:
        log(f"building {name} index over {len(embeddings)} vectors")
    backend = build_faiss(name, embeddings)
    if name != "faiss-flat":
        queries = calibration_queries(embeddings)
        _, exact_ids = ExactBackend(embeddings).search(queries, k_calibrate)
        recall = calibrate(backend, queries, exact_ids, k_calibrate, target_recall)
        if log:
            log(f"{name}: {backend.params} (recall@{min(k_calibrate, len(embeddings))} {recall:.3f})")
    _save_cached(backend, cache_dir, cache_key)
    return backend


def _cache_path(name: str, cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{name}-{key[:16] or 'nokey'}.faiss"


def _load_cached(name: str, cache_dir: str | Path | None, key: str, dim: int) -> FaissBackend | None:
    if cache_dir is None or name == "faiss-flat":
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
    if cache_dir is None or not isinstance(backend, FaissBackend) or backend.name == "faiss-flat":
        return
    import json
    import os

    faiss = _import_faiss()
    path = _cache_path(backend.name, cache_dir, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{backend.name}-*"):
            if old.stem != path.stem:
                old.unlink(missing_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(backend.index, str(tmp))
        os.replace(tmp, path)
        tmp_meta = path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(backend.params))
        os.replace(tmp_meta, path.with_suffix(".json"))
    except (OSError, RuntimeError):
        pass
