"""ITQ binary codes and Hamming ranking (spec §6.6, [Q34])."""

from __future__ import annotations

import numpy as np
import pytest

from tvt.errors import DataError
from tvt.eval.binary import (
    ITQ,
    binary_retrieval_metrics,
    fit_itq,
    hamming_scores,
    procrustes_rotation,
    random_rotation,
)
from tvt.eval.metrics import retrieval_metrics
from tvt.eval.metrics_reference import reference_metrics


def correlated(seed: int, n: int = 400, d: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return x.astype(np.float32).astype(np.float64)  # features are float32; ITQ works in float64


def pca_projection(x: np.ndarray, bits: int) -> np.ndarray:
    """Independent PCA: L2-normalise, centre, SVD of the data (not of the covariance)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:bits].T


def test_quantization_loss_non_increasing_with_correct_update():
    for seed in range(3):
        model = fit_itq(correlated(seed), n_bits=12, n_iter=30, seed=seed)
        h = model.quantization_loss_history
        assert h.shape == (31,)
        assert np.all(np.diff(h) <= 1e-10 * h[0]), h
        assert h[-1] < h[0]


def test_compat_update_is_the_official_transposed_one():
    """Literal transcription of the official helper's loop, from the same starting rotation."""
    x, bits, seed = correlated(3), 10, 50
    model = fit_itq(x, n_bits=bits, n_iter=4, seed=seed, compat=True)
    v = (x / np.linalg.norm(x, axis=1, keepdims=True)) - (x / np.linalg.norm(x, axis=1, keepdims=True)).mean(0)
    v = v @ model.components
    np.random.seed(seed)  # the official helper reseeds the global RNG with n_iter (= 50)
    r = np.linalg.svd(np.random.randn(bits, bits))[0][:, :bits]
    for _ in range(4):
        z = np.matmul(v, r)
        ux = np.ones(z.shape) * -1
        ux[z >= 0] = 1
        c = np.matmul(np.transpose(ux), v)
        ub, sigma, ua = np.linalg.svd(c)
        r = np.matmul(ua, np.transpose(ub))
    np.testing.assert_allclose(model.rotation, r, atol=1e-10)
    # and the correct update really is different, and ends lower
    correct = fit_itq(x, n_bits=bits, n_iter=4, seed=seed)
    assert not np.allclose(correct.rotation, model.rotation)
    assert correct.quantization_loss_history[-1] < model.quantization_loss_history[-1]


def test_correct_update_matches_polar_decomposition_reference():
    """R = M (M^T M)^(-1/2) with M = V^T B is the orthogonal Procrustes solution, computed without SVD."""
    x, bits, seed = correlated(4), 8, 1
    model = fit_itq(x, n_bits=bits, n_iter=3, seed=seed)
    v = pca_projection(x, bits)
    # PCA directions are defined up to sign: align the reference's signs with the model's
    v_model = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ model.components
    signs = np.sign(np.sum((v_model - v_model.mean(0)) * v, axis=0))
    v = v * signs
    r = random_rotation(bits, seed)
    for _ in range(3):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        m = v.T @ b
        evals, evecs = np.linalg.eigh(m.T @ m)
        r = m @ (evecs @ np.diag(evals**-0.5) @ evecs.T)
    np.testing.assert_allclose(model.rotation, r, atol=1e-8)
    assert np.array_equal(model.encode(x), v @ r > 0)


def test_procrustes_rotation_is_orthogonal_and_optimal():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((200, 6))
    b = np.where(rng.standard_normal((200, 6)) >= 0, 1.0, -1.0)
    r = procrustes_rotation(v, b)
    np.testing.assert_allclose(r.T @ r, np.eye(6), atol=1e-12)
    best = np.linalg.norm(b - v @ r)
    for _ in range(20):  # no random rotation does better
        assert np.linalg.norm(b - v @ random_rotation(6, int(rng.integers(1 << 30)))) >= best - 1e-9


def test_codes_shape_dtype_and_centering():
    x = correlated(5)
    model = fit_itq(x, n_bits=16, n_iter=5)
    codes = model.encode(x)
    assert codes.shape == (400, 16) and codes.dtype == np.bool_
    assert 0.3 < codes.mean() < 0.7  # centred projections split roughly evenly
    shifted = x[:50] + 0.0
    xn = shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    own = (xn - xn.mean(0)) @ model.components @ model.rotation > 0
    train = (xn - model.mean) @ model.components @ model.rotation > 0
    assert np.array_equal(model.encode(shifted, center="own"), own)
    assert np.array_equal(model.encode(shifted, center="train"), train)
    with pytest.raises(ValueError):
        model.encode(x, center="median")


def test_save_load_round_trip(tmp_path):
    model = fit_itq(correlated(6), n_bits=8, n_iter=3, compat=True)
    model.save(tmp_path / "itq.npz")
    loaded = ITQ.load(tmp_path / "itq.npz")
    for name in ("mean", "components", "rotation", "quantization_loss_history"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.compat and loaded.l2_normalize and loaded.n_bits == 8
    np.savez(tmp_path / "other.npz", features=np.ones(3))
    with pytest.raises(DataError, match="not a tvt ITQ model"):
        ITQ.load(tmp_path / "other.npz")
    with pytest.raises(DataError, match="cannot read"):
        ITQ.load(tmp_path / "missing.npz")


def test_fit_errors():
    with pytest.raises(DataError, match="n_bits"):
        fit_itq(correlated(0, d=8), n_bits=9)
    with pytest.raises(DataError, match="all-zero"):
        fit_itq(np.zeros((10, 4)), n_bits=2)


def test_hamming_scores_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 13)) > 0.5, rng.integers(0, 2, (9, 13))
    s = hamming_scores(a, b)
    assert s.dtype == np.int32 and s.shape == (7, 9)
    expected = -np.array([[np.sum(x != y) for y in b.astype(bool)] for x in a])
    np.testing.assert_array_equal(s, expected)
    with pytest.raises(DataError, match="0/1"):
        hamming_scores(np.full((2, 3), 2), b[:, :3])


