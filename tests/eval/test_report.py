"""Report files and figures: valid files with the right content."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tvt.errors import DataError
from tvt.eval.metrics import retrieval_metrics
from tvt.eval.grid import GREEN, GREY, RED, grid_cell_box, grid_size_hint, retrieval_grid
from tvt.eval.report import (
    embedding_plot,
    format_table,
    per_class_table,
    plot_per_class_bar,
    pr_curve,
    write_per_class_csv,
    write_results,
)


def test_write_results_scalars_only(tmp_path):
    metrics = {"mAP@all": np.float64(0.25), "n_queries": np.int64(4), "per_query": {"mAP@all": np.zeros(4)}}
    path = write_results(metrics, tmp_path / "sub" / "res.json")
    assert json.loads(path.read_text()) == {"mAP@all": 0.25, "n_queries": 4}
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_format_table():
    text = format_table(
        {"tvt": {"mAP@all": 0.123456, "P@100": 0.5, "n_queries": 10}, "baseline-long-name": {"mAP@all": 1 / 3}},
        ["mAP@all", "P@100", "n_queries"],
    )
    lines = text.splitlines()
    assert lines[0].split() == ["name", "mAP@all", "P@100", "n_queries"]
    assert lines[2].split() == ["tvt", "0.1235", "0.5000", "10"]
    assert lines[3].split() == ["baseline-long-name", "0.3333", "-", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_per_class_table_csv_and_bar(tmp_path):
    per_query = {"mAP@all": np.array([1.0, 0.5, 0.2, 0.4, 0.0]), "P@1": np.array([1.0, 1.0, 0.0, 1.0, 0.0])}
    labels = np.array([0, 0, 2, 2, 2])
    rows = per_class_table(per_query, labels, ["cat", "dog", "owl"])
    assert [r["class"] for r in rows] == ["cat", "owl"]
    assert rows[0] == {"label": 0, "class": "cat", "n_queries": 2, "mAP@all": 0.75, "P@1": 1.0}
    assert rows[1]["mAP@all"] == pytest.approx(0.2) and rows[1]["P@1"] == pytest.approx(1 / 3)
    with open(write_per_class_csv(rows, tmp_path / "pc.csv"), newline="") as f:
        read = list(csv.DictReader(f))
    assert read[1]["class"] == "owl" and float(read[1]["mAP@all"]) == pytest.approx(0.2)
    png = plot_per_class_bar(rows, tmp_path / "bar.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 400 and im.height >= 300
    with pytest.raises(DataError):
        plot_per_class_bar(rows, tmp_path / "x.png", metric="mAP@7")
    with pytest.raises(DataError, match="no class name"):
        per_class_table(per_query, labels, ["cat"])


def test_per_class_from_retrieval_metrics():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((20, 4)), rng.standard_normal((30, 4))
    ql, gl = rng.integers(0, 3, 20), rng.integers(0, 3, 30)
    res = retrieval_metrics(q, ql, g, gl, return_per_query=True)
    rows = per_class_table(res["per_query"], ql, ["a", "b", "c"])
    weighted = sum(r["mAP@all"] * r["n_queries"] for r in rows) / 20
    assert weighted == pytest.approx(res["mAP@all"])  # mAP is the mean over queries, not classes


def test_pr_curve_hand_computed(tmp_path):
    # one query, ranking relevance 0 1 1 0 1 (N_rel = 3)
    angles = 0.1 * np.arange(5)
    g = np.stack([np.cos(angles), np.sin(angles)], 1)
    out = pr_curve([[1.0, 0.0]], [1], g, [0, 1, 1, 0, 1], tmp_path / "pr.png", recall_points=11)
    # hits at ranks 2, 3, 5: precision 1/2, 2/3, 3/5; recall 1/3, 2/3, 1
    best = [2 / 3, 2 / 3, 3 / 5]
    expected = [best[0] if t <= 1 / 3 + 1e-9 else best[1] if t <= 2 / 3 + 1e-9 else best[2] for t in out["recall"]]
    np.testing.assert_allclose(out["precision"], expected)
    with Image.open(tmp_path / "pr.png") as im:
        assert im.format == "PNG" and im.size == (500, 420)


def test_pr_curve_perfect_and_sampled():
    x = np.repeat(np.eye(3), 4, axis=0) + 0.01 * np.random.default_rng(0).standard_normal((12, 3))
    labels = np.repeat(np.arange(3), 4)
    out = pr_curve(x, labels, x, labels, None, n_queries=5, recall_points=101)
    assert out["recall"].shape == (101,)
    np.testing.assert_allclose(out["precision"], 1.0)


class _StubTSNE:
    """Stands in for sklearn's TSNE (slow): records its arguments, returns the first two columns."""

    calls: list[dict] = []

    def __init__(self, n_components, **kwargs):
        _StubTSNE.calls.append(dict(n_components=n_components, **kwargs))

    def fit_transform(self, x):
        return x[:, :2]


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_plot(tmp_path, method, monkeypatch):
    sklearn_manifold = pytest.importorskip("sklearn.manifold")
    monkeypatch.setattr(sklearn_manifold, "TSNE", _StubTSNE)
    _StubTSNE.calls.clear()
    rng = np.random.default_rng(0)
    feats = {
        "photo": (rng.standard_normal((30, 8)), rng.integers(0, 3, 30)),
        "sketch": (rng.standard_normal((20, 8)), rng.integers(0, 3, 20)),
    }
    png = embedding_plot(feats, ["a", "b", "c"], tmp_path / f"{method}.png", method=method, max_points=40)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (800, 600)
    assert len(_StubTSNE.calls) == (method == "tsne")
    if method == "tsne":  # 20 photos + 20 sketches after subsampling; perplexity must stay below N
        assert _StubTSNE.calls[0]["n_components"] == 2 and _StubTSNE.calls[0]["perplexity"] < 40
    with pytest.raises(DataError, match="same feature dimension"):
        embedding_plot({"a": feats["photo"], "b": (np.ones((3, 5)), [0, 1, 2])}, ["x"] * 3, tmp_path / "e.png")


