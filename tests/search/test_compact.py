"""Compact exact search against a float64 brute-force reference: same top-k, ties, updates, cache."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from tvt.search.backends import calibration_queries, choose_backend, make_backend  # noqa: E402
from tvt.search.compact import (  # noqa: E402
    LAYOUTS,
    CompactExactBackend,
    build_calibrated,
    calibrate_shortlist,
    coarse_spec,
    layout_specs,
)

GRID = 2.0 ** -20  # coordinates on this grid make every float64 dot product exact, so ties are exact


def _on_grid(x: np.ndarray) -> np.ndarray:
    return (np.round(x / GRID) * GRID).astype(np.float32)


def _clustered(n: int, d: int = 32, centres: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d)) / np.sqrt(d)
    return _on_grid(x / np.linalg.norm(x, axis=1, keepdims=True))


def _with_duplicates(db: np.ndarray, copies: int, seed: int = 1) -> np.ndarray:
    """``db`` plus ``copies`` exact copies of random rows, shuffled: groups of tied scores."""
    rng = np.random.default_rng(seed)
    out = np.concatenate([db, db[rng.integers(0, len(db), copies)]])
    return out[rng.permutation(len(out))]


def _reference(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 scores, sorted by score descending then id ascending."""
    s = q.astype(np.float64) @ db.astype(np.float64).T
    ids = np.stack([np.lexsort((np.arange(len(db)), -row))[:k] for row in s])
    return np.take_along_axis(s, ids, 1).astype(np.float32), ids


def _queries(db: np.ndarray, seed: int) -> np.ndarray:
    """Noisy database rows plus rows that are duplicated (whose top hits tie at the same score)."""
    noisy = _on_grid(calibration_queries(db, n=40, seed=seed))
    _, first, counts = np.unique(db, axis=0, return_index=True, return_counts=True)
    return np.concatenate([noisy, db[first[counts > 1][:10]]])


def _assert_exact(backend, db: np.ndarray, q: np.ndarray, k: int) -> None:
    scores, ids = backend.search(q, k)
    ref_s, ref_i = _reference(db, q, k)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_array_equal(scores, ref_s)


def test_compact_top_k_equals_exact_with_ties():
    db = _with_duplicates(_clustered(3000), copies=300)
    backend = make_backend("compact-exact", db, k_calibrate=20)
    assert backend.params["coarse"] in layout_specs(32) == ["PQ8x4fs", "PQ16x4fs"]
    assert backend.params["recall@20"] >= 0.999
    assert 20 <= backend.shortlist_for(20) < len(db) // 2  # a real shortlist, not a full re-scoring
    q = _queries(db, seed=7)
    _assert_exact(backend, db, q, 20)
    _assert_exact(backend, db, q[:3], 5)  # smaller k: the same shortlist
    _assert_exact(backend, db, q[:3], 60)  # larger k: a proportionally longer shortlist
    s, i = backend.search(q[0], len(db) + 5)  # k beyond the collection: everything, ranked
    assert i.shape == (1, len(db)) and sorted(i[0].tolist()) == list(range(len(db)))


def test_layout_choice_is_the_cheapest_calibrated_one():
    """build_calibrated keeps the layout with the least work per query, each calibrated alone."""
    assert (coarse_spec(384, 4), coarse_spec(384), coarse_spec(30, 4), coarse_spec(7, 4)) == (
        "PQ96x4fs", "PQ192x4fs", "PQ10x4fs", "PQ7x4fs")
    db = _with_duplicates(_clustered(3000, seed=21), copies=200)
    q_cal = calibration_queries(db, n=100)
    ref = _reference(db, q_cal, 20)[1]
    chosen, recall = build_calibrated(db, q_cal, ref, k=20)
    costs = {}
    for spec in layout_specs(32):
        b = CompactExactBackend(db, spec=spec)
        calibrate_shortlist(b, q_cal, ref, k=20)
        costs[spec] = b.query_cost(20)
        assert costs[spec] == b.size * b.index.code_size + 6.0 * b.shortlist_for(20) * 32 * 4
    assert recall >= 0.999 and chosen.query_cost(20) == min(costs.values())
    assert chosen.params["coarse"] == min(costs, key=costs.get)
    _assert_exact(chosen, db, _queries(db, seed=22), 20)
    for spec in layout_specs(32):  # whichever layout is chosen, each one alone is exact too
        b = CompactExactBackend(db, spec=spec)
        calibrate_shortlist(b, q_cal, ref, k=20)
        _assert_exact(b, db, _queries(db, seed=23), 20)


