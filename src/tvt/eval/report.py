"""Evaluation reports: result files, terminal tables, per-class tables and figures.

Figures use matplotlib with the Agg backend (imported inside the functions, so importing this
module stays cheap) except :func:`retrieval_grid`, which needs only PIL.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import DataError
from tvt.eval.metrics import check_features, check_labels, iter_relevant_ranks

GREEN = (0, 170, 0)
RED = (210, 0, 0)
GREY = (128, 128, 128)
GRID_PAD, GRID_BORDER, GRID_GAP = 4, 3, 12


# ----------------------------------------------------------------------------------------------
# numbers


def write_results(metrics: Mapping[str, Any], path_json: str | Path) -> Path:
    """Write the scalar entries of ``metrics`` (not ``per_query``) as JSON, atomically; return the path."""
    path = Path(path_json)
    data = {k: _plain(v) for k, v in metrics.items() if k != "per_query"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (np.ndarray, torch.Tensor)):
        return np.asarray(v).tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def format_table(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str]) -> str:
    """Plain-text table: one row per name, one column per metric key, floats with 4 decimals."""
    header = ["name", *keys]
    body = [[str(name), *(_cell(r.get(k)) for k in keys)] for name, r in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4f}"
    return str(v)


def per_class_table(per_query: Mapping[str, Any], q_labels: Any, class_names: Sequence[str]) -> list[dict]:
    """Per-class means of per-query metrics: one dict per query class, in label order.

    ``per_query``: ``{metric name: [Q] values}`` (``retrieval_metrics(..., return_per_query=True)``);
    ``class_names[label]`` names each label. Rows: ``{"label", "class", "n_queries", <metric>...}``.
    """
    labels = np.asarray(q_labels)
    values = {name: np.asarray(v, dtype=np.float64) for name, v in per_query.items()}
    for name, v in values.items():
        if v.shape != labels.shape:
            raise DataError(f"per-query {name!r} has {v.shape[0]} values for {labels.shape[0]} query labels")
    rows = []
    for label in np.unique(labels):
        if not 0 <= label < len(class_names):
            raise DataError(f"query label {label} has no class name ({len(class_names)} names given)")
        mask = labels == label
        row: dict[str, Any] = {"label": int(label), "class": class_names[label], "n_queries": int(mask.sum())}
        row.update({name: float(v[mask].mean()) for name, v in values.items()})
        rows.append(row)
    return rows


def write_per_class_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write per-class rows (from :func:`per_class_table`) as CSV with a header line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0].keys()) if rows else ["label", "class", "n_queries"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


# ----------------------------------------------------------------------------------------------
# matplotlib figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_per_class_bar(rows: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "mAP@all") -> Path:
    """Bar chart PNG of ``metric`` per class, best class first."""
    if not rows or metric not in rows[0]:
        raise DataError(f"no per-class values of {metric!r} to plot")
    ordered = sorted(rows, key=lambda r: -r[metric])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(ordered) + 1.5), 4.0))
    ax.bar(range(len(ordered)), [r[metric] for r in ordered], color="tab:blue")
    ax.set_xticks(range(len(ordered)), [str(r["class"]) for r in ordered], rotation=90, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"{metric} per class (mean {np.mean([r[metric] for r in rows]):.4f} over classes)")
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig: Any, path: str | Path, plt: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pr_curve(
    q: Any,
    q_labels: Any,
    g: Any,
    g_labels: Any,
    path: str | Path | None,
    n_queries: int = 500,
    recall_points: int = 11,
    seed: int = 0,
    scores: str = "cosine",
    label: str | None = None,
) -> dict[str, np.ndarray]:
    """Mean interpolated precision-recall curve over a random sample of queries (PNG when ``path``).

    Interpolated precision at recall t is the best precision at any recall >= t (VOC style);
    ``recall_points`` levels 0, 1/(n-1), ..., 1 (11 or 101 are usual). Returns
    ``{"recall": [n], "precision": [n]}``.
    """
    if recall_points < 2:
        raise ValueError("recall_points must be at least 2")
    n_q = check_labels(q_labels, check_features(q, "query features").shape[0], "query labels").numel()
    pick = np.sort(np.random.default_rng(seed).permutation(n_q)[: min(n_queries, n_q)])
    q_sub = (q[torch.from_numpy(pick)] if isinstance(q, torch.Tensor) else np.asarray(q)[pick])
    l_sub = np.asarray(q_labels.cpu() if isinstance(q_labels, torch.Tensor) else q_labels)[pick]
    levels = np.linspace(0.0, 1.0, recall_points)
    curves = []
    for _, ranks, _ in iter_relevant_ranks(q_sub, l_sub, g, g_labels, scores=scores):
        n = ranks.shape[1]
        if n == 0:
            curves.append(np.zeros((ranks.shape[0], recall_points)))
            continue
        prec = torch.arange(1, n + 1, dtype=torch.float64) / ranks.double()
        best_after = prec.flip(1).cummax(1).values.flip(1).numpy()  # best precision at recall >= i/n
        first_hit = np.clip(np.ceil(levels * n - 1e-9).astype(int) - 1, 0, n - 1)
        curves.append(best_after[:, first_hit])
    precision = np.concatenate(curves).mean(0)
    if path is not None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(4.5, 4.0))
        ax.plot(levels, precision, marker="o", markersize=3, label=label)
        ax.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"precision-recall ({len(pick)} queries)")
        if label:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(fig, path, plt)
    return {"recall": levels, "precision": precision}


def embedding_plot(
    feats_by_modality: Mapping[str, tuple[Any, Any]],
    class_names: Sequence[str],
    path: str | Path,
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
) -> Path:
    """2-D map of features: one marker per modality (e.g. photo, sketch), one colour per class.

    ``feats_by_modality``: ``{name: (features [N, D], labels [N])}``; features are L2-normalised and
    subsampled to ``max_points`` in all. ``method``: "tsne" (scikit-learn, PCA if it is missing)
    or "pca".
    """
    xs, ys, mods = [], [], []
    rng = np.random.default_rng(seed)
    per_mod = max(1, max_points // max(1, len(feats_by_modality)))
    for m, (name, (x, y)) in enumerate(feats_by_modality.items()):
        xt = check_features(x, f"{name} features").double().numpy()
        yt = check_labels(y, xt.shape[0], f"{name} labels").numpy()
        keep = np.sort(rng.permutation(len(xt))[:per_mod])
        xs.append(xt[keep] / np.maximum(np.linalg.norm(xt[keep], axis=1, keepdims=True), 1e-12))
        ys.append(yt[keep])
        mods.append(np.full(len(keep), m))
    if any(a.shape[1] != xs[0].shape[1] for a in xs):
        raise DataError("embedding_plot: all modalities must have the same feature dimension")
    x, y, mod = np.concatenate(xs), np.concatenate(ys), np.concatenate(mods)
    xy = _reduce_2d(x, method, seed)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6.0))
    cmap = plt.get_cmap("tab20" if len(class_names) <= 20 else "hsv")
    colours = cmap(np.linspace(0, 1, max(len(class_names), 2), endpoint=len(class_names) <= 20))
    markers = ["o", "^", "s", "x", "D", "v"]
    for m, name in enumerate(feats_by_modality):
        sel = mod == m
        ax.scatter(xy[sel, 0], xy[sel, 1], c=colours[y[sel] % len(colours)], marker=markers[m % len(markers)],
                   s=12, alpha=0.75, linewidths=0.3, edgecolors="k", label=name)
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{method.upper()} of {len(x)} features, colour = class")
    fig.tight_layout()
    return _save(fig, path, plt)


def _reduce_2d(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """[N, D] -> [N, 2] by t-SNE (when scikit-learn is installed) or PCA."""
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")
    if method == "tsne" and len(x) > 3:
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            pass
        else:
            perplexity = float(min(30.0, (len(x) - 1) / 3))
            return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    out = xc @ vt[:2].T
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))  # D = 1 still plots


# ----------------------------------------------------------------------------------------------
# retrieval grid (PIL only)


def grid_cell_box(row: int, col: int, thumb: int = 64) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, of the framed cell at ``row``, ``col`` of a retrieval grid.

    Column 0 is the query; columns 1..k are the ranked results. The frame is ``GRID_BORDER`` px.
    """
    cell = thumb + 2 * GRID_BORDER
    x0 = GRID_PAD + col * (cell + GRID_PAD) + (GRID_GAP if col > 0 else 0)
    y0 = GRID_PAD + row * (cell + GRID_PAD)
    return x0, y0, x0 + cell, y0 + cell


