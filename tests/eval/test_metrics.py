"""Retrieval metrics against hand-computed values and a brute-force per-query reference."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from tvt.cli import main
from tvt.errors import DataError
from tvt.eval.metrics import (
    _relevant_ranks,
    iter_relevant_ranks,
    order_keys,
    retrieval_metrics,
    score_matrix,
)
from tvt.eval.metrics_reference import average_precision_reference, precision_reference, reference_metrics

KS = dict(ks_map=(1, 3, 10, 1000), ks_prec=(1, 5, 10, 1000))


def exact_features(rng: np.random.Generator, n: int, dim: int = 6) -> np.ndarray:
    """Vectors with four ±1 entries: norm 2, so normalised dot products are exact multiples of 1/4
    (every BLAS path gives the same scores, and ties are everywhere)."""
    x = np.zeros((n, dim), np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return x


def ranked_gallery(relevance: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One query and a gallery whose ranking (strictly decreasing scores) has the given relevance."""
    angles = 0.1 * np.arange(len(relevance))
    g = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    return np.array([[1.0, 0.0]], np.float32), np.array([1]), g, np.array(relevance)


def assert_per_query_equal(got: dict, ref: dict, atol: float = 1e-12) -> None:
    for name, values in ref["per_query"].items():
        np.testing.assert_allclose(got["per_query"][name], values, rtol=0, atol=atol, err_msg=name)
        assert got[name] == pytest.approx(ref[name], abs=atol)


# ----------------------------------------------------------------------------------------------
# worked examples of spec §6.2


def test_worked_example_reference_functions():
    rel = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 0])
    assert average_precision_reference(rel, 4, None) == pytest.approx((2 / 3 + 2 / 3 + 3 / 5 + 4 / 9) / 4, abs=1e-15)
    assert average_precision_reference(rel, 4, None) == pytest.approx(0.594444, abs=5e-7)
    assert average_precision_reference(rel, 4, 5) == pytest.approx(0.483333, abs=5e-7)
    assert average_precision_reference(rel, 4, 3) == pytest.approx(0.444444, abs=5e-7)
    assert precision_reference(rel, 100) == pytest.approx(0.4)
    assert precision_reference(rel, 5) == pytest.approx(0.6)
    assert precision_reference(rel, 3) == pytest.approx(0.666667, abs=5e-7)
    assert average_precision_reference(np.array([1, 0, 0, 1, 1]), 3, None) == pytest.approx(0.733333, abs=5e-7)
    assert average_precision_reference(np.zeros(4, int), 0, None) == 0.0  # documented convention


def test_worked_examples_fast_path():
    q, ql, g, gl = ranked_gallery([0, 1, 1, 0, 1, 0, 0, 0, 1, 0])
    res = retrieval_metrics(q, ql, g, gl, ks_map=(5, 3), ks_prec=(100, 5, 3))
    assert res["mAP@all"] == pytest.approx(0.594444, abs=5e-7)
    assert res["mAP@5"] == pytest.approx(0.483333, abs=5e-7)
    assert res["mAP@3"] == pytest.approx(0.444444, abs=5e-7)
    assert res["P@100"] == pytest.approx(0.4) and res["P@5"] == pytest.approx(0.6)
    assert res["P@3"] == pytest.approx(2 / 3)
    assert (res["n_queries"], res["n_gallery"]) == (1, 10)
    q, ql, g, gl = ranked_gallery([1, 0, 0, 1, 1])
    assert retrieval_metrics(q, ql, g, gl)["mAP@all"] == pytest.approx(0.733333, abs=5e-7)


# ----------------------------------------------------------------------------------------------
# brute-force comparisons


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    sizes = [1, 1, 2, 5, 15, 40]  # single items, classes smaller and larger than k
    gl = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    ql = rng.integers(0, len(sizes), 50)
    q, g = exact_features(rng, 50), exact_features(rng, len(gl))
    ref = reference_metrics(score_matrix(q, g), ql, gl, **KS)
    got = retrieval_metrics(q, ql, g, gl, return_per_query=True, **KS)
    assert_per_query_equal(got, ref)


def test_matches_reference_random_float_features():
    rng = np.random.default_rng(7)
    q, g = rng.standard_normal((40, 16)), rng.standard_normal((300, 16))
    ql, gl = rng.integers(0, 4, 40), rng.integers(0, 4, 300)
    ref = reference_metrics(score_matrix(q, g), ql, gl, ks_map=(5, 50, 200), ks_prec=(10, 100))
    got = retrieval_metrics(q, ql, g, gl, ks_map=(5, 50, 200), ks_prec=(10, 100), return_per_query=True)
    assert_per_query_equal(got, ref)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(3)
    q, g = exact_features(rng, 20), exact_features(rng, 30)
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 30)
    a = retrieval_metrics(q, ql, g, gl)
    qt = torch.from_numpy(q).requires_grad_(True)  # e.g. straight from a model
    b = retrieval_metrics(qt, torch.from_numpy(ql), torch.from_numpy(g), torch.from_numpy(gl), device="cpu")
    assert a == b


