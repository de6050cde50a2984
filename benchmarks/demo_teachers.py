"""Do the demo's teachers give a usable distillation signal? Measured on a finished `tvt demo` folder.

TVT distils its student from two frozen teachers' DINO-head outputs (sharpened at tau_t = 0.04 after
centring). When a teacher's output barely depends on the image, its targets are near uniform and the
KD terms carry no information. On ``--demo DIR`` (made by ``tvt demo --out DIR``; only read, never
written) this prints markdown tables of:

1. **Teacher signal** of the image teacher (the shipped stand-in with its head) and the sketch teacher
   (stage A), on the training-class photos and sketches (eval transform): per-dimension std of the
   CLS feature over the set against its mean norm, std over the set of the head logits, and the mean
   entropy of the centred teacher softmax at tau_t = 0.04 against ln K (K head outputs).
2. ``--fit-head``: the image teacher's DINO head fitted with the labels on the *frozen* backbone
   (4 augmented views per training photo computed once; AdamW lr 1e-3, 600 steps of 256,
   label-smoothed CE on :func:`tvt.engine.standin.class_scores` at temperature 0.1), its signal rows,
   and the fitted teacher saved as a stand-in checkpoint (``OUT/fitted/image_vit/checkpoint.pth``).
3. ``--stage-b-epochs N``: stage B for N epochs from (a) the shipped teachers and (b) the derived
   image teacher (fitted head and/or pool stand-in) with a stage-A sketch teacher started from it,
   each with all terms and with CE only; unseen-class mAP@all and P@100 beside the start and chance.
4. ``--pool``: a stronger stand-in pretrained (``--pool-steps``) on a pool of synthetic photo classes
   drawn with seed 1000: every design of the generator except the demo's unseen classes (never drawn,
   checked). Reports its image-teacher and start mAP@all on the demo's unseen classes, and replaces
   the shipped image teacher as the base of 2 and 3.

Outputs go to ``--out`` (default ``DIR/teachers_diag``); every stage reuses what an earlier run left
there. Steps 1-2 take about 20 s on one core; each stage-B run takes as long as the demo's.

    python benchmarks/demo_teachers.py --demo DIR
    python benchmarks/demo_teachers.py --demo DIR --fit-head --pool --stage-b-epochs 40 --set train.seed=1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tvt import config as config_mod
from tvt.config import Config
from tvt.data.folder import ClassFolder
from tvt.data.layout import load_split
from tvt.data.synth import render_photo
from tvt.data.synth_shapes import CLASS_NAMES
from tvt.data.transforms import augment_pipeline, eval_transform
from tvt.engine import checkpoint as ckpt
from tvt.engine.common import seed_everything
from tvt.engine.demo import _stage_a, encoders, score, start_model, unseen_sets
from tvt.engine.demo_run import _PATH_KEYS, MANIFEST
from tvt.engine.standin import class_scores, train_standin
from tvt.engine.train_tvt import train
from tvt.errors import ConfigError
from tvt.eval import evaluate as ev
from tvt.eval.report import chance_levels
from tvt.models.weights import load_teacher
from tvt.models.wrappers import Teacher

TEACHER_TEMP = 0.04  # tau_t of the demo's stage B at the end of its warm-up
POOL_SEED = 1000
CE_ONLY = ["train.kd_img_weight=0", "train.kd_skt_weight=0", "train.use_align_uniform=false"]
VARIANTS = {"all terms": [], "CE only": CE_ONLY}
Encode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class FitOptions:
    """The head fit of ``--fit-head`` (the values of the measured diagnostic)."""

    views: int = 4
    steps: int = 600
    batch: int = 256
    lr: float = 1e-3
    temp: float = 0.1
    seed: int = 0


# ----------------------------------------------------------------------------- the demo folder
def demo_cfg(demo: Path, overrides: list[str]) -> Config:
    """The demo's resolved config (``demo.json``, else ``tvt/config.yaml``) with ``--set`` overrides."""
    record = demo / MANIFEST
    if record.is_file():
        tree = json.loads(record.read_text())["config"]
        for section, key in _PATH_KEYS:  # demo.json stores paths relative to the folder
            if tree[section][key] and not Path(tree[section][key]).is_absolute():
                tree[section][key] = str(demo / tree[section][key])
        cfg = config_mod.merge(config_mod.Config(), tree, str(record))
    elif (demo / "tvt" / "config.yaml").is_file():
        cfg = config_mod.load([demo / "tvt" / "config.yaml"])
    else:
        raise ConfigError(f"{demo} is not a finished demo folder: neither {record} nor {demo}/tvt/config.yaml exists")
    for text in overrides:
        config_mod.merge(cfg, config_mod.parse_override(text), f"override '{text}'")
    return cfg


