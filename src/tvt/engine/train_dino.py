"""Stage A: DINO self-distillation of a ViT on the training-class images of one modality (spec §5).

Used for the sketch ViT (``sketch.modality: sketch``, starting from the image ViT) and, in the demo,
for an image ViT trained from scratch on photos (``modality: photo``, ``init: random``). Decisions:
a fresh AdamW instead of inheriting ImageNet optimizer state [Q36]; per-sub-batch clipping as the
official code [Q37] (``clip_mode: per_step`` clips the summed gradient once); the sub-batch losses
are averaged over the G sub-batches; model selection on held-out *training* classes [Q39].

Runs as one process or under ``torchrun`` (DDP on the student, never on the EMA teacher). A W-rank
run equals one process with ``sketch.batch_size`` x W except for the clipping of [Q37], which acts
on each rank's sub-batch gradient averaged over ranks. Checkpoints are written by rank 0 after every
epoch, every ``sketch.checkpoint_every_steps`` steps and on SIGTERM/SIGINT; resume is bit-exact on
CPU, also mid-epoch.
"""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass, field
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
from tvt.engine.checkpoint import Position
from tvt.engine.common import (JsonlLogger, Throughput, cancel_last_layer, clip_per_parameter, config_arch, param_groups,
                               seed_everything, set_lr_wd)
from tvt.engine.distributed import DistInfo, all_reduce_mean, barrier, setup, wrap_ddp
from tvt.engine.faults import StopOnSignal
from tvt.engine.sampling import STREAM_STAGE_A, make_loader, seeded
from tvt.engine.schedules import cosine_scheduler, teacher_temp_schedule
from tvt.errors import ConfigError
from tvt.eval.extract import extract_features
from tvt.eval.metrics import retrieval_metrics
from tvt.losses.dino import DINOCenter, dino_loss
from tvt.models.heads import DINOHead
from tvt.models.vit import build_vit
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
        arch = config_arch(cfg)
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
                  device: torch.device, batch_size: int = 64, *, alpha_background: str = "white",
                  cache_dir: str | None = None) -> dict[str, float]:
    """Intra-modal retrieval (query excluded from the gallery) on held-out training classes."""
    ds = ClassFolder(folder_root, classes, eval_transform(img_size), outliers=outliers,
                     alpha_background=alpha_background, cache_dir=cache_dir)
    was = backbone.training
    backbone.eval()
    feats = extract_features(lambda x: backbone(x), ds, batch_size=batch_size, device=device, progress=False)
    backbone.train(was)
    labels = np.asarray(ds.targets)
    return retrieval_metrics(feats, labels, feats, labels, ks_map=(), ks_prec=(), exclude_self=True)


@dataclass
class StageA:
    """Everything the stage-A loop needs, built once."""

    cfg: Config
    info: DistInfo
    train_classes: list[str]
    held: list[str]
    test_classes: list[str]
    root: Path
    outliers: dict
    loader: torch.utils.data.DataLoader
    teacher: Teacher
    student: Teacher
    model: nn.Module  # the student, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    center: DINOCenter
    sched: dict[str, Any]
    n_iter: int
    out_dir: Path
    best: dict[str, Any] = field(default_factory=lambda: {"score": -1.0, "epoch": -1})


