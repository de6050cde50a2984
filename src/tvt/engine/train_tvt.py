"""Stage B: train the fusion ViT (TVT) from a frozen image teacher and a frozen sketch teacher.

One optimizer step follows spec Appendix A (:mod:`tvt.engine.tvt_step`). Runs as one process or
under ``torchrun`` (DDP on the student only; the frozen teachers are never wrapped). World size
matters [Q21]: uniformity is per rank, DINO and class centres use every rank's rows, the LR scales
with ``B * W``. ``train.virtual_world_size = W`` reproduces a ``W``-process run in one process.

Checkpoints (:mod:`tvt.engine.tvt_state`) are written atomically by rank 0 after every epoch,
every ``train.checkpoint_every_steps`` optimizer steps and on SIGTERM/SIGINT
(:mod:`tvt.engine.faults`); a resume continues bit-exactly on CPU, also from the middle of an
epoch.
"""

from __future__ import annotations

import sys
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
from tvt.data.transforms import tvt_train_transform
from tvt.engine import checkpoint as ckpt
from tvt.engine.common import JsonlLogger, Throughput, make_scaler, param_groups, resolve_precision, seed_everything
from tvt.engine.distributed import DistInfo, all_reduce_mean, barrier, setup, wrap_ddp
from tvt.engine.faults import StopOnSignal
from tvt.engine.sampling import ResumablePairedLoader, VirtualRankLoader
from tvt.engine.schedules import align_uniform_schedule, cosine_scheduler, teacher_temp_schedule
from tvt.engine.checkpoint import Position
from tvt.engine.tvt_state import load_state, save
from tvt.engine.tvt_step import train_step
from tvt.errors import ConfigError
from tvt.losses.dino import DINOCenter
from tvt.losses.hypersphere import CenterAlignment
from tvt.models.weights import init_student_from_teacher, load_teacher

__all__ = ["Run", "Schedules", "build_run", "train", "run_epoch", "train_step"]


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
    loader: ResumablePairedLoader | VirtualRankLoader
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
    n_iter: int  # optimizer steps per epoch
    virtual: int = 1  # virtual ranks emulated by this process [Q21]

    @property
    def bare_student(self) -> nn.Module:
        return self.student.module if hasattr(self.student, "module") else self.student


def _check(cfg: Config, info: DistInfo) -> None:
    t = cfg.train
    for key in ("image_teacher", "sketch_teacher"):
        if not getattr(t, key):
            raise ConfigError(f"train.{key} is required: the path of the frozen {key.replace('_', ' ')} checkpoint "
                              "(stage B never starts from random weights [Q18])")
    if t.accum_steps % t.skt_factor:
        raise ConfigError(f"train.accum_steps ({t.accum_steps}) must be a multiple of train.skt_factor ({t.skt_factor})")
    if t.virtual_world_size < 1 or (t.virtual_world_size > 1 and info.world_size > 1):
        raise ConfigError(f"train.virtual_world_size ({t.virtual_world_size}) must be >= 1, and 1 under torchrun "
                          f"(this run has {info.world_size} processes): it emulates several ranks in one process")
    if t.checkpoint_every_steps < 0:
        raise ConfigError(f"train.checkpoint_every_steps must be >= 0 (0 = only at epoch ends), got {t.checkpoint_every_steps}")


def _datasets(cfg: Config, split: Split) -> tuple[ClassFolder, ClassFolder]:
    d = cfg.data
    if d.global_crops not in (1, 2) or d.local_crops < 0:
        raise ConfigError(f"data.global_crops must be 1 or 2 and data.local_crops >= 0, got {d.global_crops} and "
                          f"{d.local_crops} (the README setting is 1 and 0)")
    if (d.global_crops > 1 or d.local_crops) and cfg.train.virtual_world_size > 1:
        raise ConfigError("train.virtual_world_size > 1 supports one crop per image only (data.global_crops=1, "
                          "data.local_crops=0)")
    common = dict(size=d.img_size, scale=tuple(d.global_crops_scale), global_crops=d.global_crops,
                  local_crops=d.local_crops, local_size=d.local_crops_size, local_scale=tuple(d.local_crops_scale))
    photo_tf = tvt_train_transform(**common, solarize=True)
    sketch_tf = tvt_train_transform(**common, solarize=d.solarize_sketch)
    root = Path(d.root) / d.dataset
    cache = d.cache_dir or None
    photos = ClassFolder(root / "photo", split.train_classes, photo_tf, alpha_background=d.alpha_background,
                         cache_dir=cache)
    sketches = ClassFolder(root / "sketch", split.train_classes, sketch_tf, outliers=outliers_for(d.dataset),
                           alpha_background=d.alpha_background, cache_dir=cache)
    return photos, sketches