def brute_force_ranks(s: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """rank_j = 1 + #{i: s_i > s_j or (s_i == s_j and i < j)}, sorted, for each row."""
    out = []
    for row in s:
        r = [1 + np.sum((row > row[j]) | ((row == row[j]) & (np.arange(len(row)) < j))) for j in rel]
        out.append(np.sort(r))
    return np.array(out)


@pytest.mark.parametrize("n_bins", [1, 4, 1024])
@pytest.mark.parametrize("kind", ["ties", "float", "constant", "concentrated", "all_relevant"])
def test_relevant_ranks_brute_force(kind, n_bins):
    rng = np.random.default_rng(n_bins)
    g = 80
    s = {
        "ties": rng.integers(-3, 4, (5, g)) / 4,
        "float": rng.standard_normal((5, g)),
        "constant": np.full((5, g), 0.5),
        "concentrated": 0.9 + rng.integers(0, 6, (5, g)) * 6e-8,  # spread << magnitude: coarse float bins
        "all_relevant": rng.integers(-2, 3, (5, g)) / 2,
    }[kind].astype(np.float32)
    s[0, :3] = [0.0, -0.0, 0.0]  # signed zeros tie
    rel = np.arange(g) if kind == "all_relevant" else np.sort(rng.choice(g, 17, replace=False))
    ranks, idx = _relevant_ranks(torch.from_numpy(s), torch.from_numpy(rel), n_bins)
    np.testing.assert_array_equal(ranks.numpy(), brute_force_ranks(s, rel))
    # ranked_idx lists the relevant items in rank order
    for row, order in zip(s, idx.numpy()):
        assert set(order) == set(rel)
        assert all(row[a] > row[b] or (row[a] == row[b] and a < b) for a, b in zip(order, order[1:]))


def test_order_keys_match_stable_descending_sort():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3e38, -3e38, 1.0, -1.0], np.float32)
    noise = rng.standard_normal(200).astype(np.float32)
    s = np.concatenate([special, noise, special, np.round(noise[:50])]).astype(np.float32)
    keys = order_keys(torch.from_numpy(s), torch.arange(len(s)))
    np.testing.assert_array_equal(torch.argsort(keys).numpy(), np.argsort(-s, kind="stable"))


# ----------------------------------------------------------------------------------------------
# options and invariances


def test_chunking_invariance():
    rng = np.random.default_rng(11)
    q, g = exact_features(rng, 45), exact_features(rng, 70)
    ql, gl = rng.integers(0, 5, 45), rng.integers(0, 5, 70)
    runs = [retrieval_metrics(q, ql, g, gl, chunk=c, return_per_query=True, **KS) for c in (1, 7, None, 1000)]
    for other in runs[1:]:
        for name in runs[0]["per_query"]:
            np.testing.assert_array_equal(other["per_query"][name], runs[0]["per_query"][name])


def test_exclude_self_matches_reference():
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.repeat(np.arange(5), [1, 3, 6, 10, 20]))  # class 0: only the query itself
    x = exact_features(rng, len(labels))
    ref = reference_metrics(score_matrix(x, x), labels, labels, exclude_self=True, **KS)
    with pytest.warns(RuntimeWarning, match="no relevant gallery item"):
        got = retrieval_metrics(x, labels, x, labels, exclude_self=True, chunk=4, return_per_query=True, **KS)
    assert_per_query_equal(got, ref)
    assert got["per_query"]["mAP@all"][labels == 0].tolist() == [0.0]
    # keeping the query [Q32]: it is retrieved first, so P@1 is 1 for every query
    y = rng.standard_normal((len(labels), 8))
    assert retrieval_metrics(y, labels, y, labels, ks_prec=(1,))["P@1"] == 1.0
    with pytest.raises(DataError, match="same set"):
        retrieval_metrics(x, labels, x[:-1], labels[:-1], exclude_self=True)


def test_stable_ties_lower_gallery_index_first():
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], np.float32)  # items 1 and 2 tie
    # relevant item at index 2 ranks after the non-relevant duplicate at index 1 -> AP = 1/2
    assert retrieval_metrics(q, [7], g, np.array([0, 0, 7]))["mAP@all"] == pytest.approx(0.5)
    assert retrieval_metrics(q, [7], g, np.array([0, 7, 0]))["mAP@all"] == pytest.approx(1.0)
    (_, ranks, _), = iter_relevant_ranks(q, [7], g, np.array([0, 0, 7]))
    assert ranks.tolist() == [[2]]