def demo_checkpoint(demo: Path, stage: str) -> Path:
    path = demo / stage / ckpt.LATEST
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: --demo must be a folder where `tvt demo` finished")
    return path


# ----------------------------------------------------------------------------- 1. teacher signal
def image_tensor(cfg: Config, modality: str, classes: list[str]) -> torch.Tensor:
    """Every image of ``classes`` in ``modality``, eval transform, as one [N, 3, H, W] tensor."""
    ds = ClassFolder(Path(cfg.data.root) / cfg.data.dataset / modality, classes, eval_transform(cfg.data.img_size),
                     alpha_background=cfg.data.alpha_background)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def centred_entropy(logits: torch.Tensor, temp: float = TEACHER_TEMP) -> float:
    """Mean entropy (nats) of softmax((logits - mean over the set) / temp): ln K for a uniform target."""
    p = torch.softmax((logits - logits.mean(0)) / temp, dim=-1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


@torch.no_grad()
def signal(teacher: Teacher, x: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Feature spread, logit spread and centred target entropy of ``teacher`` over the images ``x``."""
    teacher.eval()
    feats = torch.cat([teacher.embed(x[i:i + batch]) for i in range(0, len(x), batch)])
    logits = teacher.head(feats)
    return {"feature std": float(feats.std(0).mean()), "feature norm": float(feats.norm(dim=1).mean()),
            "logit std": float(logits.std(0).mean()), "entropy": centred_entropy(logits),
            "ln K": math.log(logits.shape[1])}


def signal_rows(name: str, teacher: Teacher, images: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    return {f"{name}, training-class {kind}": signal(teacher, x) for kind, x in images.items()}


# ----------------------------------------------------------------------------- 2. head fitted with labels
@torch.no_grad()
def augmented_features(teacher: Teacher, cfg: Config, classes: list[str], views: int,
                       batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS features of ``views`` stand-in augmentations of every training photo (computed once: the
    backbone is frozen) and their labels."""
    tf = augment_pipeline(cfg.data.img_size, (0.4, 1.0), blur_p=0.1)  # the stand-in's own augmentation
    ds = ClassFolder(Path(cfg.data.root) / cfg.data.dataset / "photo", classes, tf,
                     alpha_background=cfg.data.alpha_background)
    teacher.eval()
    xs, ys = [], []
    for _ in range(views):
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        xs.append(torch.cat([teacher.embed(x[i:i + batch]) for i in range(0, len(x), batch)]))
        ys.append(torch.tensor(ds.targets))
    return torch.cat(xs), torch.cat(ys)


def fit_head(teacher: Teacher, feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
             opts: FitOptions) -> tuple[Teacher, float]:
    """A copy of ``teacher`` whose DINO head is trained with the labels on fixed features; (copy, last loss)."""
    fitted = copy.deepcopy(teacher)
    head = fitted.head.train()
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=opts.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(opts.seed)
    loss = torch.tensor(float("nan"))
    for _ in range(opts.steps):
        idx = torch.randint(0, len(feats), (min(opts.batch, len(feats)),), generator=gen)
        loss = F.cross_entropy(class_scores(head(feats[idx]), num_classes, opts.temp), labels[idx],
                               label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return fitted.eval(), loss.item()


def save_teacher(teacher: Teacher, source: Path, out: Path, head_note: str) -> Path:
    """``source``'s stand-in checkpoint with ``teacher``'s weights (same format), written atomically."""
    state = {k: v for k, v in ckpt.load_file(source).items() if k != ckpt.CHECKSUM}
    state["teacher"], state["standin_head"] = teacher.state_dict(), head_note
    return ckpt.save_atomic(state, out)


def fitted_teacher(cfg: Config, base: Path, out: Path, opts: FitOptions) -> tuple[Path, float | None]:
    """Fit ``base``'s head (reusing ``out`` when it exists); (checkpoint, final fit loss or None if reused)."""
    if out.is_file():
        return out, None
    seed_everything(opts.seed)  # the augmentations draw from torch's and Python's global generators
    train_classes = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split).train_classes
    teacher = load_teacher(base)
    feats, labels = augmented_features(teacher, cfg, train_classes, opts.views)
    fitted, loss = fit_head(teacher, feats, labels, len(train_classes), opts)
    return save_teacher(fitted, base, out, "classes-fitted"), loss


# ----------------------------------------------------------------------------- 4. pool stand-in
def pool_classes(unseen: list[str]) -> list[str]:
    """Every design of the generator except the demo's unseen classes."""
    return [c for c in CLASS_NAMES if c not in set(unseen)]


def write_pool(root: Path, classes: list[str], unseen: list[str], *, seed: int = POOL_SEED, photos: int = 40,
               size: int = 32, dataset: str = "synth", split: str = "zeroshot") -> Path:
    """Photos of ``classes`` drawn with ``seed`` into ``root/dataset`` (tvt layout). The split holds
    ``unseen`` out (listed, never drawn), so the checkpoint's class lists match the demo's."""
    leak = sorted(set(classes) & set(unseen))
    if leak:
        raise ConfigError(f"the pool would contain unseen classes {leak}: that is not zero-shot")
    ds = root / dataset
    (ds / "split").mkdir(parents=True, exist_ok=True)
    (ds / "sketch").mkdir(exist_ok=True)  # the stand-in reads photos only; the layout wants the folder
    for name in classes:
        folder = ds / "photo" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(photos):
            rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), i]))
            render_photo(name, rng, size).save(folder / f"{i:04d}.png", format="PNG")
    (ds / "split" / "all_classes.txt").write_text("".join(c + "\n" for c in sorted([*classes, *unseen])))
    (ds / "split" / f"{split}_classes.txt").write_text("".join(c + "\n" for c in sorted(unseen)))
    return ds


