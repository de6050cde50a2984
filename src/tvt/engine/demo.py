"""`tvt demo`: the whole method end to end on the built-in synthetic dataset, no downloads.

1. generate the synthetic dataset (``tvt data synth``);
2. a tiny *image ViT* pretrained with labels on the training-class photos: the stand-in for the
   ImageNet DINO checkpoint the paper starts from (:mod:`tvt.engine.standin` says why);
3. stage A on sketches starting from it -> the *sketch ViT*;
4. stage B -> the TVT fusion ViT;
5. zero-shot evaluation on the unseen classes of three models: the trained TVT, its starting point
   (the fusion ViT initialised from the image ViT, before training) and the image ViT alone.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tvt import config as config_mod
from tvt.config import Config
from tvt.eval import evaluate as ev
from tvt.eval.report import format_table

METRIC_KEYS = ("mAP@all", "mAP@200", "P@100", "P@200")


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


def _stage_a(cfg: Config, modality: str, init: str, out_dir: Path, device: str, progress: bool) -> Path:
    from tvt.engine.train_dino import train

    c = copy.deepcopy(cfg)
    c.sketch.modality, c.sketch.init, c.sketch.output_dir = modality, init, str(out_dir)
    return train(c, resume=True, device=device, progress=progress)


def _encoders(cfg: Config, image_vit: Path, tvt_ckpt: Path, device: torch.device) -> dict[str, tuple[Any, Any, Any]]:
    """name -> (encode photos, encode sketches, model)."""
    from tvt.data.layout import load_split
    from tvt.models.weights import init_student_from_teacher, load_encoder, load_teacher

    teacher = load_teacher(image_vit).to(device).eval()
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    torch.manual_seed(cfg.train.seed)
    start = init_student_from_teacher(teacher, num_classes=len(split.train_classes),
                                      token_num=cfg.model.token_num, pos_resample=cfg.model.pos_resample).to(device).eval()
    tvt = load_encoder(tvt_ckpt, return_idx=cfg.eval.return_idx, device=device)
    idx = cfg.eval.return_idx
    return {
        "tvt": (lambda x: tvt(x, "img"), lambda x: tvt(x, "skt"), tvt.model),
        "start": (lambda x: start.features(x, "img", idx), lambda x: start.features(x, "skt", idx), start),
        "image_teacher": (teacher.embed, teacher.embed, teacher),
    }


def run_demo(out: str | Path, *, seed: int = 0, classes: int = 30, device: str = "auto", progress: bool = True,
             overrides: list[str] = (), standin_steps: int = 300) -> dict[str, Any]:
    """Run the demo into ``out``; returns {model: metrics} and writes metrics.json + retrievals.png."""
    from tvt.data.layout import load_split
    from tvt.data.synth import generate
    from tvt.distributed import pick_device
    from tvt.engine.train_tvt import train

    out = Path(out)
    t0 = time.perf_counter()
    cfg = demo_config(out, overrides)
    data_dir = Path(cfg.data.root) / cfg.data.dataset
    if not (data_dir / "split" / "all_classes.txt").is_file():
        generate(cfg.data.root, num_classes=classes, seed=seed, size=cfg.data.img_size, dataset=cfg.data.dataset,
                 progress=progress)
    from tvt.engine.standin import train_standin

    image_vit = train_standin(cfg, out / "image_vit", steps=standin_steps, device=device, progress=progress)
    sketch_vit = _stage_a(cfg, "sketch", str(image_vit), out / "sketch_vit", device, progress)
    cfg.train.image_teacher, cfg.train.sketch_teacher = str(image_vit), str(sketch_vit)
    tvt_ckpt = train(cfg, resume=True, device=device, progress=progress)
    dev = pick_device(device)
    split_classes = ev.eval_classes(load_split(cfg.data.root, cfg.data.dataset, cfg.data.split), None, False)
    sets = ev.build_sets(cfg, split_classes, cfg.data.img_size)
    results: dict[str, Any] = {}
    for name, (enc_img, enc_skt, model) in _encoders(cfg, image_vit, tvt_ckpt, dev).items():
        with torch.inference_mode():
            feats = ev.extract_sets(sets, enc_img, enc_skt, batch_size=cfg.eval.batch_size, device=dev, progress=False)
        m = ev.score_features(feats, cfg)
        ev.write_reports(out / "eval", name, sets, feats, m, cfg, model=model, device=dev)
        if name == "tvt":
            (out / "retrievals.png").write_bytes((out / "eval" / "tvt_retrievals.png").read_bytes())
        results[name] = {k: v for k, v in ev.public_metrics(m).items()}
    minutes = (time.perf_counter() - t0) / 60
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nZero-shot sketch->photo retrieval on {len(split_classes)} unseen synthetic classes "
          f"({len(sets.sketches)} sketch queries, {len(sets.photos)} photos):")
    print(format_table(results, list(METRIC_KEYS)))
    print(f"\nwrote {out / 'metrics.json'} and {out / 'retrievals.png'} ({minutes:.1f} min)", file=sys.stderr)
    return results
