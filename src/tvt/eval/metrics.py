"""Retrieval metrics of spec §6.2: mAP@all, mAP@k and P@k, exact and fast.

Definitions (the official code's, spec §6.2). For one query with score row ``S_q`` over ``N_g``
gallery items, rank the gallery by descending score; ``rel_j`` says whether the j-th item has the
query's label and ``N_rel`` counts such items. With ``K = N_g, R = N_rel`` for "all" and
``K = min(k, N_g), R = min(K, N_rel)`` for "@k":

* ``P_j = (sum_{i<=j} rel_i) / j``, interpolated ``P^_j = max_{j<=j'<=K} P_j'``;
* ``AP@k = (1/R) sum_{j<=K, rel_j=1} P^_j`` (VOC all-point interpolation on the truncated list);
* ``P@k = (sum_{j<=K} rel_j) / K``;
* mAP / P are plain means over all queries (not per class).

Choices: scores are cosine similarities of L2-normalised float32 features (or Hamming codes, see
:mod:`tvt.eval.binary`); equal scores are ordered by gallery index, a stable descending sort
[Q33]; a query with no relevant gallery item scores AP = P = 0 (the official code divides by zero).

Speed: a full sort of every score row is what makes the plain algorithm slow. Here only the ranks
of the relevant items are needed, and for the queries of one class the relevant set is the same.
Per chunk of same-class queries, each score is put into one of ~G monotone bins spanning the
relevant scores of its row; a per-row histogram counts the items ranked before every bin, and only
the few items that share a bin with a relevant item are compared exactly, by a key that encodes
(score desc, gallery index asc). This gives the exact ranks ``r_1 < r_2 < ...`` of the relevant
items, from which ``P_{r_i} = i / r_i`` and all metrics follow.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from tvt.errors import DataError
from tvt.eval.metric_inputs import check_codes, check_features, check_labels
from tvt.vectors import l2_normalize

_INT64_MAX = torch.iinfo(torch.int64).max
_CHUNK_ELEMENTS = 1 << 24  # score elements per chunk (~0.5 GB of working memory)


# ----------------------------------------------------------------------------------------------
# scores


def _prepare(q: Any, g: Any, scores: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated query/gallery matrices whose dot products are the scores."""
    if scores == "cosine":
        qt, gt = check_features(q, "query features"), check_features(g, "gallery features")
        # normalised in float64, then scored in float32
        qt = l2_normalize(qt.double(), name="query features").float()
        gt = l2_normalize(gt.double(), name="gallery features").float()
    elif scores == "hamming":
        # ±1 codes: dot = bits - 2 * Hamming distance, exact in float32
        qt, gt = check_codes(q, "query codes"), check_codes(g, "gallery codes")
    else:
        raise ValueError(f"scores must be 'cosine' or 'hamming', got {scores!r}")
    if qt.shape[1] != gt.shape[1]:
        raise DataError(
            f"query and gallery have different dimensions ({qt.shape[1]} vs {gt.shape[1]}); "
            "were they produced by the same model?"
        )
    return qt, gt


def score_matrix(q: Any, g: Any, scores: str = "cosine") -> np.ndarray:
    """Full score matrix [Q, G] float32 as ranked by :func:`retrieval_metrics` (cosine, or -Hamming for codes).

    Meant for small sets (tests, the reference); it holds Q x G values in memory.
    """
    qt, gt = _prepare(q, g, scores)
    s = qt @ gt.T
    if scores == "hamming":
        s = (s - qt.shape[1]) / 2  # -Hamming distance
    return s.numpy()


# ----------------------------------------------------------------------------------------------
# exact ranks of the relevant items


