"""Search backends against brute force: exact torch, FAISS flat (same answers), IVF/HNSW (recall)."""

from __future__ import annotations

import numpy as np
import pytest

from tvt.errors import InputError
from tvt.search.backends import (
    AUTO_APPROX_MIN,
    ExactBackend,
    calibrate,
    calibration_queries,
    choose_backend,
    ivf_nlist,
    make_backend,
    recall_at_k,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(n: int = 3000, d: int = 32, centres: int = 30, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres, like embeddings of photos of a few kinds of thing."""
    rng = np.random.default_rng(seed)
    c = _unit(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full score matrix, sorted by (-score, id) with a stable sort."""
    s = q.astype(np.float64) @ db.T.astype(np.float64)
    ids = np.stack([np.lexsort((np.arange(len(db)), -row))[:k] for row in s])
    return np.take_along_axis(s, ids, 1), ids


def test_exact_matches_brute_force():
    rng = np.random.default_rng(1)
    db, q = _unit(rng, 500, 24), _unit(rng, 7, 24)
    scores, ids = ExactBackend(db, query_block=3).search(q, 10)
    ref_s, ref_i = _brute(db, q, 10)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    s1, i1 = ExactBackend(db).search(q[0], 10)  # a single [D] vector is one query
    np.testing.assert_array_equal(i1[0], ref_i[0])


def test_exact_ties_are_ordered_by_id_and_k_is_clamped():
    db = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # rows 0-2 equal, 3-5 equal, ...
    scores, ids = ExactBackend(db).search(np.eye(4, dtype=np.float32)[1], 3)
    assert ids.tolist() == [[3, 4, 5]] and scores.tolist() == [[1.0, 1.0, 1.0]]
    scores, ids = ExactBackend(db).search(np.eye(4, dtype=np.float32)[:2], 100)
    assert ids.shape == (2, 12) and ids[0, :3].tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="shape"):
        ExactBackend(db).search(np.ones((1, 5), np.float32), 3)


def test_recall_and_nlist_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, 1], [5, 0, 0, 0]])
    assert recall_at_k(approx, exact, 4) == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert recall_at_k(approx, exact, 1) == pytest.approx(0.5)  # 4 vs 1 miss, 5 vs 5 hit
    assert ivf_nlist(1) == 1 and ivf_nlist(10_000) == 256  # 2 sqrt(n) = 200 -> nearest power of two
    assert ivf_nlist(1_000_000) == 2048  # 2 sqrt(n) = 2000
    assert ivf_nlist(1_000) == 16  # 2 sqrt(n) = 63 -> 64, halved below n / 39 = 25.6
    assert ivf_nlist(50) == 1
    assert choose_backend(AUTO_APPROX_MIN - 1, True) == "exact"
    assert choose_backend(10 * AUTO_APPROX_MIN, False) == "exact"
    assert choose_backend(AUTO_APPROX_MIN, True) == "compact-exact"  # exact quality by default
    assert choose_backend(AUTO_APPROX_MIN, True, target=0.95) == "faiss-ivf"


def test_faiss_flat_agrees_with_exact():
    pytest.importorskip("faiss")
    db = _clustered(2000)
    q = calibration_queries(db, n=20, seed=3)
    s_exact, i_exact = make_backend("exact", db).search(q, 50)
    s_flat, i_flat = make_backend("faiss-flat", db).search(q, 50)
    np.testing.assert_allclose(s_flat, s_exact, atol=1e-5)
    # ids agree wherever the scores are not (numerically) tied
    gaps = np.diff(s_exact, axis=1)
    distinct = np.concatenate([np.abs(gaps) > 1e-5, np.ones((len(q), 1), bool)], axis=1)
    distinct &= np.concatenate([np.ones((len(q), 1), bool), np.abs(gaps) > 1e-5], axis=1)
    assert (i_flat[distinct] == i_exact[distinct]).all()


@pytest.mark.parametrize("name", ["faiss-ivf", "faiss-hnsw"])
def test_approximate_backends_reach_target_recall(name, tmp_path):
    pytest.importorskip("faiss")
    db = _clustered(3000)
    backend = make_backend(name, db, target_recall=0.95, k_calibrate=20, cache_dir=tmp_path, cache_key="abc")
    q = calibration_queries(db, n=50, seed=7)  # other queries than the calibration ones
    _, exact_ids = ExactBackend(db).search(q, 20)
    _, ids = backend.search(q, 20)
    assert backend.params["recall@20"] >= 0.95
    assert recall_at_k(ids, exact_ids, 20) >= 0.9
    cached = make_backend(name, db, cache_dir=tmp_path, cache_key="abc")  # loaded, not rebuilt
    assert cached.params == backend.params
    np.testing.assert_array_equal(cached.search(q, 20)[1], ids)
    make_backend(name, db[:2000], k_calibrate=20, cache_dir=tmp_path, cache_key="def")  # the index changed
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}-def.faiss", f"{name}-def.json"]


def test_calibrate_picks_smallest_sufficient_nprobe():
    pytest.importorskip("faiss")
    from tvt.search.backends import build_faiss

    db = _clustered(3000)
    q = calibration_queries(db, n=40)
    _, exact_ids = ExactBackend(db).search(q, 10)
    b = build_faiss("faiss-ivf", db)
    reached = calibrate(b, q, exact_ids, 10, target=0.9)
    chosen = b.params["nprobe"]
    assert reached >= 0.9
    if chosen > 1:  # half of it must fall short, or calibration stopped too late
        b.set_param(chosen // 2)
        assert recall_at_k(b.search(q, 10)[1], exact_ids, 10) < 0.9
    b.set_param(b.params["nlist"])  # probing every list is exact
    assert recall_at_k(b.search(q, 10)[1], exact_ids, 10) == pytest.approx(1.0)


def test_unknown_backend_and_empty_index():
    with pytest.raises(InputError, match="unknown search backend"):
        make_backend("annoy", np.zeros((3, 4), np.float32))
    empty = make_backend("exact", np.zeros((0, 4), np.float32))
    s, i = empty.search(np.ones((2, 4), np.float32), 5)
    assert s.shape == (2, 0) and i.shape == (2, 0)
