"""Stage A: DINO self-distillation of a ViT on the training-class images of one modality (spec §5).

Used for the sketch ViT (``sketch.modality: sketch``, starting from the image ViT) and, in the demo,
for an image ViT trained from scratch on photos (``modality: photo``, ``init: random``).

One optimizer step follows ``sketch_dino.train_one_epoch`` of the official code: the per-process
batch is cut into ``G' = G + ceil((B mod G) / b)`` sub-batches (``b = B // G``), each loss is
divided by ``G'``, the student temperature is the per-process batch size [Q41] (``sketch.student_temp:
batch``; a number such as DINO's 0.1 is an option), clipping and last-layer cancelling run after
every sub-batch backward [Q37], the EMA teacher moves once per step. Decisions: a fresh AdamW
instead of inheriting ImageNet optimizer state [Q36]; model selection on held-out *training*
classes [Q39].

Under ``torchrun`` the student is DDP-wrapped and every sub-batch but the last runs under
``no_sync``, so the per-sub-batch clipping acts on rank-local partial sums, as in the official code.
``sketch.virtual_world_size = W`` plays W ranks in one process: each virtual rank keeps its own
gradient until the last sub-batch, where they are averaged (what DDP's all-reduce does).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tvt.config import Config
from tvt.data.folder import ClassFolder
from tvt.data.layout import load_split, outliers_for
from tvt.data.transforms import dino_multicrop_transform, eval_transform
from tvt.distributed import DistInfo, setup, wrap_ddp
from tvt.engine import checkpoint as ckpt
from tvt.engine import loop
from tvt.engine.checkpoint import Position
from tvt.engine.common import (autocast, cancel_last_layer, clip_per_parameter, config_arch, make_scaler, optimizer_step,
                               param_groups, resolve_precision, seed_everything, set_drop_path, set_lr_wd)
from tvt.engine.sampling import STREAM_STAGE_A, RankLoaders, make_loader, seeded
from tvt.engine.schedules import accumulation_slices, cosine_scheduler, teacher_temp_schedule
from tvt.errors import ConfigError
from tvt.eval.extract import extract_features
from tvt.eval.metrics import retrieval_metrics
from tvt.losses.dino import DINOCenter
from tvt.losses.objective import sketch_dino_loss
from tvt.models.backbone_weights import load_named_backbone
from tvt.models.backbones import backbone_norm, build_named_vit
from tvt.models.heads import DINOHead
from tvt.models.named import INIT_HEADS, check_teacher_backbone, new_dino_head
from tvt.models.vit import build_vit
from tvt.models.weights import load_teacher
from tvt.models.wrappers import Teacher


def split_holdout(train_classes: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """[Q39] Hold out a seeded random ``fraction`` of the training classes for model selection."""
    n = max(1, round(fraction * len(train_classes))) if fraction > 0 else 0
    rng = random.Random(seed)
    held = sorted(rng.sample(list(train_classes), n)) if n else []
    return [c for c in train_classes if c not in held], held


def stage_a_teacher(cfg: Config) -> Teacher | None:
    """Stage A's starting model when ``model.backbone`` names a backbone; None for the paper's path.

    ``sketch.init_head="new"`` (extension, for backbones released without a DINO head: DINOv2,
    CLIP, SigLIP): ``sketch.init`` holds only the backbone's weights (any format of
    :mod:`tvt.models.backbone_weights`, or ``random``) and a fresh DINO head of
    ``model.out_dim``/``head_hidden_dim``/``head_bottleneck_dim`` is put on top. Stage A on the
    training photos (``sketch.modality=photo``) then grows that head by DINO self-distillation;
    with ``sketch.freeze_backbone`` only the head learns, so the image teacher keeps the
    pretrained backbone. ``"checkpoint"``: ``sketch.init`` is a checkpoint with backbone and head.
    """
    sc, m = cfg.sketch, cfg.model
    if sc.init_head not in INIT_HEADS:
        raise ConfigError(f"sketch.init_head must be one of {INIT_HEADS}, got {sc.init_head!r}")
    if not m.backbone:
        if sc.init_head == "new":
            raise ConfigError("sketch.init_head=new needs model.backbone (the named backbone whose weights "
                              "sketch.init holds), e.g. model.backbone=dinov2_vits14")
        return None
    if sc.freeze_backbone and sc.selection == "holdout":
        raise ConfigError("sketch.freeze_backbone=true leaves the backbone (and so the hold-out score) unchanged; "
                          "use sketch.selection=last")
    if sc.init_head == "checkpoint":
        if not sc.init or sc.init == "random":
            raise ConfigError("with model.backbone and sketch.init_head=checkpoint, sketch.init must be a checkpoint "
                              "with a DINO head; for backbone weights alone use sketch.init_head=new")
        teacher = load_teacher(sc.init)
        check_teacher_backbone(m.backbone, teacher, sc.init)
        return teacher
    if not sc.init:
        raise ConfigError("sketch.init is required: the weights of model.backbone (file or folder), or 'random'")
    if sc.init == "random":
        vit = build_named_vit(m.backbone, cfg.data.img_size)
    else:
        vit = load_named_backbone(sc.init, m.backbone, cfg.data.img_size)
    head = new_dino_head(vit.embed_dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim, sc.norm_last_layer)
    return Teacher(vit.train(), head)


def build_teacher(cfg: Config) -> Teacher:
    """The stage-A starting model: a full DINO checkpoint, or random weights when asked explicitly."""
    sc, m = cfg.sketch, cfg.model
    if (named := stage_a_teacher(cfg)) is not None:  # model.backbone names a timm backbone
        return named
    if sc.init == "random":
        head = DINOHead(m.embed_dim, m.out_dim, m.head_hidden_dim, m.head_bottleneck_dim, norm_last_layer=sc.norm_last_layer)
        return Teacher(build_vit(config_arch(cfg)), head)
    if not sc.init:
        raise ConfigError("sketch.init is required: the path of a full DINO checkpoint of the image ViT (teacher with "
                          "head), or 'random' to train from scratch deliberately")
    return load_teacher(sc.init)


def student_temperature(cfg: Config) -> float:
    """τ_s of stage A: the per-process batch size for ``"batch"`` (official [Q41]), else the number."""
    st = cfg.sketch.student_temp
    return float(cfg.sketch.batch_size) if st == "batch" else float(st)


@torch.inference_mode()
def holdout_score(backbone: nn.Module, folder_root: Path, classes: list[str], outliers: dict, img_size: int,
                  device: torch.device, batch_size: int = 64, *, alpha_background: str = "white",
                  cache_dir: str | None = None) -> dict[str, float]:
    """Intra-modal retrieval (query excluded from the gallery) on held-out training classes."""
    norm = {k: getattr(backbone.arch, k) for k in ("mean", "std") if hasattr(backbone.arch, k)}  # named backbones
    ds = ClassFolder(folder_root, classes, eval_transform(img_size, **norm), outliers=outliers,
                     alpha_background=alpha_background, cache_dir=cache_dir)
    was = backbone.training
    backbone.eval()
    feats = extract_features(lambda x: backbone(x), ds, batch_size=batch_size, device=device, progress=False)
    backbone.train(was)
    labels = np.asarray(ds.targets)
    return retrieval_metrics(feats, labels, feats, labels, ks_map=(), ks_prec=(), exclude_self=True)


def check_config(cfg: Config, info: DistInfo, precision: str) -> None:
    sc = cfg.sketch
    if sc.accum_steps > sc.batch_size:
        raise ConfigError(f"sketch.accum_steps ({sc.accum_steps}) must be <= sketch.batch_size ({sc.batch_size}): "
                          "each sub-batch needs at least one image")
    if sc.virtual_world_size > 1 and info.world_size > 1:
        raise ConfigError(f"sketch.virtual_world_size ({sc.virtual_world_size}) must be 1 under torchrun (this run "
                          f"has {info.world_size} processes): it emulates several ranks in one process")
    if precision == "fp16" and sc.clip_mode == "per_substep":
        raise ConfigError("sketch.precision fp16 needs sketch.clip_mode per_step: the official per-sub-batch clipping "
                          "[Q37] would unscale the GradScaler gradients more than once per step (the official code "
                          "fails the same way); use fp32 (official) or bf16")


class SketchTask:
    """Stage A as the shared loop drives it (:class:`tvt.engine.loop.Task`)."""

    def __init__(self, cfg: Config, device: str = "auto") -> None:
        sc, self.cfg = cfg.sketch, cfg
        self.info = setup(device)
        self.precision = resolve_precision(sc.precision, self.info.device)
        check_config(cfg, self.info, self.precision)
        seed_everything(sc.seed)
        self.virtual = sc.virtual_world_size
        split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
        self.train_classes, self.held = (split_holdout(split.train_classes, sc.holdout_fraction, sc.seed)
                                         if sc.selection == "holdout" else (list(split.train_classes), []))
        self.test_classes = list(split.test_classes)
        self.root = Path(cfg.data.root) / cfg.data.dataset / sc.modality
        self.outliers = outliers_for(cfg.data.dataset) if sc.modality == "sketch" else {}
        self.loader = self._loader()
        self.teacher = build_teacher(cfg).to(self.info.device)
        self.student = copy.deepcopy(self.teacher)  # spec §5: the student starts as a copy of the teacher
        set_drop_path(self.student.backbone, sc.drop_path_rate)
        self.student.backbone.requires_grad_(not sc.freeze_backbone)  # head-only growth (sketch.init_head=new)
        g = getattr(self.student.head.last_layer, "weight_g", None)
        if g is not None:
            g.requires_grad_(not sc.norm_last_layer)
        self.teacher.eval().requires_grad_(False)
        self.student.train()
        self.model = wrap_ddp(self.student, self.info)
        self.optimizer = torch.optim.AdamW(param_groups(self.student, None))  # [Q36] fresh
        self.scaler = make_scaler(self.precision)
        self.center = DINOCenter(self.student.head.last_layer.weight_v.shape[0], names=("center",),
                                 momentum=sc.center_momentum).to(self.info.device)
        self.n_iter = self.loader.full_len() if not sc.max_steps_per_epoch else min(self.loader.full_len(),
                                                                                    sc.max_steps_per_epoch)
        self.student_temp = student_temperature(cfg)
        world = self.info.world_size * self.virtual
        self.lr = cosine_scheduler(sc.lr * sc.batch_size * world / 256.0, sc.min_lr, sc.epochs, self.n_iter,
                                   warmup_epochs=sc.warmup_epochs)
        self.wd = cosine_scheduler(sc.weight_decay, sc.weight_decay_end, sc.epochs, self.n_iter)
        self.momentum = cosine_scheduler(sc.momentum_teacher, 1.0, sc.epochs, self.n_iter)
        self.teacher_temp = teacher_temp_schedule(sc.warmup_teacher_temp, sc.teacher_temp,
                                                  sc.warmup_teacher_temp_epochs, sc.epochs)
        self.out_dir = Path(sc.output_dir)
        self.best: dict[str, Any] = {"score": -1.0, "epoch": -1}
        self.stage = "sketch" if sc.modality == "sketch" else "image"
        self.loop = loop.LoopSettings(f"stage A ({sc.modality})", sc.epochs, sc.log_every, sc.save_every,
                                      sc.checkpoint_every_steps)
        if self.info.is_main:
            source = "the per-process batch, official [Q41]" if sc.student_temp == "batch" else "sketch.student_temp"
            print(f"tvt: stage A student temperature {self.student_temp:g} ({source}); {world} rank(s) x "
                  f"{sc.batch_size} images per step, precision {self.precision}", file=sys.stderr)

    def _loader(self) -> RankLoaders:
        cfg, sc, info = self.cfg, self.cfg.sketch, self.info
        tf = dino_multicrop_transform(global_size=cfg.data.img_size, local_size=sc.local_crops_size,
                                      global_scale=tuple(sc.global_crops_scale), local_scale=tuple(sc.local_crops_scale),
                                      local_crops=sc.local_crops, **backbone_norm(cfg.model.backbone))
        ds = ClassFolder(self.root, self.train_classes, tf, outliers=self.outliers,
                         alpha_background=cfg.data.alpha_background, cache_dir=cfg.data.cache_dir or None)
        world = info.world_size * self.virtual
        if len(ds) < sc.batch_size * world:
            raise ConfigError(f"sketch.batch_size {sc.batch_size} x {world} ranks is larger than the "
                              f"{len(ds)} training images in {self.root}")
        data = seeded(ds, sc.seed, STREAM_STAGE_A, cfg.data.per_sample_seed)
        ranks = range(self.virtual) if self.virtual > 1 else [info.rank]
        return RankLoaders([make_loader(data, sc.batch_size, seed=sc.seed, rank=r, world_size=world,
                                        num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda")
                            for r in ranks])

    # ---- the loop's interface -------------------------------------------------------------
    def batches(self, epoch: int, start_step: int) -> Iterator[Any]:
        self.loader.set_epoch(epoch)
        self.loader.skip(start_step)
        return iter(self.loader)

    def images(self, batch: Any) -> int:
        return batch[0][0].shape[0] * self.info.world_size

    def schedule_values(self, epoch: int, it: int) -> dict[str, float]:
        return {"lr": float(self.lr[it]), "wd": float(self.wd[it]), "momentum": float(self.momentum[it]),
                "teacher_temp": float(self.teacher_temp[epoch]), "student_temp": self.student_temp}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        if not self.held:
            return {}
        cfg = self.cfg
        score = holdout_score(self.teacher.backbone, self.root, self.held, self.outliers, cfg.data.img_size,
                              self.info.device, alpha_background=cfg.data.alpha_background,
                              cache_dir=cfg.data.cache_dir or None)
        if score["mAP@all"] > self.best["score"]:
            self.best = {"score": score["mAP@all"], "epoch": epoch + 1}
        return {"holdout_mAP@all": score["mAP@all"]}

    def state_dict(self, epoch: int, step: int = 0, totals: dict[str, float] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        return {**ckpt.header(self.stage, self.teacher, cfg, self.train_classes, self.test_classes),
                "teacher": self.teacher.state_dict(),
                "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {}, "dino_loss": self.center.state_dict(),
                "epoch": epoch, "step": step, "steps_per_epoch": self.n_iter, "epoch_totals": dict(totals or {}),
                "world_size": self.info.world_size * self.virtual, "student_temp": self.student_temp,
                "holdout_classes": self.held, "best": self.best, "rng": ckpt.rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> Position:
        if state.get("stage") != self.stage or state.get("train_classes") != list(self.train_classes):
            raise ConfigError(f"it belongs to another run (stage {state.get('stage')!r} or its training classes differ "
                              f"from this {self.stage} run's)")
        if state.get("step") and state.get("steps_per_epoch", self.n_iter) != self.n_iter:
            raise ConfigError(f"it is a mid-epoch checkpoint written with {state['steps_per_epoch']} steps per epoch, "
                              f"this run has {self.n_iter}; resume with the same settings")
        ckpt.load_matching(self.student, state["student"], "student")
        ckpt.load_matching(self.teacher, state["teacher"], "teacher")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.center.load_state_dict(state["dino_loss"])
        self.best = dict(state.get("best", self.best))
        return ckpt.position(state)

    def saved(self, state: dict[str, Any], epoch: int, step: int) -> None:
        if step == 0 and self.held and self.best["epoch"] == epoch:
            ckpt.save_atomic(state, self.out_dir / "checkpoint_best.pth")

    def result(self) -> Path:
        best = self.out_dir / "checkpoint_best.pth"
        return best if self.held and best.is_file() else self.out_dir / ckpt.LATEST

    # ---- one optimizer step ---------------------------------------------------------------
    def step(self, batch: Any, epoch: int, it: int) -> dict[str, float]:
        """One optimizer step on ``batch = (crops, labels)``; crops [W*B, 3, H, W] per crop, ranks in order.

        Returns the step's loss (the mean over sub-batches, and over virtual ranks) as ``loss`` and ``loss/kd``.
        """
        sc, dev, world = self.cfg.sketch, self.info.device, self.virtual
        set_lr_wd(self.optimizer, float(self.lr[it]), float(self.wd[it]))
        crops = [c.to(dev, non_blocking=True) for c in batch[0]]
        n = crops[0].shape[0] // world
        slices = accumulation_slices(n, sc.accum_steps)
        grads: list[list[torch.Tensor | None] | None] = [None] * world
        total = 0.0
        for i, sl in enumerate(slices):
            last = i == len(slices) - 1
            subs = [[c[r * n:(r + 1) * n][sl] for c in crops] for r in range(world)]
            with torch.no_grad(), autocast(self.precision, dev):
                t_outs = [list(self.teacher(sub[:2]).float().chunk(2)) for sub in subs]  # 2 global crops [Q40]
            for r in range(world):
                if world > 1:
                    self._swap_grads(grads[r])
                total += self._substep(subs[r], t_outs[r], epoch, len(slices), sync=last) / world
                # [Q37] clip the partial sum; with virtual ranks the last one waits for the average
                if sc.clip_mode == "per_substep" and not (world > 1 and last):
                    self._clip(epoch)
                if world > 1:
                    grads[r] = self._swap_grads(None)
            if world > 1:  # the all-reduce of every rank's teacher rows (spec §5)
                self.center.update("center", torch.cat([t for ts in t_outs for t in ts]))
        if world > 1:
            self._average_grads(grads)
            if sc.clip_mode == "per_substep":
                self._clip(epoch)
        if sc.clip_mode != "per_substep":
            self._clip(epoch)
        self._update(it)
        return {"loss": total, "loss/kd": total}

    def _substep(self, sub: list[torch.Tensor], t_out: list[torch.Tensor], epoch: int, n_sub: int, sync: bool) -> float:
        """Forward and backward of one sub-batch of one rank; returns its loss divided by ``n_sub``."""
        ctx = self.model.no_sync() if (hasattr(self.model, "no_sync") and not sync) else contextlib.nullcontext()
        with ctx:
            with autocast(self.precision, self.info.device):
                s_out = self.model(sub)
            terms = sketch_dino_loss(list(s_out.float().chunk(len(sub))), t_out, self.center,
                                     float(self.teacher_temp[epoch]), self.student_temp, update=self.virtual == 1)
            loss = terms["objective"] / n_sub
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"stage A loss is {loss.item()} at epoch {epoch}; stopping")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return float(loss.detach())

    def _clip(self, epoch: int) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip_per_parameter(self.student.parameters(), self.cfg.sketch.clip_grad)
        cancel_last_layer(self.student, epoch, self.cfg.sketch.freeze_last_layer)

    def _swap_grads(self, grads: list[torch.Tensor | None] | None) -> list[torch.Tensor | None]:
        """Install one virtual rank's accumulated gradients; returns the ones that were installed."""
        params = list(self.student.parameters())
        old = [p.grad for p in params]
        for p, g in zip(params, grads or [None] * len(params)):
            p.grad = g
        return old

    def _average_grads(self, grads: list[list[torch.Tensor | None] | None]) -> None:
        """p.grad = mean over virtual ranks (a rank without a gradient counts as zero), as DDP averages."""
        for j, p in enumerate(self.student.parameters()):
            parts = [g[j] for g in grads if g is not None and g[j] is not None]
            p.grad = torch.stack(parts).sum(0) / len(grads) if parts else None

    def _update(self, it: int) -> None:
        """Optimizer step, then the EMA teacher (once per optimizer step)."""
        optimizer_step(self.optimizer, self.scaler)
        m = float(self.momentum[it])
        with torch.no_grad():
            for p_s, p_t in zip(self.student.parameters(), self.teacher.parameters()):
                if p_s.requires_grad:  # a frozen backbone stays bit-identical
                    p_t.mul_(m).add_(p_s.detach(), alpha=1 - m)


def build(cfg: Config, device: str = "auto") -> SketchTask:
    """Stage A built from a config: data, teacher/student pair, optimizer, centre, schedules."""
    return SketchTask(cfg, device)


def train(cfg: Config, resume: bool = True, device: str = "auto", progress: bool = True) -> Path:
    """Run stage A: DINO self-distillation of the sketch ViT, started from ``cfg.sketch.init``.

    Args:
        cfg: the config; ``cfg.sketch.init`` is the image ViT's full DINO checkpoint (``"random"``
            trains from scratch), ``cfg.sketch.output_dir`` the run folder.
        resume: continue from the run folder's checkpoint (False: start over).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; under torchrun each rank takes its own.
        progress: show a progress bar.
    Returns:
        The path of the selected checkpoint (best on the hold-out classes, or the last one with
        ``sketch.selection=last``): the sketch teacher of stage B (``cfg.train.sketch_teacher``).
    Raises :class:`TrainingInterrupted` after saving when SIGTERM/SIGINT arrives.
    """
    return loop.fit(build(cfg, device), resume=resume, progress=progress)
