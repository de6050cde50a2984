"""Stage C: zero-shot evaluation — sketch queries of the unseen classes against their photos.

Spec §6.1: evaluation classes are ``<split>_classes.txt`` (sorted, labels 0..T-1); gallery = every
photo of those classes; queries = every sketch minus the Sketchy outliers; eval transform (plain
resize [Q29]); features L2-normalised; cosine scores; metrics of §6.2. The class lists stored in
the checkpoint are checked against the split, and an evaluation on training classes is refused
unless ``eval.use_train`` asks for seen-class retrieval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.config import Config
from tvt.data.folder import ClassFolder
from tvt.data.layout import Split, load_split, outliers_for
from tvt.data.transforms import eval_transform
from tvt.errors import DataError
from tvt.eval import grid, report
from tvt.eval.extract import extract_features, file_identity, fingerprint
from tvt.eval.metrics import retrieval_metrics
from tvt.vectors import l2_normalize

Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalSets:
    classes: list[str]
    sketches: ClassFolder
    photos: ClassFolder


def eval_classes(split: Split, state: dict[str, Any] | None, use_train: bool) -> list[str]:
    """The classes to evaluate on, after checking the checkpoint's class lists against the split."""
    if state is not None and "train_classes" in state:
        trained = list(state["train_classes"])
        if not use_train:
            leak = sorted(set(trained) & set(split.test_classes))
            if leak:
                raise DataError(f"the checkpoint was trained on {len(leak)} of the evaluation classes of split "
                                f"'{split.split}' ({', '.join(leak[:5])}{'...' if len(leak) > 5 else ''}): this would not be "
                                "zero-shot. Use the split the model was trained with, or eval.use_train=true for "
                                "seen-class retrieval on purpose")
        stored_test = state.get("test_classes")
        if stored_test is not None and sorted(stored_test) != sorted(split.test_classes) and not use_train:
            raise DataError(f"the checkpoint's held-out classes ({len(stored_test)}) differ from split '{split.split}' "
                            f"({len(split.test_classes)} classes); evaluate with the split it was trained with")
    return list(split.train_classes if use_train else split.test_classes)


def build_sets(cfg: Config, classes: list[str], img_size: int, norm: dict[str, Any] | None = None) -> EvalSets:
    """Sketch and photo sets of ``classes``; ``norm`` = {"mean", "std"} of a backbone (default ImageNet)."""
    root = Path(cfg.data.root) / cfg.data.dataset
    tf = eval_transform(img_size, **(norm or {}))
    common = dict(return_index=True, alpha_background=cfg.data.alpha_background, cache_dir=cfg.data.cache_dir or None)
    sketches = ClassFolder(root / "sketch", classes, tf, outliers=outliers_for(cfg.data.dataset), **common)
    photos = ClassFolder(root / "photo", classes, tf, **common)
    return EvalSets(classes=sorted(classes), sketches=sketches, photos=photos)


def extract_sets(sets: EvalSets, encode_img: Encode, encode_skt: Encode, *, batch_size: int, device: torch.device,
                 num_workers: int = 0, progress: bool = True, cache_dir: Path | None = None,
                 model_key: tuple = ()) -> dict[str, np.ndarray]:
    """Raw features and labels of both modalities; resumable when ``cache_dir`` is given.

    ``model_key`` identifies the model and feature choice; the cache is reused only when it and the
    image list are unchanged.
    """
    def cached(name: str, ds: ClassFolder) -> dict:
        if cache_dir is None:
            return {}
        return {"cache": cache_dir / f"{name}.npy",
                "key": fingerprint(name, *model_key, files=[p for p, _ in ds.samples])}

    return {
        "q": extract_features(encode_skt, sets.sketches, batch_size=batch_size, device=device, num_workers=num_workers,
                              desc="sketch features", progress=progress, **cached("sketch", sets.sketches)),
        "q_labels": np.asarray(sets.sketches.targets, dtype=np.int64),
        "g": extract_features(encode_img, sets.photos, batch_size=batch_size, device=device, num_workers=num_workers,
                              desc="photo features", progress=progress, **cached("photo", sets.photos)),
        "g_labels": np.asarray(sets.photos.targets, dtype=np.int64),
    }


