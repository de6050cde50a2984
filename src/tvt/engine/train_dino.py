"""Stage A: DINO self-distillation of a ViT on the training-class images of one modality (spec §5).

Used for the sketch ViT (``sketch.modality: sketch``, starting from the image ViT) and, in the demo,
for an image ViT trained from scratch on photos (``modality: photo``, ``init: random``). Decisions:
a fresh AdamW instead of inheriting ImageNet optimizer state [Q36]; per-sub-batch clipping as the
official code [Q37] (``clip_mode: per_step`` clips the summed gradient once); the sub-batch losses
are averaged over the G sub-batches; model selection on held-out *training* classes [Q39].
"""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tvt import config as config_mod
from tvt.config import Config
from tvt.data.folder import ClassFolder
from tvt.data.layout import load_split, outliers_for
from tvt.data.transforms import dino_multicrop_transform, eval_transform
from tvt.engine import checkpoint as ckpt
from tvt.engine.common import JsonlLogger, Throughput, seed_everything, cancel_last_layer, clip_per_parameter, param_groups, set_lr_wd
from tvt.engine.distributed import all_reduce_mean, barrier, setup
from tvt.engine.schedules import cosine_scheduler, teacher_temp_schedule
from tvt.errors import ConfigError
from tvt.eval.extract import extract_features
from tvt.eval.metrics import retrieval_metrics
from tvt.losses.dino import DINOCenter, dino_loss
from tvt.models.heads import DINOHead
from tvt.models.vit import ViTArch, build_vit
from tvt.models.weights import load_teacher
from tvt.models.wrappers import Teacher


def _modality_dir(cfg: Config) -> tuple[Path, dict]:
    sc = cfg.sketch
    if sc.modality not in ("sketch", "photo"):
        raise ConfigError(f"sketch.modality must be 'sketch' or 'photo', got {sc.modality!r}")
    root = Path(cfg.data.root) / cfg.data.dataset / sc.modality
    return root, (outliers_for(cfg.data.dataset) if sc.modality == "sketch" else {})


