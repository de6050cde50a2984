"""Evaluation reports: result files, terminal tables, per-class tables and figures.

Figures use matplotlib's object-oriented :class:`~matplotlib.figure.Figure` (imported inside the
functions, so importing this module stays cheap; no pyplot, so no global backend is switched).
The retrieval grid (thumbnails composed with PIL) is :mod:`tvt.eval.grid`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import DataError
from tvt.eval.metric_inputs import check_features, check_labels
from tvt.eval.metrics import iter_relevant_ranks, retrieval_metrics
from tvt.files import write_json
from tvt.vectors import l2_normalize

# ----------------------------------------------------------------------------------------------
# numbers


def write_results(metrics: Mapping[str, Any], path_json: str | Path) -> Path:
    """Write the scalar entries of ``metrics`` (not ``per_query``) as JSON, atomically; return the path."""
    return write_json(path_json, {k: _plain(v) for k, v in metrics.items() if k != "per_query"})


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


def chance_levels(q_labels: Any, g_labels: Any, *, ks_map: Sequence[int] = (200,), ks_prec: Sequence[int] = (100, 200),
                  repeats: int = 10, seed: int = 0) -> dict[str, float]:
    """Expected value of every metric when the gallery is ranked at random, for these labels.

    Estimated with the metric code itself: ``repeats`` rankings by random scores (each query's
    ranking is a uniformly random permutation), averaged; seeded, so it is the same every run.
    P@k's exact chance level is the mean of (relevant items / gallery size); the interpolated APs
    have no simple closed form, hence the estimate.
    """
    ql, gl = np.asarray(q_labels), np.asarray(g_labels)
    rng = np.random.default_rng(seed)
    sums: dict[str, float] = {}
    for _ in range(repeats):
        q = rng.standard_normal((len(ql), 16)).astype(np.float32)
        g = rng.standard_normal((len(gl), 16)).astype(np.float32)
        m = retrieval_metrics(q, ql, g, gl, ks_map=ks_map, ks_prec=ks_prec)
        for k, v in m.items():
            if isinstance(v, float) and k.startswith(("mAP", "P@")):
                sums[k] = sums.get(k, 0.0) + v / repeats
    return sums


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


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure of its own (not registered with pyplot: nothing global changes)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_per_class_bar(rows: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "mAP@all",
                       chance: float | None = None, title: str = "") -> Path:
    """Bar chart PNG of ``metric`` per query class, best class first; ``chance``: a dashed line
    at the metric's random-ranking level."""
    if not rows or metric not in rows[0]:
        raise DataError(f"no per-class values of {metric!r} to plot")
    ordered = sorted(rows, key=lambda r: -r[metric])
    fig = new_figure(figsize=(max(6.0, 0.28 * len(ordered) + 1.5), 4.0))
    ax = fig.subplots()
    ax.bar(range(len(ordered)), [r[metric] for r in ordered], color="tab:blue")
    ax.set_xticks(range(len(ordered)), [str(r["class"]) for r in ordered], rotation=90, fontsize=7)
    ax.set_xlabel("query class (sketches of that class against all photos)")
    ax.set_ylabel(f"{metric} (mean over the class's queries)")
    ax.set_ylim(0, 1)
    if chance is not None:
        ax.axhline(chance, color="k", linestyle="--", linewidth=1, label=f"chance (random ranking) {chance:.3f}")
        ax.legend(fontsize=7, loc="upper right")
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}{metric} per class (mean {np.mean([r[metric] for r in rows]):.4f} over classes)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at 100 dpi to ``path`` (its folder is created); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
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
    title: str = "",
) -> dict[str, np.ndarray]:
    """Mean interpolated precision-recall curve over a random sample of queries (PNG when ``path``).

    Interpolated precision at recall t is the best precision at any recall >= t (VOC style);
    ``recall_points`` levels 0, 1/(n-1), ..., 1 (11 or 101 are usual). The figure shows the
    chance level: a random ranking has precision = share of relevant photos at every recall.
    Returns ``{"recall": [n], "precision": [n], "chance": share of relevant photos}``.
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
    g_lab = np.asarray(g_labels.cpu() if isinstance(g_labels, torch.Tensor) else g_labels)
    chance = float(np.mean([(g_lab == c).mean() for c in l_sub]))
    if path is not None:
        fig = new_figure(figsize=(5.0, 4.2))
        ax = fig.subplots()
        ax.plot(levels, precision, marker="o", markersize=3, label=label or "model")
        ax.axhline(chance, color="k", linestyle="--", linewidth=1, label=f"chance (random ranking) {chance:.3f}")
        ax.set(xlabel="recall (share of the query's class found)", ylabel="interpolated precision", xlim=(0, 1),
               ylim=(0, 1.02))
        head = f"{title}\n" if title else ""
        ax.set_title(f"{head}precision-recall, mean of {len(pick)} queries", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, path)
    return {"recall": levels, "precision": precision, "chance": chance}


def embedding_plot(
    feats_by_modality: Mapping[str, tuple[Any, Any]],
    class_names: Sequence[str],
    path: str | Path,
    method: str = "tsne",
    max_points: int = 2000,
    seed: int = 0,
    title: str = "",
    group: str = "",
) -> Path:
    """2-D map of features: one marker per modality (e.g. photo, sketch), one colour per class.

    The legend names every class (colour) and modality (marker); ``group`` says which classes
    these are (e.g. "unseen classes, never trained on"), ``title`` what model made the features.

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
        xs.append(l2_normalize(xt[keep]).numpy())
        ys.append(yt[keep])
        mods.append(np.full(len(keep), m))
    if any(a.shape[1] != xs[0].shape[1] for a in xs):
        raise DataError("embedding_plot: all modalities must have the same feature dimension")
    x, y, mod = np.concatenate(xs), np.concatenate(ys), np.concatenate(mods)
    xy = _reduce_2d(x, method, seed)
    import matplotlib
    from matplotlib.lines import Line2D

    fig = new_figure(figsize=(8.0, 6.0))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20" if len(class_names) <= 20 else "hsv"]
    colours = cmap(np.arange(len(class_names)) if len(class_names) <= 20 else np.linspace(0, 1, len(class_names),
                                                                                          endpoint=False))
    markers = ["o", "^", "s", "x", "D", "v"]
    for m, name in enumerate(feats_by_modality):
        sel = mod == m
        ax.scatter(xy[sel, 0], xy[sel, 1], c=colours[y[sel] % len(colours)], marker=markers[m % len(markers)],
                   s=14, alpha=0.75, linewidths=0.3, edgecolors="k")
    mods = [Line2D([], [], linestyle="", marker=markers[m % len(markers)], color="grey", markeredgecolor="k",
                   label=f"{name} (marker)") for m, name in enumerate(feats_by_modality)]
    shown = sorted(set(y.tolist()))
    classes = [Line2D([], [], linestyle="", marker="s", color=colours[c % len(colours)], label=str(class_names[c]))
               for c in shown]
    ax.legend(handles=mods + classes, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
              title="class (colour)" + (f"\n{group}" if group else ""), title_fontsize=7, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{method.upper()} dimension 1 (no units: only neighbourhoods matter)")
    ax.set_ylabel(f"{method.upper()} dimension 2")
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}{method.upper()} map of {len(x)} features\nphotos and sketches of one class should share "
                 "a colour cluster", fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.70, top=0.87, bottom=0.07)
    return save_figure(fig, path)


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