def score_features(feats: dict[str, np.ndarray], cfg: Config) -> dict[str, Any]:
    """The metrics of §6.2 (+ binary codes when ``eval.binary_bits``); per-query values kept."""
    e = cfg.eval
    m = retrieval_metrics(feats["q"], feats["q_labels"], feats["g"], feats["g_labels"], ks_map=tuple(e.map_k),
                          ks_prec=tuple(e.prec_k), return_per_query=True)
    if e.binary_bits:
        from tvt.eval.binary import binary_retrieval_metrics

        b = binary_retrieval_metrics(feats["q"], feats["q_labels"], feats["g"], feats["g_labels"],
                                     n_bits=e.binary_bits, ks_map=tuple(e.map_k), ks_prec=tuple(e.prec_k))
        m.update({f"binary{e.binary_bits}/{k}": v for k, v in b.items() if k not in ("per_query",)})
    return m


def public_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the per-query arrays (for tables and JSON)."""
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in m.items() if k != "per_query"}


def write_reports(out_dir: Path, name: str, sets: EvalSets, feats: dict[str, np.ndarray], m: dict[str, Any],
                  cfg: Config, model: torch.nn.Module | None = None, device: torch.device | str = "cpu",
                  chance: dict[str, float] | None = None, title: str = "") -> dict[str, Path]:
    """Results JSON, per-class CSV + bar chart, PR curve, embedding map, retrieval grid, attention maps
    (when ``model`` is given) and the feature files (``tvt metrics`` reads them).

    ``chance``: random-ranking levels of the metrics (:func:`tvt.eval.report.chance_levels`; computed
    here when not given), drawn on the figures and written into the results JSON. ``title`` names
    the model on every figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{name}_{v}" for k, v in {
        "json": "results.json", "csv": "per_class.csv", "bar": "per_class.png", "grid": "retrievals.png",
        "pr": "pr_curve.png", "embedding": "embedding.png"}.items()}
    e = cfg.eval
    if chance is None:
        chance = report.chance_levels(feats["q_labels"], feats["g_labels"], ks_map=tuple(e.map_k), ks_prec=tuple(e.prec_k))
    title = title or name
    report.write_results({**public_metrics(m), "chance": chance}, paths["json"])
    rows = report.per_class_table(m["per_query"], feats["q_labels"], sets.classes)
    report.write_per_class_csv(rows, paths["csv"])
    report.plot_per_class_bar(rows, paths["bar"], metric="mAP@all", chance=chance.get("mAP@all"), title=title)
    report.pr_curve(feats["q"], feats["q_labels"], feats["g"], feats["g_labels"], paths["pr"], label=name, title=title)
    group = "evaluation classes" if e.use_train else "unseen classes (never trained on)"
    report.embedding_plot({"photo": (feats["g"], feats["g_labels"]), "sketch": (feats["q"], feats["q_labels"])},
                          sets.classes, paths["embedding"], title=title, group=group)
    picks, order = _grid(sets, feats, paths["grid"], e.grid_queries, e.grid_k, title)
    if model is not None and picks:
        from tvt.eval.attention import attention_figure

        paths["attention"] = out_dir / f"{name}_attention.png"
        gl = feats["g_labels"]
        attention_figure(model, sets.photos.transform, sets.sketches.samples[picks[0]][0],
                         [sets.photos.samples[j][0] for j in order[0][:5]], paths["attention"], device=device,
                         query_name=sets.classes[int(feats["q_labels"][picks[0]])],
                         result_names=[sets.classes[int(gl[j])] for j in order[0][:5]], title=title)
    np.savez(out_dir / f"{name}_queries.npz", features=feats["q"], labels=feats["q_labels"])
    np.savez(out_dir / f"{name}_gallery.npz", features=feats["g"], labels=feats["g_labels"])
    return paths