def pool_standin(cfg: Config, out: Path, steps: int, run: str, *, photos: int = 40, lr: float = 1e-3) -> Path:
    """The stand-in (shipped fresh head, as the demo's) pretrained on the pool into ``out/run``; reused when present."""
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    classes = pool_classes(split.test_classes)
    assert not set(classes) & set(split.test_classes), "the pool must never contain an unseen class"
    pool_root = out / "pool_data"  # the drawing does not depend on the steps or the config's seed
    if not (pool_root / cfg.data.dataset / "split" / "all_classes.txt").is_file():
        write_pool(pool_root, classes, split.test_classes, photos=photos, size=cfg.data.img_size,
                   dataset=cfg.data.dataset, split=cfg.data.split)
    pool_cfg = copy.deepcopy(cfg)
    pool_cfg.data.root = str(pool_root)
    return train_standin(pool_cfg, out / run / "image_vit", steps=steps, lr=lr, head="random", device="cpu",
                         progress=False)


# ----------------------------------------------------------------------------- 3. stage B and scores
def metrics(cfg: Config, sets: ev.EvalSets, enc_img: Encode, enc_skt: Encode) -> tuple[dict[str, float], dict[str, float]]:
    """(mAP@all and P@100 of one model on the unseen classes, the chance level of the same gallery)."""
    feats, m = score(cfg, sets, enc_img, enc_skt, torch.device("cpu"))
    chance = chance_levels(feats["q_labels"], feats["g_labels"], ks_map=tuple(cfg.eval.map_k),
                           ks_prec=tuple(cfg.eval.prec_k))
    pm = ev.public_metrics(m)
    return {k: pm[k] for k in ("mAP@all", "P@100")}, {k: chance[k] for k in ("mAP@all", "P@100")}


@torch.no_grad()
def teacher_and_start(cfg: Config, sets: ev.EvalSets, image_vit: Path) -> dict[str, dict[str, float]]:
    """Unseen-class scores of an image teacher alone and of the fusion ViT initialised from it (as the demo)."""
    teacher = load_teacher(image_vit).eval()
    enc_img, enc_skt, _ = start_model(cfg, teacher, torch.device("cpu"))
    rows = {"image teacher": metrics(cfg, sets, teacher.embed, teacher.embed)[0]}
    rows["start"], rows["chance"] = metrics(cfg, sets, enc_img, enc_skt)
    return rows


def stage_b(cfg: Config, image_vit: Path, sketch_vit: Path, out: Path, epochs: int, variant: list[str]) -> Path:
    c = copy.deepcopy(cfg)
    for text in [f"train.epochs={epochs}", *variant]:
        config_mod.merge(c, config_mod.parse_override(text), f"override '{text}'")
    c.train.output_dir, c.train.image_teacher, c.train.sketch_teacher = str(out), str(image_vit), str(sketch_vit)
    return train(c, resume=True, device="cpu", progress=False)


