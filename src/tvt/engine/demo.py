"""`tvt demo`: the whole method end to end, on a CPU, with no downloads.

1. the dataset: the built-in synthetic one (``tvt data synth``), drawn into ``DIR/data``, unless
   ``--set data.root=...`` points at another dataset in the tvt layout;
2. a tiny *image ViT* pretrained with labels on the training-class photos: the stand-in for the
   ImageNet DINO checkpoint the paper starts from (:mod:`tvt.engine.standin` says why);
3. stage A on sketches starting from it -> the *sketch ViT*;
4. stage B -> the TVT fusion ViT;
5. zero-shot evaluation on the unseen classes of three models: the trained TVT, its starting point
   (the fusion ViT initialised from the image ViT, before training) and the image ViT alone, with
   the chance level of every metric for that gallery.

``DIR/demo.json`` records what decides the results; a folder made with other arguments is refused
(:mod:`tvt.engine.demo_run`). Same arguments and the same number of torch threads give the same
numbers, bit for bit (``--threads`` pins the count; the README says why it matters).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tvt import config as config_mod
from tvt.config import Config
from tvt.engine.demo_run import Overall, claim_folder, manifest
from tvt.errors import ConfigError, DataError
from tvt.eval import evaluate as ev
from tvt.eval.report import chance_levels, format_table
from tvt.files import write_json

METRIC_KEYS = ("mAP@all", "mAP@200", "P@100", "P@200")
MODELS = ("tvt", "start", "image_teacher")
# Share of the demo's time per stage on 2 CPU cores (for the overall ETA; it corrects itself).
WEIGHTS = {"data": 0.02, "standin": 0.09, "stage_a": 0.07, "stage_b": 0.77, "eval": 0.05}


@dataclass
class DemoOptions:
    """The demo's own choices (not part of the TVT config), recorded in ``demo.json``."""

    seed: int = 0  # synthetic dataset seed
    classes: int = 30  # synthetic class count
    standin_steps: int = 300
    standin_head: str = "random"  # see tvt.engine.standin
    standin_lr: float = 1e-3
    overrides: list[str] = field(default_factory=list)


def demo_config(out: Path, overrides: list[str] = ()) -> Config:
    """The packaged demo config with paths under ``out``, then user overrides."""
    text = resources.files("tvt").joinpath("configs/demo.yaml").read_text()
    import yaml

    cfg = config_mod.merge(Config(), yaml.safe_load(text), "tvt/configs/demo.yaml")
    cfg.data.root = str(out / "data")
    cfg.train.output_dir = str(out / "tvt")
    for text in overrides:
        config_mod.merge(cfg, config_mod.parse_override(text), f"override '{text}'")
    return cfg


def dataset_label(cfg: Config, out: Path, opts: DemoOptions) -> str:
    """Words naming the data the demo ran on: "synthetic" only for data it drew itself."""
    if Path(cfg.data.root) == out / "data":
        return (f"the built-in synthetic dataset (drawn by tvt data synth: {opts.classes} classes, "
                f"seed {opts.seed})")
    return f"dataset '{cfg.data.dataset}' from {cfg.data.root}"


def _ensure_data(cfg: Config, out: Path, opts: DemoOptions, progress: bool) -> None:
    from tvt.data.synth import generate

    data_dir = Path(cfg.data.root) / cfg.data.dataset
    if (data_dir / "split" / "all_classes.txt").is_file():
        return
    if Path(cfg.data.root) != out / "data":  # never draw synthetic images into a user's data folder
        raise DataError(f"{data_dir}: no split/all_classes.txt; data.root must hold a dataset in the tvt layout "
                        "(tvt data prepare / tvt data synth), or leave data.root unset for the built-in data")
    generate(cfg.data.root, num_classes=opts.classes, seed=opts.seed, size=cfg.data.img_size,
             dataset=cfg.data.dataset, progress=progress)


def _count(cfg: Config, modality: str, classes: list[str]) -> int:
    root = Path(cfg.data.root) / cfg.data.dataset / modality
    return sum(1 for c in classes for p in (root / c).iterdir() if p.is_file())