def build(cfg: Config, device: str = "auto") -> StageA:
    """Data, teacher/student pair, optimizer, centre and schedules of stage A."""
    sc = cfg.sketch
    info = setup(device)
    seed_everything(sc.seed)
    if sc.selection not in ("holdout", "last"):
        raise ConfigError(f"sketch.selection must be 'holdout' or 'last', got {sc.selection!r}")
    if sc.checkpoint_every_steps < 0:
        raise ConfigError(f"sketch.checkpoint_every_steps must be >= 0, got {sc.checkpoint_every_steps}")
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    train_classes, held = (split_holdout(split.train_classes, sc.holdout_fraction, sc.seed)
                           if sc.selection == "holdout" else (list(split.train_classes), []))
    root, outliers = _modality_dir(cfg)
    tf = dino_multicrop_transform(global_size=cfg.data.img_size, local_size=sc.local_crops_size,
                                  global_scale=tuple(sc.global_crops_scale), local_scale=tuple(sc.local_crops_scale),
                                  local_crops=sc.local_crops)
    ds = ClassFolder(root, train_classes, tf, outliers=outliers, alpha_background=cfg.data.alpha_background,
                     cache_dir=cfg.data.cache_dir or None)
    if len(ds) < sc.batch_size * info.world_size:
        raise ConfigError(f"sketch.batch_size {sc.batch_size} x {info.world_size} processes is larger than the "
                          f"{len(ds)} training images in {root}")
    loader = make_loader(seeded(ds, sc.seed, STREAM_STAGE_A, cfg.data.per_sample_seed), sc.batch_size, seed=sc.seed,
                         rank=info.rank, world_size=info.world_size, num_workers=cfg.data.num_workers,
                         pin_memory=info.device.type == "cuda")
    teacher = build_teacher(cfg).to(info.device)
    student = copy.deepcopy(teacher)  # spec §5: the student starts as a copy of the teacher
    _set_drop_path(student.backbone, sc.drop_path_rate)
    _unfreeze_g(student.head, sc.norm_last_layer)
    teacher.eval().requires_grad_(False)
    student.train()
    n_iter = len(loader) if not sc.max_steps_per_epoch else min(len(loader), sc.max_steps_per_epoch)
    peak = sc.lr * sc.batch_size * info.world_size / 256.0
    sched = {
        "lr": cosine_scheduler(peak, sc.min_lr, sc.epochs, n_iter, warmup_epochs=sc.warmup_epochs),
        "wd": cosine_scheduler(sc.weight_decay, sc.weight_decay_end, sc.epochs, n_iter),
        "m": cosine_scheduler(sc.momentum_teacher, 1.0, sc.epochs, n_iter),
        "tt": teacher_temp_schedule(sc.warmup_teacher_temp, sc.teacher_temp, sc.warmup_teacher_temp_epochs, sc.epochs),
    }
    return StageA(cfg=cfg, info=info, train_classes=train_classes, held=held, test_classes=list(split.test_classes),
                  root=root, outliers=outliers, loader=loader, teacher=teacher, student=student,
                  model=wrap_ddp(student, info), optimizer=torch.optim.AdamW(param_groups(student, None)),  # [Q36]
                  center=DINOCenter(student.head.last_layer.weight_v.shape[0], names=("center",), momentum=0.9).to(info.device),
                  sched=sched, n_iter=n_iter, out_dir=Path(sc.output_dir))


def _state(a: StageA, epoch: int, step: int = 0, totals: dict[str, float] | None = None) -> dict[str, Any]:
    cfg = a.cfg
    return {"format": "tvt", "version": 1, "stage": "sketch" if cfg.sketch.modality == "sketch" else "image",
            "teacher": a.teacher.state_dict(), "student": a.student.state_dict(), "optimizer": a.optimizer.state_dict(),
            "dino_loss": a.center.state_dict(), "epoch": epoch, "step": step, "steps_per_epoch": a.n_iter,
            "epoch_totals": dict(totals or {}), "config": config_mod.as_plain(cfg),
            "train_classes": list(a.train_classes), "holdout_classes": a.held, "test_classes": a.test_classes,
            "dataset": cfg.data.dataset, "split": cfg.data.split,
            "arch": {"num_heads": a.teacher.backbone.blocks[0].attn.num_heads},
            "best": a.best, "rng": ckpt.rng_state()}


def _load(a: StageA, state: dict[str, Any]) -> Position:
    if state.get("step") and state.get("steps_per_epoch", a.n_iter) != a.n_iter:
        raise ConfigError(f"the mid-epoch checkpoint in {a.out_dir} was written with {state['steps_per_epoch']} steps "
                          f"per epoch, this run has {a.n_iter}; resume with the same settings or delete it")
    a.student.load_state_dict(state["student"]), a.teacher.load_state_dict(state["teacher"])
    a.optimizer.load_state_dict(state["optimizer"]), a.center.load_state_dict(state["dino_loss"])
    a.best = dict(state.get("best", a.best))
    return ckpt.position(state)


def _save(a: StageA, epoch: int, step: int = 0, totals: dict[str, float] | None = None) -> Path | None:
    """Rank 0 writes checkpoint.pth (+ numbered every ``save_every`` epochs, + best)."""
    if not a.info.is_main:
        return None
    state = _state(a, epoch, step, totals)
    path = ckpt.save_run_files(state, a.out_dir, epoch, step, a.cfg.sketch.save_every)
    if step == 0 and a.held and a.best["epoch"] == epoch:
        ckpt.save_atomic(state, a.out_dir / "checkpoint_best.pth")
    return path