def test_hamming_ranking_ties_are_stable():
    rng = np.random.default_rng(1)
    qc, gc = rng.random((30, 6)) > 0.5, rng.random((80, 6)) > 0.5  # 7 distances: ties everywhere
    ql, gl = rng.integers(0, 4, 30), rng.integers(0, 4, 80)
    ks = dict(ks_map=(5, 200), ks_prec=(10, 100))
    ref = reference_metrics(hamming_scores(qc, gc), ql, gl, **ks)
    got = retrieval_metrics(qc, ql, gc, gl, scores="hamming", return_per_query=True, chunk=6, **ks)
    for name, values in ref["per_query"].items():
        np.testing.assert_allclose(got["per_query"][name], values, rtol=0, atol=1e-12)
    # two identical gallery codes: the lower index ranks first
    q, g = np.array([[1, 0, 1]]), np.array([[0, 1, 0], [1, 0, 1], [1, 0, 1]])
    assert retrieval_metrics(q, [1], g, [0, 0, 1], scores="hamming")["mAP@all"] == pytest.approx(0.5)
    assert retrieval_metrics(q, [1], g, [0, 1, 0], scores="hamming")["mAP@all"] == pytest.approx(1.0)


def test_binary_retrieval_metrics_end_to_end():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((3, 16)) * 3
    gl, ql = rng.integers(0, 3, 120), rng.integers(0, 3, 40)
    g = centres[gl] + rng.standard_normal((120, 16))
    q = centres[ql] + rng.standard_normal((40, 16))
    res = binary_retrieval_metrics(q, ql, g, gl, n_bits=8, n_iter=10, ks_map=(10,), ks_prec=(10,))
    model = fit_itq(g, n_bits=8, n_iter=10)
    assert res == retrieval_metrics(model.encode(q), ql, model.encode(g), gl, scores="hamming", ks_map=(10,),
                                    ks_prec=(10,))
    assert res["mAP@all"] > 0.6  # well-separated classes survive 8-bit codes


def test_stage_c_binary_rows_are_itq_codes_of_the_gallery():
    """``eval.binary_bits``: ITQ fitted on the gallery photos, both sets coded, ranked by Hamming distance."""
    from tvt import config
    from tvt.eval.evaluate import score_features

    rng = np.random.default_rng(3)
    feats = {"q": rng.standard_normal((40, 16)), "q_labels": rng.integers(0, 4, 40),
             "g": rng.standard_normal((60, 16)), "g_labels": rng.integers(0, 4, 60)}
    m = score_features(feats, config.load([], ["eval.binary_bits=8"]))
    itq = fit_itq(feats["g"], n_bits=8)
    ref = retrieval_metrics(itq.encode(feats["q"]), feats["q_labels"], itq.encode(feats["g"]), feats["g_labels"],
                            scores="hamming")
    assert {k: m[f"binary8/{k}"] for k in ("mAP@all", "mAP@200", "P@100", "P@200")} == {
        k: ref[k] for k in ("mAP@all", "mAP@200", "P@100", "P@200")}