def split_holdout(train_classes: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """[Q39] Hold out a seeded random ``fraction`` of the training classes for model selection."""
    n = max(1, round(fraction * len(train_classes))) if fraction > 0 else 0
    rng = random.Random(seed)
    held = sorted(rng.sample(list(train_classes), n)) if n else []
    return [c for c in train_classes if c not in held], held


def build_teacher(cfg: Config) -> Teacher:
    """The stage-A starting model: a full DINO checkpoint, or random weights when asked explicitly."""
    sc, m = cfg.sketch, cfg.model
    if sc.init == "random":
        arch = ViTArch(img_size=cfg.data.img_size, patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth,
                       num_heads=m.num_heads, mlp_ratio=m.mlp_ratio)
        head = DINOHead(m.embed_dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim, norm_last_layer=sc.norm_last_layer)
        return Teacher(build_vit(arch), head)
    if not sc.init:
        raise ConfigError("sketch.init is required: the path of a full DINO checkpoint of the image ViT (teacher with "
                          "head), or 'random' to train from scratch deliberately")
    return load_teacher(sc.init)


def _set_drop_path(vit: nn.Module, rate: float) -> None:
    """Linear stochastic-depth rates rate * i / (depth - 1) on a timm ViT (spec §2.1)."""
    from timm.layers import DropPath

    depth = len(vit.blocks)
    for i, blk in enumerate(vit.blocks):
        p = rate * i / max(depth - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(p) if p > 0 else nn.Identity())


def _unfreeze_g(head: nn.Module, norm_last_layer: bool) -> None:
    g = getattr(head.last_layer, "weight_g", None)
    if g is not None:
        g.requires_grad_(not norm_last_layer)


@torch.inference_mode()
def holdout_score(backbone: nn.Module, folder_root: Path, classes: list[str], outliers: dict, img_size: int,
                  device: torch.device, batch_size: int = 64) -> dict[str, float]:
    """Intra-modal retrieval (query excluded from the gallery) on held-out training classes."""
    ds = ClassFolder(folder_root, classes, eval_transform(img_size), outliers=outliers)
    was = backbone.training
    backbone.eval()
    feats = extract_features(lambda x: backbone(x), ds, batch_size=batch_size, device=device, progress=False)
    backbone.train(was)
    labels = np.asarray(ds.targets)
    return retrieval_metrics(feats, labels, feats, labels, ks_map=(), ks_prec=(), exclude_self=True)


def train(cfg: Config, resume: bool = True, device: str = "auto", progress: bool = True) -> Path:
    """Run stage A; returns the path of the selected checkpoint (best on hold-out, or last)."""
    sc = cfg.sketch
    info = setup(device)
    seed_everything(sc.seed)
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    train_classes, held = (split_holdout(split.train_classes, sc.holdout_fraction, sc.seed)
                           if sc.selection == "holdout" else (list(split.train_classes), []))
    if sc.selection not in ("holdout", "last"):
        raise ConfigError(f"sketch.selection must be 'holdout' or 'last', got {sc.selection!r}")
    root, outliers = _modality_dir(cfg)
    tf = dino_multicrop_transform(global_size=cfg.data.img_size, local_size=sc.local_crops_size,
                                  global_scale=tuple(sc.global_crops_scale), local_scale=tuple(sc.local_crops_scale),
                                  local_crops=sc.local_crops)
    ds = ClassFolder(root, train_classes, tf, outliers=outliers, alpha_background=cfg.data.alpha_background)
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=sc.seed)
    if len(ds) < sc.batch_size * info.world_size:
        raise ConfigError(f"sketch.batch_size {sc.batch_size} x {info.world_size} processes is larger than the "
                          f"{len(ds)} training images in {root}")
    loader = torch.utils.data.DataLoader(ds, batch_size=sc.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda")
    teacher = build_teacher(cfg).to(info.device)
    student = copy.deepcopy(teacher)  # spec §5: the student starts as a copy of the teacher
    _set_drop_path(student.backbone, sc.drop_path_rate)
    _unfreeze_g(student.head, sc.norm_last_layer)
    teacher.eval().requires_grad_(False)
    student.train()
    model = nn.parallel.DistributedDataParallel(student) if info.world_size > 1 else student
    optimizer = torch.optim.AdamW(param_groups(student, None))  # fresh optimizer [Q36]
    out_dim = student.head.last_layer.weight_v.shape[0]
    center = DINOCenter(out_dim, names=("center",), momentum=0.9).to(info.device)
    n_iter = len(loader) if not sc.max_steps_per_epoch else min(len(loader), sc.max_steps_per_epoch)
    peak = sc.lr * sc.batch_size * info.world_size / 256.0
    sched = {
        "lr": cosine_scheduler(peak, sc.min_lr, sc.epochs, n_iter, warmup_epochs=sc.warmup_epochs),
        "wd": cosine_scheduler(sc.weight_decay, sc.weight_decay_end, sc.epochs, n_iter),
        "m": cosine_scheduler(sc.momentum_teacher, 1.0, sc.epochs, n_iter),
        "tt": teacher_temp_schedule(sc.warmup_teacher_temp, sc.teacher_temp, sc.warmup_teacher_temp_epochs, sc.epochs),
    }
    out_dir = Path(sc.output_dir)
    start, best = 0, {"score": -1.0, "epoch": -1}
    if resume and (found := ckpt.load_latest(out_dir)) is not None:
        state = found[0]
        student.load_state_dict(state["student"]), teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"]), center.load_state_dict(state["dino_loss"])
        ckpt.set_rng_state(state["rng"])
        start, best = int(state["epoch"]), dict(state.get("best", best))
        print(f"tvt: resuming stage A from {found[1]} at epoch {start}", file=sys.stderr)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, out_dir / "config.yaml")
    log = JsonlLogger(out_dir / "log.jsonl", enabled=info.is_main)
    stage = "sketch" if sc.modality == "sketch" else "image"
    for epoch in range(start, sc.epochs):
        sampler.set_epoch(epoch)
        mean_loss = _epoch(model, student, teacher, center, optimizer, loader, sched, cfg, epoch, n_iter, info, log,
                           progress and info.is_main)
        record: dict[str, Any] = {"type": "epoch", "epoch": epoch, "train_loss": mean_loss}
        if held:
            score = holdout_score(teacher.backbone, root, held, outliers, cfg.data.img_size, info.device)["mAP@all"]
            record["holdout_mAP@all"] = score
            if score > best["score"]:
                best = {"score": score, "epoch": epoch + 1}
        log.write(record)
        if info.is_main:
            state = {"format": "tvt", "version": 1, "stage": stage, "teacher": teacher.state_dict(),
                     "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                     "dino_loss": center.state_dict(), "epoch": epoch + 1, "config": config_mod.as_plain(cfg),
                     "train_classes": list(train_classes), "holdout_classes": held,
                     "test_classes": list(split.test_classes), "dataset": cfg.data.dataset, "split": cfg.data.split,
                     "arch": {"num_heads": teacher.backbone.blocks[0].attn.num_heads},
                     "best": best, "rng": ckpt.rng_state()}
            ckpt.save_atomic(state, out_dir / ckpt.LATEST)
            if sc.save_every and (epoch + 1) % sc.save_every == 0:
                ckpt.save_atomic(state, out_dir / f"checkpoint-{epoch + 1:04d}.pth")
            if held and best["epoch"] == epoch + 1:
                ckpt.save_atomic(state, out_dir / "checkpoint_best.pth")
        barrier()
    if held and (out_dir / "checkpoint_best.pth").is_file():
        return out_dir / "checkpoint_best.pth"
    return out_dir / ckpt.LATEST