def order_keys(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """int64 keys whose ascending order is (score descending, gallery index ascending) [Q33].

    ``s``: float32 scores, any shape; ``idx``: int64 gallery indices (< 2**32) broadcastable to it.
    """
    bits = (s + 0.0).contiguous().view(torch.int32)  # + 0.0 maps -0.0 to +0.0 (they tie)
    # flip the magnitude bits of negative floats: int order of `ordered` == float order of s
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return ((~ordered).to(torch.int64) << 32) | idx


class _Buffers:
    """Work tensors reused across chunks: a fresh multi-MB tensor costs page faults on first touch,
    several times the cost of the pass that fills it."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


def _fill(value: int, numel: int, dev: torch.device) -> torch.Tensor:
    """int32 [numel] of ``value`` without allocating it (stride 0)."""
    return torch.full((1,), value, dtype=torch.int32, device=dev).expand(numel)


def _relevant_ranks(
    s: torch.Tensor, rel: torch.Tensor, n_bins: int, bufs: _Buffers | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 1-based ranks of the relevant items of every row, ascending.

    ``s``: [c, G] float32 scores; ``rel``: [n] int64 gallery indices of the relevant items (n >= 1),
    on the device of ``s``. Returns ``ranks`` [c, n] int64 and the gallery index of each ranked
    relevant item [c, n] int64.
    """
    c, g = s.shape
    n, dev, bufs = rel.numel(), s.device, bufs or _Buffers()
    rel_s = s.index_select(1, rel)
    rel_key, order = order_keys(rel_s, rel).sort(dim=1)
    # bins: any map that is non-increasing in the score is correct; items in a bin holding no
    # relevant item are then ranked before/after every relevant item by their bin alone.
    # Row r owns the bin ids r*nb .. r*nb + nb - 1 (ids < 2**24, exact in float32).
    nb = n_bins + 3  # per row, bin 0: above hi, 1 .. n_bins + 1: [hi, lo], n_bins + 2: below lo
    hi, lo = rel_s.amax(1, keepdim=True), rel_s.amin(1, keepdim=True)
    scale = n_bins / (hi - lo).clamp_min(1e-30)
    first = torch.arange(c, device=dev, dtype=torch.float32)[:, None] * nb
    v = torch.addcmul(first + 1.0 + hi * scale, s, -scale, out=bufs.get("v", (c, g), torch.float32, dev))
    v.clamp_(first, first + (nb - 1))
    flat = bufs.get("bins", (c * g,), torch.int32, dev).copy_(v.view(-1))  # truncation: monotone
    hist = bufs.get("hist", (c * nb,), torch.int32, dev).zero_()
    hist.index_add_(0, flat, _fill(1, flat.numel(), dev))
    rel_bins = flat.view(c, g).index_select(1, rel).long()
    flag = bufs.get("flag", (c * nb,), torch.bool, dev).zero_()
    flag[rel_bins.view(-1)] = True
    collide = torch.index_select(flag, 0, flat, out=bufs.get("collide", (c * g,), torch.bool, dev))
    collide.view(c, g).index_fill_(1, rel, False)  # relevant items are handled below, without search
    where = collide.nonzero()[:, 0]  # other items sharing a bin with a relevant item (flat positions)
    rows, cols = where // g, where % g
    # the histogram keeps only the items in bins without relevant items
    hist.index_add_(0, flat.index_select(0, where), _fill(-1, where.numel(), dev))
    hist.index_add_(0, rel_bins.view(-1).to(torch.int32), _fill(-1, c * n, dev))
    # colliding items: exact comparison with the relevant keys
    counts = torch.bincount(rows, minlength=c)
    pos = torch.arange(where.numel(), device=dev) - (counts.cumsum(0) - counts).index_select(0, rows)
    padded = torch.full((c, int(counts.max())), _INT64_MAX, dtype=torch.int64, device=dev)
    padded.view(-1)[rows * padded.shape[1] + pos] = order_keys(s.view(-1).index_select(0, where), cols)
    gap = torch.searchsorted(rel_key, padded)  # number of relevant keys below each key, 0..n
    per_gap = torch.zeros(c, n + 1, dtype=torch.int64, device=dev)
    per_gap.scatter_add_(1, gap, torch.ones_like(gap))
    # colliding keys up to the m-th relevant key (0-based): searched ones, plus relevant ones 0..m
    colliding_upto = per_gap.cumsum(1)[:, :n] + torch.arange(1, n + 1, device=dev)
    hist = hist.view(c, nb)
    rank_bins = rel_bins.gather(1, order) - first.long()
    # non-colliding items in the bins before each relevant item's bin
    cum = torch.cumsum(hist, 1, dtype=torch.int32, out=bufs.get("cum", (c, nb), torch.int32, dev))
    before_bin = cum.gather(1, rank_bins) - hist.gather(1, rank_bins)
    ranks = before_bin.long() + colliding_upto
    return ranks, rel[order]


def _metrics_from_ranks(
    ranks: torch.Tensor, n_gallery: int, ks_map: Sequence[int], ks_prec: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-query metrics [c] float64 from the ascending ranks [c, n] of all n relevant items."""
    c, n = ranks.shape
    out: dict[str, torch.Tensor] = {}
    if n == 0:
        zero = torch.zeros(c, dtype=torch.float64)
        return {name: zero for name in _metric_names(ks_map, ks_prec)}
    r = ranks.cpu().double()
    prec = torch.arange(1, n + 1, dtype=torch.float64) / r  # P_j at the j-th hit
    out["mAP@all"] = _rev_cummax(prec).sum(1) / n
    for k in ks_map:
        big_k = min(k, n_gallery)
        m = min(n, big_k)  # only the first m hits can fall within the top K
        inside = r[:, :m] <= big_k
        interp = _rev_cummax(torch.where(inside, prec[:, :m], 0.0))
        out[f"mAP@{k}"] = (interp * inside).sum(1) / min(big_k, n)
    for k in ks_prec:
        big_k = min(k, n_gallery)
        out[f"P@{k}"] = (r[:, : min(n, big_k)] <= big_k).sum(1).double() / big_k
    return out


def _rev_cummax(x: torch.Tensor) -> torch.Tensor:
    """max over j' >= j along dim 1 (the interpolated precision)."""
    return x.flip(1).cummax(1).values.flip(1)


def _metric_names(ks_map: Sequence[int], ks_prec: Sequence[int]) -> list[str]:
    return ["mAP@all"] + [f"mAP@{k}" for k in ks_map] + [f"P@{k}" for k in ks_prec]


# ----------------------------------------------------------------------------------------------
# public entry point


def iter_relevant_ranks(
    q: Any,
    q_labels: Any,
    g: Any,
    g_labels: Any,
    *,
    chunk: int | None = None,
    exclude_self: bool = False,
    scores: str = "cosine",
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Yield ``(query indices [c], ranks [c, n] int64 CPU, N_g)`` for chunks of same-label queries.

    ``ranks`` are the exact ascending 1-based ranks of the n relevant gallery items of each query
    (ties by gallery index [Q33]); n may be 0. Arguments as in :func:`retrieval_metrics`.
    """
    qt, gt = _prepare(q, g, scores)
    ql = check_labels(q_labels, qt.shape[0], "query labels")
    gl = check_labels(g_labels, gt.shape[0], "gallery labels")
    n_q, n_g = qt.shape[0], gt.shape[0]
    if exclude_self and (n_q != n_g or not torch.equal(ql, gl)):
        raise DataError(
            "exclude_self needs the queries and the gallery to be the same set in the same order "
            f"(got {n_q} queries and {n_g} gallery items, or different labels)"
        )
    if n_g >= 2**32:
        raise DataError(f"gallery too large ({n_g} items); at most 2**32 - 1 are supported")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gt = gt.to(dev)
    # ~G monotone bins per row (see _relevant_ranks); the per-row histograms also count as memory
    n_bins = int(min(max(16, 2 ** math.ceil(math.log2(n_g))), 1 << 17))
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(n_g, n_bins + 3)) if chunk is None else chunk
    rows_per_chunk = min(rows_per_chunk, (1 << 24) // (n_bins + 3))  # bin ids exact in float32
    n_eff = n_g - 1 if exclude_self else n_g
    bufs = _Buffers()  # inputs are detached (check_features), so no autograd graph is built
    for qidx, rel in _query_groups(ql, gl, rows_per_chunk):
        if rel.numel() <= int(exclude_self):  # no relevant item
            yield qidx, torch.zeros(qidx.numel(), 0, dtype=torch.int64), n_eff
            continue
        s = torch.mm(qt[qidx].to(dev), gt.T, out=bufs.get("s", (qidx.numel(), n_g), torch.float32, dev))
        ranks, ranked_idx = _relevant_ranks(s, rel.to(dev), n_bins, bufs)
        if exclude_self:
            ranks = _drop_self(ranks, ranked_idx, qidx.to(dev))
        yield qidx, ranks.cpu(), n_eff


def retrieval_metrics(
    q: Any,
    q_labels: Any,
    g: Any,
    g_labels: Any,
    *,
    ks_map: Sequence[int] = (200,),
    ks_prec: Sequence[int] = (100, 200),
    chunk: int | None = None,
    exclude_self: bool = False,
    scores: str = "cosine",
    return_per_query: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """mAP@all, mAP@k and P@k (spec §6.2) of queries ``q`` [Q, D] against gallery ``g`` [G, D].

    ``q_labels`` [Q] and ``g_labels`` [G] are the integer class of each row; a gallery
    item is relevant to a query when their labels are equal.

    ``scores="cosine"``: features (numpy or torch) are L2-normalised and compared by dot product
    in float32. ``scores="hamming"``: ``q`` and ``g`` are binary codes [N, bits] (bool or 0/1),
    ranked by ascending Hamming distance. Ties go to the lower gallery index [Q33]. ``chunk``
    bounds the queries scored at once (default: ~16M scores per chunk; the memory stays bounded at
    any size). ``exclude_self`` (intra-modal retrieval without the query itself; the official
    code keeps it [Q32]) requires ``q`` and ``g`` to be the same set in the same order: query i
    is gallery item i and is left out of its own ranking (N_g and N_rel shrink by one).
    ``device`` (e.g. "cuda") runs the scoring and ranking there.

    Returns ``{"mAP@all", "mAP@<k>"..., "P@<k>"..., "n_queries", "n_gallery"}`` (floats / ints)
    and, with ``return_per_query``, ``"per_query": {metric name: float64 array [Q]}``.
    Note: float32 dot products from different BLAS kernels (chunk shapes, devices) may differ in
    the last bit, which can reorder scores that are equal up to rounding.
    """
    ks_map, ks_prec = _check_ks(ks_map, "ks_map"), _check_ks(ks_prec, "ks_prec")
    names = _metric_names(ks_map, ks_prec)
    per_query: dict[str, torch.Tensor] = {}
    n_q = n_g = no_relevant = 0
    from tqdm import tqdm

    ranked = iter_relevant_ranks(
        q, q_labels, g, g_labels, chunk=chunk, exclude_self=exclude_self, scores=scores, device=device
    )
    with tqdm(unit="query", disable=not progress, file=sys.stderr, desc="metrics") as bar:
        for qidx, ranks, n_eff in ranked:
            if not per_query:  # inputs are validated by now
                n_q, n_g = len(q_labels), n_eff + int(exclude_self)
                per_query = {name: torch.zeros(n_q, dtype=torch.float64) for name in names}
                bar.reset(total=n_q)
            no_relevant += qidx.numel() if ranks.shape[1] == 0 else 0
            for name, vals in _metrics_from_ranks(ranks, n_eff, ks_map, ks_prec).items():
                per_query[name][qidx] = vals
            bar.update(qidx.numel())
    if no_relevant:
        msg = f"{no_relevant} queries have no relevant gallery item; they count as AP = P = 0"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    out: dict[str, Any] = {name: float(per_query[name].mean()) for name in names}
    out.update(n_queries=n_q, n_gallery=n_g)
    if return_per_query:
        out["per_query"] = {name: v.numpy() for name, v in per_query.items()}
    return out


def _check_ks(ks: Sequence[int], name: str) -> tuple[int, ...]:
    ks = tuple(ks)
    if any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"{name} must be positive integers, got {ks}")
    return tuple(dict.fromkeys(int(k) for k in ks))


def _query_groups(ql: torch.Tensor, gl: torch.Tensor, rows: int):
    """Yield (query indices [c], relevant gallery indices [n] ascending) per chunk of same-label queries."""
    g_order = torch.sort(gl, stable=True).indices  # ascending index within each label
    g_classes, g_counts = torch.unique_consecutive(gl[g_order], return_counts=True)
    g_start = dict(zip(g_classes.tolist(), (g_counts.cumsum(0) - g_counts).tolist()))
    g_count = dict(zip(g_classes.tolist(), g_counts.tolist()))
    q_order = torch.sort(ql, stable=True).indices
    q_classes, q_counts = torch.unique_consecutive(ql[q_order], return_counts=True)
    start = 0
    for label, count in zip(q_classes.tolist(), q_counts.tolist()):
        qidx = q_order[start : start + count]
        start += count
        first = g_start.get(label, 0)
        rel = g_order[first : first + g_count.get(label, 0)]
        # near-equal parts keep every matmul large enough for the same BLAS kernel
        for part in torch.tensor_split(qidx, math.ceil(count / rows)):
            yield part, rel


def _drop_self(ranks: torch.Tensor, ranked_idx: torch.Tensor, qidx: torch.Tensor) -> torch.Tensor:
    """Remove query i's own entry (gallery item i) from its ranks [c, n] -> [c, n - 1]."""
    is_self = ranked_idx == qidx[:, None]
    after = is_self.long().cumsum(1) - is_self.long()  # 1 for relevant items ranked after it
    return (ranks - after)[~is_self].view(ranks.shape[0], ranks.shape[1] - 1)