@pytest.mark.parametrize("per_sub", LAYOUTS)
def test_tie_group_longer_than_the_shortlist(per_sub):
    """600 copies of one row: the top-20 are its 20 lowest ids, whichever copies the scan kept."""
    rng = np.random.default_rng(3)
    base = _clustered(2400, seed=4)
    lone = _clustered(1, seed=99)  # a photo unlike the others, stored 600 times
    db = np.concatenate([base, np.repeat(lone, 600, axis=0)])[rng.permutation(3000)]
    backend = CompactExactBackend(db, spec=coarse_spec(32, per_sub))
    q_cal = calibration_queries(base, n=100)  # calibrated where the copies are not
    calibrate_shortlist(backend, q_cal, _reference(db, q_cal, 20)[1], k=20)
    assert backend.shortlist_for(20) < 600
    _assert_exact(backend, db, lone, 20)
    _assert_exact(backend, db, _queries(db, seed=2), 20)
    # the scan may keep any of the tied copies; make it keep the highest ids, the worst case
    backend.index = _HighIdsFirst(backend.index)
    _, first_pass = backend.index.search(lone, backend.shortlist_for(20))
    assert not set(_reference(db, lone, 20)[1][0]) <= set(first_pass[0].tolist())
    _assert_exact(backend, db, lone, 20)


class _HighIdsFirst:
    """A coarse index that ranks equal approximate scores by descending id (still a valid ranking)."""

    def __init__(self, index) -> None:
        self.index, self.ntotal = index, index.ntotal

    def search(self, q: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        a, c = self.index.search(q, int(self.ntotal))
        order = np.stack([np.lexsort((-ci, -ai))[:length] for ai, ci in zip(a, c)])
        return np.take_along_axis(a, order, 1), np.take_along_axis(c, order, 1)


@pytest.mark.parametrize("per_sub", LAYOUTS)
def test_incremental_add_stays_exact(per_sub):
    full = _with_duplicates(_clustered(4000, seed=5), copies=400, seed=6)
    old, new = full[:3000], full[3000:]
    backend = CompactExactBackend(old, spec=coarse_spec(32, per_sub))
    q_cal = calibration_queries(old, n=100)
    calibrate_shortlist(backend, q_cal, _reference(old, q_cal, 20)[1], k=20)
    before = backend.shortlist_for(20)
    backend.add(new)
    assert backend.size == len(full) and backend.shortlist_for(20) > before  # grows with the collection
    _assert_exact(backend, full, _queries(full, seed=8), 20)
    tiny = CompactExactBackend(full[:100])  # too small for codes: every row is re-scored ...
    assert tiny.index is None
    tiny.add(full[100:400])  # ... until an update makes it large enough to train them
    assert tiny.index is not None and int(tiny.index.ntotal) == 400
    _assert_exact(tiny, full[:400], _queries(full[:400], seed=9), 10)


def test_cache_and_quantiser_reuse(tmp_path):
    db = _with_duplicates(_clustered(3000, seed=11), copies=100)
    built = make_backend("compact-exact", db, k_calibrate=20, cache_dir=tmp_path, cache_key="aaaa")
    cached = make_backend("compact-exact", db, k_calibrate=20, cache_dir=tmp_path, cache_key="aaaa")
    assert cached.params == built.params
    q = _queries(db, seed=12)
    np.testing.assert_array_equal(cached.search(q, 20)[1], built.search(q, 20)[1])
    grown = np.concatenate([db, _clustered(500, seed=13)])  # the index was updated: new checksum
    updated = make_backend("compact-exact", grown, k_calibrate=20, cache_dir=tmp_path, cache_key="bbbb")
    assert updated.params.get("reused_quantiser") is True
    _assert_exact(updated, grown, _queries(grown, seed=14), 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compact-exact-bbbb.faiss", "compact-exact-bbbb.json"]


def test_memory_map_rows_and_auto_choice(tmp_path):
    db = _clustered(3000, seed=15)
    np.save(tmp_path / "e.npy", db)
    mm = np.load(tmp_path / "e.npy", mmap_mode="r")
    backend = make_backend("compact-exact", mm, k_calibrate=20)
    assert backend.memory_bytes() < db.nbytes / 4  # codes are much smaller than the float32 rows
    _assert_exact(backend, db, _queries(db, seed=16), 20)
    assert choose_backend(10_000, True) == "exact"
    assert choose_backend(1_000_000, True) == "compact-exact"
    assert choose_backend(1_000_000, True, target=0.95) == "faiss-ivf"
    assert choose_backend(1_000_000, False) == "exact"


def test_retriever_keeps_embeddings_on_disk(photo_dir, tmp_path, helpers):
    """``Retriever.from_index(backend="compact-exact")`` memory-maps the rows and ranks like exact search."""
    from tvt.search import Retriever, update_index

    enc = helpers.Encoder()
    update_index(photo_dir, tmp_path / "idx", enc, helpers.identity(enc), progress=False)
    compact = Retriever.from_index(tmp_path / "idx", backend="compact-exact", encoder=enc, quiet=True)
    exact = Retriever.from_index(tmp_path / "idx", backend="exact", encoder=enc, quiet=True)
    assert isinstance(compact.index.embeddings, np.memmap) and not isinstance(exact.index.embeddings, np.memmap)
    q = exact.index.embeddings[[0, 5]]
    got = [[(h.id, h.score) for h in hits] for hits in compact.search_embeddings(q, 5)]
    want = [[(h.id, h.score) for h in hits] for hits in exact.search_embeddings(q, 5)]
    assert [[i for i, _ in g] for g in got] == [[i for i, _ in w] for w in want]
    np.testing.assert_allclose([[s for _, s in g] for g in got], [[s for _, s in w] for w in want], atol=1e-6)