def _loader(cfg: Config, split: Split, info: DistInfo) -> ResumablePairedLoader | VirtualRankLoader:
    """Real rank ``info.rank`` of ``info.world_size``, or all ``W`` virtual ranks of one process."""
    photos, sketches = _datasets(cfg, split)
    t, virtual = cfg.train, cfg.train.virtual_world_size
    ranks = range(virtual) if virtual > 1 else [info.rank]
    loaders = [ResumablePairedLoader(photos, sketches, t.batch_size, t.skt_factor, num_workers=cfg.data.num_workers,
                                     seed=t.seed, rank=r, world_size=max(virtual, info.world_size),
                                     pin_memory=info.device.type == "cuda", per_sample_seed=cfg.data.per_sample_seed)
               for r in ranks]
    return VirtualRankLoader(loaders) if virtual > 1 else loaders[0]


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
    info = setup(device)
    _check(cfg, info)
    seed_everything(cfg.train.seed)
    t = cfg.train
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    loader = _loader(cfg, split, info)
    teacher_img = load_teacher(t.image_teacher).to(info.device).eval().requires_grad_(False)
    teacher_skt = load_teacher(t.sketch_teacher).to(info.device).eval().requires_grad_(False)
    student = init_student_from_teacher(teacher_img, num_classes=len(split.train_classes),
                                        token_num=cfg.model.token_num, pos_resample=cfg.model.pos_resample)
    student = student.to(info.device)
    student.train(not t.disable_dropout)  # [Q19]: README runs keep the student in eval mode
    # [Q20]: with token_num 3 the sketch head is unused in image sub-steps, DDP must be told
    wrapped = wrap_ddp(student, info, find_unused_parameters=cfg.model.token_num == 3)
    optimizer = torch.optim.AdamW(param_groups(student, t.backbone_lr_mult))
    precision = resolve_precision(t.precision, info.device)
    n_iter = loader.full_len() if not t.max_steps_per_epoch else min(loader.full_len(), t.max_steps_per_epoch)
    return Run(
        cfg=cfg, dist=info, split=split, loader=loader, student=wrapped, teacher_img=teacher_img,
        teacher_skt=teacher_skt, optimizer=optimizer, scaler=make_scaler(precision),
        dino_center=DINOCenter(student.head.last_layer.weight_v.shape[0], names=("img", "skt"),
                               momentum=t.center_momentum).to(info.device),
        ca=CenterAlignment(len(split.train_classes), dim=student.head_fusion.fc.weight.shape[1],
                           momentum=t.ca_momentum).to(info.device),
        sched=_schedules(cfg, n_iter, info.world_size * t.virtual_world_size),
        precision=precision, out_dir=Path(t.output_dir), n_iter=n_iter, virtual=t.virtual_world_size,
    )


def train(cfg: Config, resume: bool = True, device: str = "auto", progress: bool = True) -> Path:
    """Run stage B to ``cfg.train.epochs``; resume from the output directory when asked.

    Raises :class:`TrainingInterrupted` after saving when SIGTERM/SIGINT arrives.
    """
    run = build_run(cfg, device)
    pos = ckpt.open_run(run.out_dir, resume, lambda state: load_state(run, state), run.dist.is_main, "stage B")
    if run.dist.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(cfg, run.out_dir / "config.yaml")
    log = JsonlLogger(run.out_dir / "log.jsonl", enabled=run.dist.is_main)
    with StopOnSignal(announce=run.dist.is_main) as stop:
        for epoch in range(pos.epoch, cfg.train.epochs):
            here = pos if epoch == pos.epoch else Position(epoch)
            run_epoch(run, epoch, run.n_iter, log, progress and run.dist.is_main, start=here, stop=stop)
            path = save(run, epoch + 1)
            barrier()
            if (sig := stop.agreed(run.dist.device)) and epoch + 1 < cfg.train.epochs:
                raise stop.interrupted(sig, path, epoch + 1, 0)
    return run.out_dir / ckpt.LATEST


def _log_step(run: Run, log: JsonlLogger, epoch: int, step: int, it: int, terms: dict[str, float], rate: float) -> None:
    log.write({"type": "step", "epoch": epoch, "step": step, "it": it, **terms,
               "lr_backbone": float(run.sched.lr[it]) * run.cfg.train.backbone_lr_mult,
               "lr": float(run.sched.lr[it]), "wd": float(run.sched.wd[it]),
               "teacher_temp": float(run.sched.teacher_temp[epoch]), "w_t": float(run.sched.w_t[it]),
               "img_per_s": rate})


def run_epoch(run: Run, epoch: int, n_iter: int, log: JsonlLogger, progress: bool, *, start: Position | None = None,
              stop: StopOnSignal | None = None) -> dict[str, float]:
    """Train epoch ``epoch`` from step ``start.step`` to ``n_iter``; log, checkpoint on request.

    After every optimizer step: a checkpoint every ``train.checkpoint_every_steps`` steps, and on
    an agreed stop signal a checkpoint followed by :class:`TrainingInterrupted`.
    """
    start = start or Position(epoch)
    run.loader.set_epoch(epoch)
    run.loader.skip(start.step)
    batches = iter(run.loader)
    if start.rng is not None:  # mid-epoch resume: the RNG as it was after `start.step` steps
        ckpt.set_rng_state(start.rng)
    every, meter, tput = run.cfg.train.checkpoint_every_steps, Throughput(), Throughput()
    totals = dict(start.totals)
    bar = tqdm(total=n_iter, initial=start.step, desc=f"tvt epoch {epoch + 1}/{run.cfg.train.epochs}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for step, batch in enumerate(batches, start=start.step):
        if step >= n_iter:
            break
        it = epoch * n_iter + step
        terms = train_step(run, batch, epoch, it)
        n_img = (batch[0][0].shape[0] + batch[2][0].shape[0]) * run.dist.world_size
        meter.add(n_img), tput.add(n_img)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v
        bar.update(1), bar.set_postfix(loss=f"{terms['loss']:.3f}")
        if (step + 1) % run.cfg.train.log_every == 0 or step + 1 == n_iter:
            _log_step(run, log, epoch, step, it, terms, meter.rate())
        if step + 1 < n_iter:
            sig = stop.agreed(run.dist.device) if stop is not None else None
            if sig or (every and (step + 1) % every == 0):
                path = save(run, epoch, step + 1, totals)
                barrier()
                if sig:
                    bar.close()
                    raise stop.interrupted(sig, path, epoch, step + 1)
    bar.close()
    means = {f"train_{k}": all_reduce_mean(v / max(n_iter, 1), run.dist.device) for k, v in totals.items()}
    log.write({"type": "epoch", "epoch": epoch, **means, "img_per_s": tput.rate()})
    return means