def stage_b_rows(cfg: Config, sets: ev.EvalSets, teachers: dict[str, tuple[Path, Path]], out: Path,
                 epochs: int, tag: str) -> dict[str, dict[str, float]]:
    """Each teacher pair x each variant: stage B for ``epochs``, then tvt and start on the unseen classes.
    ``tag`` names the runs' folders (epochs and overrides), so other options never reuse a run."""
    rows: dict[str, dict[str, float]] = {}
    for t_name, (image_vit, sketch_vit) in teachers.items():
        for v_name, variant in VARIANTS.items():
            run = out / "stage_b" / f"{t_name}-{v_name.replace(' ', '_')}-{tag}"
            tvt_ckpt = stage_b(cfg, image_vit, sketch_vit, run, epochs, variant)
            encs = encoders(cfg, image_vit, tvt_ckpt, torch.device("cpu"))
            tvt, chance = metrics(cfg, sets, *encs["tvt"][:2])
            start, _ = metrics(cfg, sets, *encs["start"][:2])
            rows[f"{t_name} teachers, {v_name}"] = {"tvt mAP@all": tvt["mAP@all"], "tvt P@100": tvt["P@100"],
                                           "start mAP@all": start["mAP@all"], "start P@100": start["P@100"],
                                           "chance mAP@all": chance["mAP@all"], "chance P@100": chance["P@100"]}
    return rows


# ----------------------------------------------------------------------------- output
def table(rows: dict[str, dict[str, float]], first: str) -> str:
    cols = list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |" for name, r in rows.items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, required=True, help="a finished `tvt demo --out DIR` folder (read only)")
    p.add_argument("--out", type=Path, help="where fitted teachers and runs go (default DIR/teachers_diag)")
    p.add_argument("--fit-head", action="store_true", help="fit the image teacher's DINO head with the labels")
    p.add_argument("--pool", action="store_true", help="pretrain a stand-in on a pool of other synthetic classes")
    p.add_argument("--pool-steps", type=int, default=800)
    p.add_argument("--stage-b-epochs", type=int, default=0, help="train stage B for N epochs (0: skip)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the demo's config (repeatable), e.g. train.seed=1")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    demo = a.demo.resolve()
    out = (a.out or demo / "teachers_diag").resolve()
    cfg = demo_cfg(demo, a.overrides)
    image_vit, sketch_vit = demo_checkpoint(demo, "image_vit"), demo_checkpoint(demo, "sketch_vit")
    train_classes = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split).train_classes
    images = {"photos": image_tensor(cfg, "photo", train_classes), "sketches": image_tensor(cfg, "sketch", train_classes)}
    rows = {**signal_rows("image teacher (shipped head)", load_teacher(image_vit), images),
            **signal_rows("sketch teacher (stage A)", load_teacher(sketch_vit), images)}
    base, derived = image_vit, None
    # folders in out name what decides their content, so a run with other options never reuses them
    tag = f"-{zlib.crc32(' '.join(a.overrides).encode()):08x}" if a.overrides else ""
    derived_name = "_".join(n for n, on in ((f"pool{a.pool_steps}", a.pool), ("fitted", a.fit_head)) if on) + tag
    if a.pool:
        base = derived = pool_standin(cfg, out, a.pool_steps, f"pool{a.pool_steps}{tag}")
        rows.update(signal_rows("pool stand-in (fresh head)", load_teacher(base), images))
    if a.fit_head:
        fitted, loss = fitted_teacher(cfg, base, out / derived_name / "image_vit" / ckpt.LATEST, FitOptions())
        derived = fitted
        rows.update(signal_rows("image teacher (head fitted with labels)", load_teacher(fitted), images))
        print(f"fitted head: {fitted}" + (f" (final fit loss {loss:.3f})" if loss is not None else " (reused)"))
    print(f"\nTeacher signal on the training classes of {demo} (tau_t = {TEACHER_TEMP}):\n")
    print(table(rows, "teacher, images"))
    if a.pool or a.stage_b_epochs > 0:
        sets = unseen_sets(cfg)
    if a.pool:
        scores = {f"shipped stand-in: {k}": v for k, v in teacher_and_start(cfg, sets, image_vit).items()
                  if k != "chance"}
        scores.update({f"pool stand-in: {k}": v for k, v in teacher_and_start(cfg, sets, base).items()})
        print(f"\nPool stand-in ({len(pool_classes(sets.classes))} classes, seed {POOL_SEED}, {a.pool_steps} steps) "
              f"on the {len(sets.classes)} unseen classes:\n")
        print(table(scores, "model"))
    if a.stage_b_epochs > 0:
        teachers = {"shipped": (image_vit, sketch_vit)}
        if derived is not None:  # the derived image teacher and a stage-A sketch teacher started from it
            teachers[derived_name] = (derived, _stage_a(cfg, "sketch", str(derived), out / derived_name / "sketch_vit",
                                                        "cpu", False))
        print(f"\nStage B, {a.stage_b_epochs} epochs, unseen classes:\n")
        rows_b = stage_b_rows(cfg, sets, teachers, out, a.stage_b_epochs, f"e{a.stage_b_epochs}{tag}")
        print(table(rows_b, "teachers, terms"))


if __name__ == "__main__":
    main()