def planned_steps(cfg: Config, train_classes: list[str]) -> tuple[int, int]:
    """Optimizer steps of stage A and stage B (for the progress line)."""
    n_photo, n_sketch = _count(cfg, "photo", train_classes), _count(cfg, "sketch", train_classes)
    s, t = cfg.sketch, cfg.train
    a = s.epochs * (s.max_steps_per_epoch or n_sketch // s.batch_size)
    per_epoch = min(n_photo // t.batch_size, n_sketch // max(1, t.batch_size // t.skt_factor))
    return a, t.epochs * min(per_epoch, t.max_steps_per_epoch or per_epoch)


def _stage_a(cfg: Config, modality: str, init: str, out_dir: Path, device: str, progress: bool) -> Path:
    from tvt.engine.train_dino import train

    c = copy.deepcopy(cfg)
    c.sketch.modality, c.sketch.init, c.sketch.output_dir = modality, init, str(out_dir)
    return train(c, resume=True, device=device, progress=progress)


def start_model(cfg: Config, teacher: Any, device: torch.device) -> tuple[Any, Any, Any]:
    """(encode photos, encode sketches, model) of the start: the fusion ViT initialised from the
    image ViT ``teacher`` as stage B initialises it (seeded with ``train.seed``), before training."""
    from tvt.data.layout import load_split
    from tvt.models.weights import init_student_from_teacher

    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    torch.manual_seed(cfg.train.seed)
    start = init_student_from_teacher(teacher, num_classes=len(split.train_classes),
                                      token_num=cfg.model.token_num, pos_resample=cfg.model.pos_resample).to(device).eval()
    idx = cfg.eval.return_idx
    return lambda x: start.features(x, "img", idx), lambda x: start.features(x, "skt", idx), start


def encoders(cfg: Config, image_vit: Path, tvt_ckpt: Path, device: torch.device) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (encode photos, encode sketches, model) for the trained TVT, its start and the image ViT."""
    from tvt.models.encoder import load_encoder
    from tvt.models.weights import load_teacher

    teacher = load_teacher(image_vit).to(device).eval()
    start = start_model(cfg, teacher, device)
    tvt = load_encoder(tvt_ckpt, return_idx=cfg.eval.return_idx, device=device)
    return {
        "tvt": (lambda x: tvt(x, "img"), lambda x: tvt(x, "skt"), tvt.model),
        "start": start,
        "image_teacher": (teacher.embed, teacher.embed, teacher),
    }


def unseen_sets(cfg: Config) -> ev.EvalSets:
    """The evaluation sets of the unseen classes (sketch queries, photo gallery) at the config's size."""
    from tvt.data.layout import load_split

    classes = ev.eval_classes(load_split(cfg.data.root, cfg.data.dataset, cfg.data.split), None, False)
    return ev.build_sets(cfg, classes, cfg.data.img_size)


def score(cfg: Config, sets: ev.EvalSets, enc_img: Any, enc_skt: Any, device: torch.device) -> tuple[dict, dict]:
    """(features, metrics with per-query values) of one model on the evaluation sets."""
    with torch.inference_mode():
        feats = ev.extract_sets(sets, enc_img, enc_skt, batch_size=cfg.eval.batch_size, device=device, progress=False)
    return feats, ev.score_features(feats, cfg)


def train_models(out: Path, cfg: Config, opts: DemoOptions, device: str, progress: bool,
                 overall: Overall) -> tuple[Path, Path, Path]:
    """Data, image ViT stand-in, sketch ViT (stage A), TVT (stage B); each stage resumes."""
    from tvt.data.layout import load_split
    from tvt.engine.standin import train_standin
    from tvt.engine.train_tvt import train

    with overall.stage("data", "data"):
        _ensure_data(cfg, out, opts, progress)
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    steps_a, steps_b = planned_steps(cfg, split.train_classes)
    with overall.stage("standin", "image ViT (stand-in)", out / "image_vit" / "log.jsonl", opts.standin_steps):
        image_vit = train_standin(cfg, out / "image_vit", steps=opts.standin_steps, lr=opts.standin_lr,
                                  head=opts.standin_head, device=device, progress=progress)
    with overall.stage("stage_a", "stage A (sketch ViT)", out / "sketch_vit" / "log.jsonl", steps_a):
        sketch_vit = _stage_a(cfg, "sketch", str(image_vit), out / "sketch_vit", device, progress)
    cfg.train.image_teacher, cfg.train.sketch_teacher = str(image_vit), str(sketch_vit)
    with overall.stage("stage_b", "stage B (TVT)", Path(cfg.train.output_dir) / "log.jsonl", steps_b):
        tvt_ckpt = train(cfg, resume=True, device=device, progress=progress)
    return image_vit, sketch_vit, tvt_ckpt


def start_demo(out: str | Path, opts: DemoOptions, threads: int | None) -> tuple[Path, Config]:
    """Resolve the folder and config, refuse a folder made with other arguments, pin threads."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    out = Path(out).resolve()
    cfg = demo_config(out, list(opts.overrides))
    record = manifest(cfg, out, seed=opts.seed, classes=opts.classes, standin_steps=opts.standin_steps,
                      standin_head=opts.standin_head, standin_lr=opts.standin_lr)
    if claim_folder(out, record):
        print(f"resuming the demo in {out} (made with the same arguments)", file=sys.stderr)
    return out, cfg


def run_demo(out: str | Path, opts: DemoOptions | None = None, *, device: str = "auto", progress: bool = True,
             threads: int | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns the content of ``metrics.json``."""
    from tvt.distributed import pick_device

    opts = opts or DemoOptions()
    t0 = time.perf_counter()
    out, cfg = start_demo(out, opts, threads)
    overall = Overall(WEIGHTS, progress)
    try:
        image_vit, _, tvt_ckpt = train_models(out, cfg, opts, device, progress, overall)
        with overall.stage("eval", "evaluation and figures"):
            dev = pick_device(device)
            sets = unseen_sets(cfg)
            results = evaluate_three(out, cfg, sets, image_vit, tvt_ckpt, dev)
    finally:
        overall.close()
    results["run"] = {"dataset": dataset_label(cfg, out, opts), "unseen_classes": sets.classes,
                      "sketch_queries": len(sets.sketches), "photos": len(sets.photos),
                      "torch_threads": torch.get_num_threads(), "minutes": round((time.perf_counter() - t0) / 60, 2)}
    write_json(out / "metrics.json", results, default=float)
    print_summary(results, out)
    return results


def evaluate_three(out: Path, cfg: Config, sets: ev.EvalSets, image_vit: Path, tvt_ckpt: Path,
                   dev: torch.device) -> dict[str, Any]:
    """Metrics and reports of the three models, plus the chance row for this gallery."""
    results: dict[str, Any] = {}
    labels = None
    for name, (enc_img, enc_skt, model) in encoders(cfg, image_vit, tvt_ckpt, dev).items():
        feats, m = score(cfg, sets, enc_img, enc_skt, dev)
        labels = feats["q_labels"], feats["g_labels"]
        results[name] = ev.public_metrics(m)
        chance = chance_levels(*labels, ks_map=tuple(cfg.eval.map_k), ks_prec=tuple(cfg.eval.prec_k))
        ev.write_reports(out / "eval", name, sets, feats, m, cfg, model=model, device=dev, chance=chance,
                         title=f"{name}: {_MODEL_WORDS[name]}")
        if name == "tvt":
            (out / "retrievals.png").write_bytes((out / "eval" / "tvt_retrievals.png").read_bytes())
    assert labels is not None
    results["chance"] = chance_levels(*labels, ks_map=tuple(cfg.eval.map_k), ks_prec=tuple(cfg.eval.prec_k))
    return results


_MODEL_WORDS = {"tvt": "the fusion ViT after TVT training (stage B)",
                "start": "the fusion ViT before stage B (initialised from the image ViT)",
                "image_teacher": "the image ViT alone (stand-in teacher)"}


def print_summary(results: dict[str, Any], out: Path) -> None:
    run = results["run"]
    rows = {k: results[k] for k in (*MODELS, "chance") if k in results}
    rows["chance (random ranking)"] = rows.pop("chance")
    print(f"\nZero-shot sketch->photo retrieval on the {len(run['unseen_classes'])} unseen classes of {run['dataset']} "
          f"({run['sketch_queries']} sketch queries, {run['photos']} photos; {run['torch_threads']} torch threads):")
    print(format_table(rows, list(METRIC_KEYS)))
    gain = results["tvt"]["mAP@all"] - results["start"]["mAP@all"]
    print(f"\ntvt - start: {gain:+.4f} mAP@all. Wrote {out / 'metrics.json'}, {out / 'retrievals.png'} and "
          f"{out / 'eval'} ({run['minutes']:.1f} min)", file=sys.stderr)
