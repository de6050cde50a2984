"""What every search backend shares: the ``SearchBackend`` interface, query checks, the stable
(score, id) order, the optional FAISS import and recall@k. Imported by the backend modules, so
that :mod:`tvt.search.compact` and :mod:`tvt.search.backends` never import each other.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import InputError
from tvt.files import atomic_write, write_json


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


def save_faiss_cache(index: Any, params: dict[str, Any], path: Path, kind: str) -> None:
    """Write a trained FAISS ``index`` to ``path`` and its ``params`` beside it (``.json``), each
    atomically, and remove older caches of the same ``kind`` in the folder. A cache that cannot be
    written (read-only index folder) only costs a rebuild next time, so errors are swallowed."""
    faiss = _import_faiss()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"{kind}-*"):
            if old.stem != path.stem:
                old.unlink(missing_ok=True)
        data = faiss.serialize_index(index)  # the bytes faiss.write_index would write
        atomic_write(path, lambda fh: fh.write(data.tobytes()), fsync=False)
        write_json(path.with_suffix(".json"), params, indent=None, fsync=False)
    except (OSError, RuntimeError):
        pass


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


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k; both [Q, >=k] id arrays."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k) if hits else 1.0