def retrieval_grid(
    query_paths: Sequence[str | Path],
    ranked_paths: Sequence[Sequence[str | Path]],
    correct: Any,
    path: str | Path,
    k: int = 8,
    thumb: int = 64,
) -> Path:
    """PNG with one row per query: the query (grey frame), then its top-k results framed green
    when ``correct[i][j]`` (same class) and red otherwise. ``correct``: bool [n_queries, >= k]."""
    from PIL import Image

    ok = np.asarray(correct, dtype=bool)
    if len(ranked_paths) != len(query_paths) or ok.ndim != 2 or ok.shape[0] != len(query_paths):
        raise DataError("retrieval_grid: query_paths, ranked_paths and correct must have one row per query")
    k = min(k, min((len(r) for r in ranked_paths), default=0), ok.shape[1])
    canvas = Image.new("RGB", grid_size_hint(len(query_paths), k, thumb), (255, 255, 255))
    for i, qpath in enumerate(query_paths):
        _paste_framed(canvas, _thumbnail(qpath, thumb), grid_cell_box(i, 0, thumb), GREY)
        for j in range(k):
            frame = GREEN if ok[i, j] else RED
            _paste_framed(canvas, _thumbnail(ranked_paths[i][j], thumb), grid_cell_box(i, j + 1, thumb), frame)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _thumbnail(path: str | Path, size: int):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGBA")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image for the retrieval grid ({exc})") from exc
    img.thumbnail((size, size))
    tile = Image.new("RGB", (size, size), (255, 255, 255))
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2), img)  # alpha over white
    return tile


def _paste_framed(canvas: Any, tile: Any, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)
    canvas.paste(tile, (box[0] + GRID_BORDER, box[1] + GRID_BORDER))


def grid_size_hint(n_rows: int, k: int, thumb: int = 64) -> tuple[int, int]:
    """(width, height) of a retrieval grid with ``n_rows`` queries and ``k`` results each."""
    x1, y1 = grid_cell_box(max(n_rows - 1, 0), k, thumb)[2:]
    return x1 + GRID_PAD, y1 + GRID_PAD

