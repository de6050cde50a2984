"""The official per-query metric algorithm of spec §6.2, written plainly (with a stable sort [Q33]).

Slow and simple on purpose: the independent reference that tests and ``benchmarks/metrics.py``
compare :func:`tvt.eval.metrics.retrieval_metrics` against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def average_precision_reference(rel: np.ndarray, n_rel: int, k: int | None) -> float:
    """AP@k of one ranked relevance vector ``rel`` [N_g] (0/1) as written in spec §6.2; k=None: all."""
    n_g = len(rel)
    big_k, r = (n_g, n_rel) if k is None else (min(k, n_g), min(k, n_g, n_rel))
    if r == 0:
        return 0.0
    hits = np.asarray(rel[:big_k], dtype=np.int64)
    precision = np.cumsum(hits) / np.arange(1, big_k + 1)
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    return float(interpolated[hits == 1].sum() / r)


def precision_reference(rel: np.ndarray, k: int) -> float:
    """P@k of one ranked relevance vector ``rel`` [N_g]: hits in the top K = min(k, N_g), over K."""
    big_k = min(k, len(rel))
    return float(np.sum(rel[:big_k]) / big_k)


def reference_metrics(
    scores: np.ndarray,
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    *,
    ks_map: Sequence[int] = (200,),
    ks_prec: Sequence[int] = (100, 200),
    exclude_self: bool = False,
) -> dict[str, Any]:
    """Per-query loop over a full score matrix [Q, G] (stable argsort of -scores per row).

    Slow and simple: the independent reference for :func:`retrieval_metrics` (same keys, with
    ``per_query`` always included).
    """
    scores, q_labels, g_labels = np.asarray(scores), np.asarray(q_labels), np.asarray(g_labels)
    names = ["mAP@all"] + [f"mAP@{k}" for k in ks_map] + [f"P@{k}" for k in ks_prec]
    per_query = {name: np.zeros(len(q_labels)) for name in names}
    for i, label in enumerate(q_labels):
        row, labels = scores[i], g_labels
        if exclude_self:
            row, labels = np.delete(row, i), np.delete(labels, i)
        rel = (labels[np.argsort(-row, kind="stable")] == label).astype(np.int64)
        n_rel = int(rel.sum())
        per_query["mAP@all"][i] = average_precision_reference(rel, n_rel, None)
        for k in ks_map:
            per_query[f"mAP@{k}"][i] = average_precision_reference(rel, n_rel, k)
        for k in ks_prec:
            per_query[f"P@{k}"][i] = precision_reference(rel, k) if n_rel else 0.0
    out: dict[str, Any] = {name: float(v.mean()) for name, v in per_query.items()}
    out.update(n_queries=len(q_labels), n_gallery=scores.shape[1], per_query=per_query)
    return out
