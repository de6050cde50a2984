"""Stage B: train the fusion ViT (TVT) from a frozen image teacher and a frozen sketch teacher.

One optimizer step follows spec Appendix A: G image sub-batches of b = B/G photos, and after
every s-th of them one sketch sub-batch of b sketches; every sub-loss is divided by G + G/s [Q13];
then per-tensor clipping [Q15], last-layer cancelling in the first epoch, and the AdamW step.
Checkpoints are written atomically after every epoch and hold everything needed to resume
bit-exactly on CPU (optimizer, centres, RNG states).
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from tvt import config as config_mod
from tvt.config import Config
from tvt.data.folder import ClassFolder
from tvt.data.layout import Split, load_split, outliers_for
from tvt.data.paired import PairedLoader, substep_plan
from tvt.data.transforms import tvt_train_transform
from tvt.engine import checkpoint as ckpt
from tvt.engine.common import (JsonlLogger, seed_everything, Throughput, autocast, cancel_last_layer, clip_per_parameter,
                               make_scaler, param_groups, resolve_precision, set_lr_wd)
from tvt.engine.distributed import DistInfo, all_reduce_mean, barrier, setup
from tvt.engine.schedules import align_uniform_schedule, cosine_scheduler, teacher_temp_schedule
from tvt.errors import ConfigError
from tvt.losses.dino import DINOCenter
from tvt.losses.hypersphere import CenterAlignment
from tvt.losses.objective import tvt_loss
from tvt.models.weights import init_student_from_teacher, load_teacher


@dataclass
class Schedules:
    lr: Any
    wd: Any
    w_t: Any
    teacher_temp: Any


@dataclass
class Run:
    """Everything a training step needs, built once."""

    cfg: Config
    dist: DistInfo
    split: Split
    loader: PairedLoader
    student: nn.Module  # possibly DDP-wrapped
    teacher_img: nn.Module
    teacher_skt: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    dino_center: DINOCenter
    ca: CenterAlignment
    sched: Schedules
    precision: str
    out_dir: Path

    @property
    def bare_student(self) -> nn.Module:
        return self.student.module if hasattr(self.student, "module") else self.student


def _check_teacher_paths(cfg: Config) -> None:
    for key in ("image_teacher", "sketch_teacher"):
        if not getattr(cfg.train, key):
            raise ConfigError(f"train.{key} is required: the path of the frozen {key.replace('_', ' ')} checkpoint "
                              "(stage B never starts from random weights [Q18])")


def _datasets(cfg: Config, split: Split) -> tuple[ClassFolder, ClassFolder]:
    d = cfg.data
    if d.global_crops != 1 or d.local_crops != 0:
        raise ConfigError("data.global_crops must be 1 and data.local_crops 0 (the README setting); multi-crop stage B "
                          "(instance alignment [Q7]) is not supported in this version")
    common = dict(size=d.img_size, scale=tuple(d.global_crops_scale), global_crops=1, local_crops=0)
    photo_tf = tvt_train_transform(**common, solarize=True)
    sketch_tf = tvt_train_transform(**common, solarize=d.solarize_sketch)
    root = Path(d.root) / d.dataset
    photos = ClassFolder(root / "photo", split.train_classes, photo_tf, alpha_background=d.alpha_background)
    sketches = ClassFolder(root / "sketch", split.train_classes, sketch_tf, outliers=outliers_for(d.dataset),
                           alpha_background=d.alpha_background)
    return photos, sketches


def _schedules(cfg: Config, n_iter: int, world: int) -> Schedules:
    t = cfg.train
    peak = t.lr * t.batch_size * world / 256.0
    return Schedules(
        lr=cosine_scheduler(peak, t.min_lr, t.epochs, n_iter, warmup_epochs=t.warmup_epochs,
                            early_schedule_epochs=t.early_schedule_epochs),
        wd=cosine_scheduler(t.weight_decay, t.weight_decay_end, t.epochs, n_iter,
                            early_schedule_epochs=t.early_schedule_epochs),
        w_t=align_uniform_schedule(t.align_uniform_weight, t.epochs, n_iter, t.align_uniform_epochs),
        teacher_temp=teacher_temp_schedule(t.warmup_teacher_temp, t.teacher_temp, t.warmup_teacher_temp_epochs, t.epochs),
    )


def build_run(cfg: Config, device: str = "auto") -> Run:
    """Load data, teachers and the student; build optimizer, losses and schedules."""
    _check_teacher_paths(cfg)
    info = setup(device)
    seed_everything(cfg.train.seed)
    t = cfg.train
    if t.accum_steps % t.skt_factor:
        raise ConfigError(f"train.accum_steps ({t.accum_steps}) must be a multiple of train.skt_factor ({t.skt_factor})")
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    photos, sketches = _datasets(cfg, split)
    loader = PairedLoader(photos, sketches, t.batch_size, t.skt_factor, num_workers=cfg.data.num_workers,
                          seed=t.seed, rank=info.rank, world_size=info.world_size, pin_memory=info.device.type == "cuda")
    teacher_img = load_teacher(t.image_teacher).to(info.device).eval().requires_grad_(False)
    teacher_skt = load_teacher(t.sketch_teacher).to(info.device).eval().requires_grad_(False)
    student = init_student_from_teacher(teacher_img, num_classes=len(split.train_classes),
                                        token_num=cfg.model.token_num, pos_resample=cfg.model.pos_resample)
    student = student.to(info.device)
    student.train(not t.disable_dropout)  # [Q19]: README runs keep the student in eval mode
    if info.world_size > 1:  # frozen teachers are never wrapped in DDP
        student = nn.parallel.DistributedDataParallel(student, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    bare = student.module if hasattr(student, "module") else student
    optimizer = torch.optim.AdamW(param_groups(bare, t.backbone_lr_mult))
    out_dim = bare.head.last_layer.weight_v.shape[0]
    bottleneck = bare.head_fusion.fc.weight.shape[1]
    precision = resolve_precision(t.precision, info.device)
    return Run(
        cfg=cfg, dist=info, split=split, loader=loader, student=student, teacher_img=teacher_img,
        teacher_skt=teacher_skt, optimizer=optimizer, scaler=make_scaler(precision),
        dino_center=DINOCenter(out_dim, names=("img", "skt"), momentum=t.center_momentum).to(info.device),
        ca=CenterAlignment(len(split.train_classes), dim=bottleneck, momentum=t.ca_momentum).to(info.device),
        sched=_schedules(cfg, len(loader) if not t.max_steps_per_epoch else min(len(loader), t.max_steps_per_epoch),
                         info.world_size),
        precision=precision, out_dir=Path(t.output_dir),
    )


def _substep(run: Run, x: torch.Tensor, y: torch.Tensor, modality: str, epoch: int, it: int, n_sub: int,
             sync: bool) -> dict[str, float]:
    """Forward + backward of one sub-batch of one modality; returns the loss terms (unscaled)."""
    teacher = run.teacher_img if modality == "img" else run.teacher_skt
    ctx = run.student.no_sync() if (hasattr(run.student, "no_sync") and not sync) else contextlib.nullcontext()
    with ctx:
        with torch.no_grad(), autocast(run.precision, run.dist.device):
            t_logits = teacher(x)
        with autocast(run.precision, run.dist.device):
            out = run.student(x, modality)
        out = types.SimpleNamespace(dino_logits=out.dino_logits.float(), cls_logits=out.cls_logits.float(), f=out.f.float())
        terms = tvt_loss(out, t_logits.float(), y, modality, dino_center=run.dino_center, ca=run.ca,
                         teacher_temp=float(run.sched.teacher_temp[epoch]), w_t=float(run.sched.w_t[it]),
                         align_weight=run.cfg.train.align_uniform_weight, use_align_uniform=run.cfg.train.use_align_uniform,
                         smoothing=run.cfg.train.label_smoothing, student_temp=run.cfg.train.student_temp)
        loss = terms["loss"] / n_sub
        if not math.isfinite(loss.item()):  # [Q14] checked on every sub-loss here, not only the last
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, iteration {it} ({modality}); stopping")
        (run.scaler.scale(loss) if run.scaler else loss).backward()
    return {k: float(v.detach()) for k, v in terms.items()}


def train_step(run: Run, batch: tuple, epoch: int, it: int) -> dict[str, float]:
    """One optimizer step over a photo batch and a sketch batch (spec Appendix A)."""
    t = run.cfg.train
    photos, y_img, sketches, y_skt = batch
    dev = run.dist.device
    x_img, x_skt = photos[0].to(dev, non_blocking=True), sketches[0].to(dev, non_blocking=True)
    y_img, y_skt = y_img.to(dev), y_skt.to(dev)
    set_lr_wd(run.optimizer, float(run.sched.lr[it]), float(run.sched.wd[it]))
    plan = substep_plan(x_img.shape[0], t.accum_steps, t.skt_factor)
    n_sub = sum(1 + (s is not None) for _, s in plan)
    sums: dict[str, float] = {}
    for i, (img_sl, skt_sl) in enumerate(plan):
        last = i == len(plan) - 1
        parts = [("img", x_img[img_sl], y_img[img_sl])]
        if skt_sl is not None:
            parts.append(("skt", x_skt[skt_sl], y_skt[skt_sl]))
        for modality, x, y in parts:
            terms = _substep(run, x, y, modality, epoch, it, n_sub, sync=last)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v / n_sub
    bare = run.bare_student
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    clip_per_parameter(bare.parameters(), t.clip_grad)
    cancel_last_layer(bare, epoch, t.freeze_last_layer)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return sums


def state_dict(run: Run, epoch: int) -> dict[str, Any]:
    """The checkpoint written after ``epoch`` (0-based) finished."""
    bare = run.bare_student
    return {
        "format": "tvt", "version": 1, "stage": "tvt",
        "student": bare.state_dict(),
        "arch": {"token_num": run.cfg.model.token_num, "pos_resample": run.cfg.model.pos_resample,
                 "num_heads": bare.backbone.blocks[0].attn.num_heads},
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler else {},
        "dino_loss": run.dino_center.state_dict(),
        "ca_loss": run.ca.state_dict(),
        "epoch": epoch + 1,
        "config": config_mod.as_plain(run.cfg),
        "train_classes": list(run.split.train_classes),
        "test_classes": list(run.split.test_classes),
        "dataset": run.cfg.data.dataset, "split": run.cfg.data.split,
        "teachers": {"image": str(run.cfg.train.image_teacher), "sketch": str(run.cfg.train.sketch_teacher)},
        "rng": ckpt.rng_state(),
    }


def load_state(run: Run, state: dict[str, Any]) -> int:
    """Restore a checkpoint into ``run``; returns the epoch to start from."""
    if state.get("stage") != "tvt" or state.get("train_classes") != list(run.split.train_classes):
        raise ConfigError("the checkpoint in the output directory belongs to a different run (stage or training classes "
                          f"differ); use another train.output_dir or delete {run.out_dir / ckpt.LATEST}")
    run.bare_student.load_state_dict(state["student"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scaler and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.dino_center.load_state_dict(state["dino_loss"])
    run.ca.load_state_dict(state["ca_loss"])
    ckpt.set_rng_state(state["rng"])
    return int(state["epoch"])


def _save(run: Run, epoch: int) -> None:
    if not run.dist.is_main:
        return
    state = state_dict(run, epoch)
    ckpt.save_atomic(state, run.out_dir / ckpt.LATEST)
    every = run.cfg.train.save_every
    if every and (epoch + 1) % every == 0:
        ckpt.save_atomic(state, run.out_dir / f"checkpoint-{epoch + 1:04d}.pth")


def train(cfg: Config, resume: bool = True, device: str = "auto", progress: bool = True) -> Path:
    """Run stage B to ``cfg.train.epochs``; resume from the output directory when asked."""
    run = build_run(cfg, device)
    start = 0
    if resume and (found := ckpt.load_latest(run.out_dir)) is not None:
        start = load_state(run, found[0])
        if run.dist.is_main:
            print(f"tvt: resuming from {found[1]} at epoch {start}", file=sys.stderr)
    if run.dist.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, run.out_dir / "config.yaml")
    log = JsonlLogger(run.out_dir / "log.jsonl", enabled=run.dist.is_main)
    n_iter = len(run.sched.lr) // max(cfg.train.epochs, 1)
    for epoch in range(start, cfg.train.epochs):
        run_epoch(run, epoch, n_iter, log, progress and run.dist.is_main)
        _save(run, epoch)
        barrier()
    return run.out_dir / ckpt.LATEST


def run_epoch(run: Run, epoch: int, n_iter: int, log: JsonlLogger, progress: bool) -> dict[str, float]:
    """Train one epoch of ``n_iter`` optimizer steps; log every ``log_every`` steps and at the end."""
    run.loader.set_epoch(epoch)
    meter, tput = Throughput(), Throughput()
    totals: dict[str, float] = {}
    bar = tqdm(total=n_iter, desc=f"tvt epoch {epoch + 1}/{run.cfg.train.epochs}", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for step, batch in enumerate(run.loader):
        if step >= n_iter:
            break
        it = epoch * n_iter + step
        terms = train_step(run, batch, epoch, it)
        n_img = (batch[0][0].shape[0] + batch[2][0].shape[0]) * run.dist.world_size
        meter.add(n_img), tput.add(n_img)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v
        bar.update(1)
        bar.set_postfix(loss=f"{terms['loss']:.3f}")
        if (step + 1) % run.cfg.train.log_every == 0 or step + 1 == n_iter:
            log.write({"type": "step", "epoch": epoch, "step": step, "it": it, **terms,
                       "lr_backbone": float(run.sched.lr[it]) * run.cfg.train.backbone_lr_mult,
                       "lr": float(run.sched.lr[it]), "wd": float(run.sched.wd[it]),
                       "teacher_temp": float(run.sched.teacher_temp[epoch]), "w_t": float(run.sched.w_t[it]),
                       "img_per_s": meter.rate()})
    bar.close()
    means = {f"train_{k}": all_reduce_mean(v / max(n_iter, 1), run.dist.device) for k, v in totals.items()}
    log.write({"type": "epoch", "epoch": epoch, **means, "img_per_s": tput.rate()})
    return means