def _grid(sets: EvalSets, feats: dict[str, np.ndarray], path: Path, n_queries: int, k: int,
          title: str = "") -> tuple[list[int], np.ndarray]:
    """Top-k photos for one query of each of the first ``n_queries`` classes."""
    q, g = l2_normalize(feats["q"]).numpy(), l2_normalize(feats["g"]).numpy()
    ql, gl = feats["q_labels"], feats["g_labels"]
    picks = []
    for c in np.unique(ql)[:n_queries]:
        idx = np.flatnonzero(ql == c)
        picks.append(int(idx[len(idx) // 2]))
    scores = q[picks] @ g.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    query_paths = [sets.sketches.samples[i][0] for i in picks]
    ranked = [[sets.photos.samples[j][0] for j in row] for row in order]
    correct = gl[order] == ql[picks][:, None]
    names = sets.classes
    grid.retrieval_grid(query_paths, ranked, correct, path, k=k, query_names=[names[int(ql[i])] for i in picks],
                        result_names=[[names[int(c)] for c in row] for row in gl[order]],
                        title=f"{title}\ntop-{k} photos (by rank) for one sketch query of each class")
    return picks, order


def evaluate(cfg: Config, checkpoint: str | Path, *, device: str = "auto", progress: bool = True,
             name: str = "tvt") -> dict[str, Any]:
    """Stage C: zero-shot retrieval of a checkpoint (TVT student or a plain ViT) on the split of ``cfg``.

    Args:
        cfg: the config (``cfg.data`` names the dataset and split, ``cfg.eval`` the metrics).
        checkpoint: a TVT or ViT checkpoint file; its stored class lists are checked against the split.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; under torchrun features are sharded over ranks.
        progress: show progress bars.
        name: the model's name in the reports.
    Returns:
        ``{"mAP@all", "mAP@<k>", "P@<k>", ..., "n_queries", "n_gallery"}`` (with ``binary<bits>/...``
        metrics when ``cfg.eval.binary_bits`` is set) and ``"files"``: the reports written to
        ``cfg.eval.output_dir`` (default: ``eval/`` beside the checkpoint).
    """
    from tvt.distributed import setup
    from tvt.models.encoder import load_encoder, read_training_info

    info = setup(device)  # torchrun: features sharded over ranks, reports from rank 0
    dev = info.device
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    classes = eval_classes(split, read_training_info(checkpoint), cfg.eval.use_train)
    enc = load_encoder(checkpoint, return_idx=cfg.eval.return_idx, device=dev)
    sets = build_sets(cfg, classes, cfg.data.img_size or enc.img_size, {"mean": enc.mean, "std": enc.std})
    out_dir = Path(cfg.eval.output_dir) if cfg.eval.output_dir else Path(checkpoint).parent / "eval"
    feats = extract_sets(sets, lambda x: enc(x, "img"), lambda x: enc(x, "skt"), batch_size=cfg.eval.batch_size,
                         device=dev, num_workers=cfg.data.num_workers, progress=progress, cache_dir=out_dir / "features",
                         model_key=(file_identity(checkpoint), cfg.eval.return_idx, cfg.data.img_size))
    m = score_features(feats, cfg)
    if not info.is_main:
        return public_metrics(m)
    paths = write_reports(out_dir, name, sets, feats, m, cfg, model=enc.model, device=dev)
    result = public_metrics(m)
    result["files"] = {k: str(v) for k, v in paths.items()}
    return result


def intra_modal(cfg: Config, checkpoint: str | Path, *, exclude_self: bool = False, device: str = "auto",
                progress: bool = True) -> dict[str, dict[str, Any]]:
    """Image->image and sketch->sketch retrieval on the evaluation classes (spec §6.4).

    The official protocol keeps the query in the gallery [Q32]; ``exclude_self`` removes it.
    """
    from tvt.distributed import setup
    from tvt.models.encoder import load_encoder, read_training_info

    dev = setup(device).device
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    classes = eval_classes(split, read_training_info(checkpoint), cfg.eval.use_train)
    enc = load_encoder(checkpoint, return_idx=cfg.eval.return_idx, device=dev)
    sets = build_sets(cfg, classes, cfg.data.img_size or enc.img_size, {"mean": enc.mean, "std": enc.std})
    feats = extract_sets(sets, lambda x: enc(x, "img"), lambda x: enc(x, "skt"), batch_size=cfg.eval.batch_size,
                         device=dev, num_workers=cfg.data.num_workers, progress=progress)
    e = cfg.eval
    out = {}
    for name, (x, y) in {"i2i": (feats["g"], feats["g_labels"]), "s2s": (feats["q"], feats["q_labels"])}.items():
        out[name] = public_metrics(retrieval_metrics(x, y, x, y, ks_map=tuple(e.map_k), ks_prec=tuple(e.prec_k),
                                                     exclude_self=exclude_self))
    return out