def train(cfg: Config, resume: bool = True, device: str = "auto", progress: bool = True) -> Path:
    """Run stage A; returns the path of the selected checkpoint (best on hold-out, or last).

    Raises :class:`TrainingInterrupted` after saving when SIGTERM/SIGINT arrives.
    """
    a = build(cfg, device)
    pos = ckpt.open_run(a.out_dir, resume, lambda state: _load(a, state), a.info.is_main, "stage A")
    if a.info.is_main:
        a.out_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, a.out_dir / "config.yaml")
    log = JsonlLogger(a.out_dir / "log.jsonl", enabled=a.info.is_main)
    with StopOnSignal(announce=a.info.is_main) as stop:
        for epoch in range(pos.epoch, cfg.sketch.epochs):
            here = pos if epoch == pos.epoch else Position(epoch)
            record: dict[str, Any] = {"type": "epoch", "epoch": epoch,
                                      "train_loss": _epoch(a, epoch, log, progress and a.info.is_main, here, stop)}
            if a.held:
                score = holdout_score(a.teacher.backbone, a.root, a.held, a.outliers, cfg.data.img_size, a.info.device,
                                      alpha_background=cfg.data.alpha_background, cache_dir=cfg.data.cache_dir or None)
                record["holdout_mAP@all"] = score["mAP@all"]
                if score["mAP@all"] > a.best["score"]:
                    a.best = {"score": score["mAP@all"], "epoch": epoch + 1}
            log.write(record)
            path = _save(a, epoch + 1)
            barrier()
            if (sig := stop.agreed(a.info.device)) and epoch + 1 < cfg.sketch.epochs:
                raise stop.interrupted(sig, path, epoch + 1, 0)
    if a.held and (a.out_dir / "checkpoint_best.pth").is_file():
        return a.out_dir / "checkpoint_best.pth"
    return a.out_dir / ckpt.LATEST


def _epoch(a: StageA, epoch: int, log: JsonlLogger, progress: bool, start: Position, stop: StopOnSignal) -> float:
    """Epoch ``epoch`` from step ``start.step``; returns the mean loss over the epoch's steps."""
    sc, n_iter = a.cfg.sketch, a.n_iter
    a.loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    a.loader.sampler.start = start.step * sc.batch_size  # type: ignore[union-attr]
    if hasattr(a.loader.dataset, "set_epoch"):
        a.loader.dataset.set_epoch(epoch)
    batches = iter(a.loader)
    if start.rng is not None:  # mid-epoch resume: the RNG as it was after `start.step` steps
        ckpt.set_rng_state(start.rng)
    totals, tput = {"loss": start.totals.get("loss", 0.0)}, Throughput()
    bar = tqdm(total=n_iter, initial=start.step, desc=f"stage A ({sc.modality}) epoch {epoch + 1}/{sc.epochs}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for step, (crops, _) in enumerate(batches, start=start.step):
        if step >= n_iter:
            break
        it = epoch * n_iter + step
        loss = _step(a.model, a.student, a.teacher, a.center, a.optimizer, crops, a.sched, sc, epoch, it, a.info.device)
        totals["loss"] += loss
        tput.add(crops[0].shape[0] * a.info.world_size)
        bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % sc.log_every == 0 or step + 1 == n_iter:
            log.write({"type": "step", "epoch": epoch, "step": step, "it": it, "loss": loss,
                       "lr": float(a.sched["lr"][it]), "wd": float(a.sched["wd"][it]),
                       "momentum": float(a.sched["m"][it]), "teacher_temp": float(a.sched["tt"][epoch]),
                       "img_per_s": tput.rate()})
        if step + 1 < n_iter:
            sig = stop.agreed(a.info.device)
            if sig or (sc.checkpoint_every_steps and (step + 1) % sc.checkpoint_every_steps == 0):
                path = _save(a, epoch, step + 1, totals)
                barrier()
                if sig:
                    bar.close()
                    raise stop.interrupted(sig, path, epoch, step + 1)
    bar.close()
    return all_reduce_mean(totals["loss"] / max(n_iter, 1), a.info.device)


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