def test_embedding_plot_falls_back_to_pca_without_sklearn(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    x = np.random.default_rng(1).standard_normal((12, 4))
    png = embedding_plot({"photo": (x, np.arange(12) % 2)}, ["a", "b"], tmp_path / "e.png", method="tsne")
    with Image.open(png) as im:
        assert im.format == "PNG"


def _solid(path, colour, size=(20, 12)):
    Image.new("RGB", size, colour).save(path)
    return path


def test_retrieval_grid_frames(tmp_path):
    blue, yellow = (0, 0, 255), (255, 255, 0)
    qs = [_solid(tmp_path / "q0.png", blue), _solid(tmp_path / "q1.png", blue)]
    res = [_solid(tmp_path / f"r{i}.png", yellow) for i in range(3)]
    correct = np.array([[True, False, True], [False, True, False]])
    out = retrieval_grid(qs, [res, res[::-1]], correct, tmp_path / "grid.png", k=3, thumb=16)
    with Image.open(out) as im:
        img = im.convert("RGB")
    assert img.size == grid_size_hint(2, 3, thumb=16)
    for i in range(2):
        x0, y0, x1, y1 = grid_cell_box(i, 0, thumb=16)
        assert img.getpixel((x0, y0)) == GREY and img.getpixel((x1 - 1, y1 - 1)) == GREY
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == blue
        for j in range(3):
            x0, y0, x1, y1 = grid_cell_box(i, j + 1, thumb=16)
            frame = GREEN if correct[i, j] else RED
            assert img.getpixel((x0 + 1, y0 + 1)) == frame and img.getpixel((x1 - 1, (y0 + y1) // 2)) == frame
            assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == yellow
    # cells do not overlap and the results column starts after the query column
    assert grid_cell_box(0, 1, 16)[0] > grid_cell_box(0, 0, 16)[2]


def test_retrieval_grid_errors(tmp_path):
    q = _solid(tmp_path / "q.png", (0, 0, 0))
    with pytest.raises(DataError, match="cannot read"):
        retrieval_grid([q], [[tmp_path / "missing.png"]], [[True]], tmp_path / "g.png", k=1)
    with pytest.raises(DataError, match="one row per query"):
        retrieval_grid([q, q], [[q]], [[True]], tmp_path / "g.png", k=1)


def test_labelled_retrieval_grid_and_chance_levels(tmp_path):
    from tvt.eval.report import chance_levels

    qs = []
    for i in range(2):
        p = tmp_path / f"q{i}.png"
        Image.new("RGB", (16, 16), (i * 100, 50, 50)).save(p)
        qs.append(p)
    plain = retrieval_grid(qs, [qs, qs[::-1]], [[True, False], [False, True]], tmp_path / "plain.png", k=2, thumb=16)
    labelled = retrieval_grid(qs, [qs, qs[::-1]], [[True, False], [False, True]], tmp_path / "lab.png", k=2, thumb=16,
                              query_names=["a", "b"], result_names=[["a", "b"], ["a", "b"]], title="t")
    with Image.open(plain) as a, Image.open(labelled) as b:
        assert b.width > a.width and b.height > a.height  # captions, title and legend around the grid
    # 400 queries of class 0 against 2 relevant of 6: P@k at chance is 1/3 for every k
    c = chance_levels(np.zeros(400, dtype=int), np.array([0, 0, 1, 1, 1, 1]), ks_map=(3,), ks_prec=(3,), repeats=5)
    assert c["P@3"] == pytest.approx(1 / 3, abs=0.02)
    # expected AP of a random ranking, exactly: all 15 placements of 2 relevant items among 6, each with the
    # precision envelope (best precision at this or a later hit) averaged over the hits
    from itertools import combinations

    def envelope_ap(pos: tuple[int, ...]) -> float:
        prec = [(i + 1) / (r + 1) for i, r in enumerate(pos)]
        return float(np.mean([max(prec[i:]) for i in range(len(prec))]))

    exact = np.mean([envelope_ap(pos) for pos in combinations(range(6), 2)])
    assert c["mAP@all"] == pytest.approx(exact, abs=0.02)


def test_figures_leave_the_global_matplotlib_backend_alone(tmp_path):
    """Reports draw on their own Figure objects: the caller's pyplot backend is never switched."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("template")  # a backend the report code would have overridden with Agg
    try:
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((12, 4)), np.repeat([0, 1, 2], 4)
        plot_per_class_bar([{"class": "a", "mAP@all": 0.5}, {"class": "b", "mAP@all": 0.25}], tmp_path / "bar.png")
        pr_curve(x, y, x, y, tmp_path / "pr.png")
        embedding_plot({"photo": (x, y), "sketch": (x, y)}, ["a", "b", "c"], tmp_path / "map.png", method="pca")
        assert matplotlib.get_backend() == "template"
    finally:
        matplotlib.use(before)
    for name in ("bar.png", "pr.png", "map.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 100