def _epoch(model, student, teacher, center, optimizer, loader, sched, cfg: Config, epoch: int, n_iter: int, info,
           log: JsonlLogger, progress: bool) -> float:
    sc = cfg.sketch
    total, tput = 0.0, Throughput()
    bar = tqdm(total=n_iter, desc=f"stage A ({sc.modality}) epoch {epoch + 1}/{sc.epochs}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for step, (crops, _) in enumerate(loader):
        if step >= n_iter:
            break
        it = epoch * n_iter + step
        loss = _step(model, student, teacher, center, optimizer, crops, sched, sc, epoch, it, info.device)
        total += loss
        tput.add(crops[0].shape[0] * info.world_size)
        bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % sc.log_every == 0 or step + 1 == n_iter:
            log.write({"type": "step", "epoch": epoch, "step": step, "it": it, "loss": loss, "lr": float(sched["lr"][it]),
                       "wd": float(sched["wd"][it]), "momentum": float(sched["m"][it]),
                       "teacher_temp": float(sched["tt"][epoch]), "img_per_s": tput.rate()})
    bar.close()
    return all_reduce_mean(total / max(n_iter, 1), info.device)


def _step(model, student, teacher, center, optimizer, crops, sched, sc, epoch: int, it: int, device) -> float:
    """One optimizer step: G sub-batches, each with all crops; EMA update of the teacher."""
    set_lr_wd(optimizer, float(sched["lr"][it]), float(sched["wd"][it]))
    crops = [c.to(device, non_blocking=True) for c in crops]
    n = crops[0].shape[0]
    if n % sc.accum_steps:
        raise ConfigError(f"sketch.batch_size ({sc.batch_size}) must be a multiple of sketch.accum_steps ({sc.accum_steps})")
    b = n // sc.accum_steps
    total = 0.0
    for i in range(sc.accum_steps):
        sub = [c[i * b:(i + 1) * b] for c in crops]
        with torch.no_grad():
            t_out = teacher(sub[:2]).chunk(2)
        s_out = model(sub).chunk(len(sub))
        loss = dino_loss(list(s_out), list(t_out), center.center("center"), float(sched["tt"][epoch]), sc.student_temp)
        (loss / sc.accum_steps).backward()
        center.update("center", torch.cat(t_out))
        total += float(loss.detach()) / sc.accum_steps
        if sc.clip_mode == "per_substep":  # [Q37]: on the partly accumulated gradient
            clip_per_parameter(student.parameters(), sc.clip_grad)
            cancel_last_layer(student, epoch, sc.freeze_last_layer)
    if sc.clip_mode != "per_substep":
        clip_per_parameter(student.parameters(), sc.clip_grad)
        cancel_last_layer(student, epoch, sc.freeze_last_layer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # EMA teacher, once per optimizer step
        m = float(sched["m"][it])
        for p_s, p_t in zip(student.parameters(), teacher.parameters()):
            p_t.mul_(m).add_(p_s.detach(), alpha=1 - m)
    return total