def test_query_class_missing_from_gallery_scores_zero():
    q = np.eye(3, dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="1 queries have no relevant"):
        res = retrieval_metrics(q, [0, 1, 9], q, [0, 1, 2], return_per_query=True)
    assert res["per_query"]["mAP@all"].tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.__setitem__("q", np.full((3, 4), np.nan)), "NaN/Inf"),
        (lambda a: a.__setitem__("g", np.zeros((5, 4))), "all-zero"),
        (lambda a: a.__setitem__("ql", np.zeros(2, int)), "2 labels for 3"),
        (lambda a: a.__setitem__("gl", np.zeros(5)), "must be integers"),
        (lambda a: a.__setitem__("q", np.ones((0, 4))), "empty"),
        (lambda a: a.__setitem__("g", np.ones((5, 3))), "different dimensions"),
        (lambda a: a.__setitem__("q", np.ones(4)), "2-D"),
    ],
)
def test_bad_inputs_raise_data_error(change, match):
    args = {"q": np.ones((3, 4)), "ql": np.zeros(3, int), "g": np.ones((5, 4)), "gl": np.zeros(5, int)}
    change(args)
    with pytest.raises(DataError, match=match):
        retrieval_metrics(args["q"], args["ql"], args["g"], args["gl"])


# ----------------------------------------------------------------------------------------------
# `tvt metrics`


def _save(path, feats, labels, **extra):
    np.savez(path, features=feats, labels=labels, **extra)
    return str(path)


def test_cli_json_equals_retrieval_metrics(tmp_path, capsys):
    rng = np.random.default_rng(2)
    q, g = rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((50, 8)).astype(np.float32)
    ql, gl = rng.integers(0, 3, 30), rng.integers(0, 3, 50)
    qp, gp = _save(tmp_path / "q.npz", q, ql), _save(tmp_path / "g.npz", g, gl)
    out = tmp_path / "res.json"
    assert main(["metrics", qp, gp, "--json", str(out), "--binary", "8"]) == 0
    data = json.loads(out.read_text())
    expected = retrieval_metrics(q, ql, g, gl)
    assert {k: data[k] for k in expected} == expected
    assert set(data) == set(expected) | {f"binary/{k}" for k in ("mAP@all", "mAP@200", "P@100", "P@200")}
    from tvt.eval.binary import fit_itq  # the binary rows: ITQ fitted on the gallery, codes ranked by Hamming

    itq = fit_itq(g, n_bits=8)
    binary = retrieval_metrics(itq.encode(q), ql, itq.encode(g), gl, scores="hamming")
    assert {f"binary/{k}": binary[k] for k in ("mAP@all", "mAP@200", "P@100", "P@200")} == {
        k: v for k, v in data.items() if k.startswith("binary/")}
    assert "mAP@all" in capsys.readouterr().out
    assert main(["metrics", qp, qp, "--json", str(out), "--exclude-self", "--map-k", "5", "--prec-k", "3"]) == 0
    assert json.loads(out.read_text()) == retrieval_metrics(q, ql, q, ql, exclude_self=True, ks_map=(5,), ks_prec=(3,))


@pytest.mark.parametrize(
    "content, match",
    [
        (dict(feats=np.ones((3, 4))), "missing key 'features'"),
        (dict(features=np.ones((3, 4))), "missing key 'labels'"),
        (dict(features=np.ones((3, 4)), labels=np.zeros(2, int)), "key 'labels'"),
        (dict(features=np.full((3, 4), np.inf), labels=np.zeros(3, int)), "key 'features'.*NaN"),
        (dict(features=np.ones((3, 4, 1)), labels=np.zeros(3, int)), "key 'features'.*2-D"),
        (dict(features=np.ones((3, 5)), labels=np.zeros(3, int)), "dimension 4"),
    ],
)
def test_cli_bad_npz_exit_2(tmp_path, capsys, content, match):
    good = _save(tmp_path / "good.npz", np.ones((3, 4), np.float32), np.zeros(3, int))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **content)
    assert main(["metrics", good, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvt: error:") and "bad.npz" in err
    assert re.search(match, err), err


def test_cli_missing_file_exit_2(tmp_path, capsys):
    assert main(["metrics", str(tmp_path / "nope.npz"), str(tmp_path / "nope.npz")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_no_warning_for_normal_data():
    rng = np.random.default_rng(1)
    q = exact_features(rng, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrieval_metrics(q, np.arange(10) % 2, q, np.arange(10) % 2)
