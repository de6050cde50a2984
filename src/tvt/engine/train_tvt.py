"""Stage B: train the fusion ViT (TVT) from a frozen image teacher and a frozen sketch teacher.

One optimizer step follows ``main_myvit.train_one_epoch`` of the official code (spec Appendix A):
``G'`` photo sub-batches, a sketch sub-batch after every ``skt_factor``-th, each loss divided by
``G' + G'/skt_factor`` [Q13], then unscale, per-parameter clipping [Q15], last-layer cancelling and
the AdamW step. The loss itself is assembled by :func:`tvt.losses.objective.tvt_loss`. With local
or extra global crops the teachers see every crop (official; ``train.teacher_crops: global`` is
DINO's reading). ``train.disable_dropout: false`` trains the student in train mode with drop-path
``model.drop_path_rate`` (official); the README runs keep it in eval mode [Q19].

Runs as one process or under ``torchrun`` (DDP on the student only; the frozen teachers are never
wrapped). World size matters [Q21]: uniformity is per rank, DINO and class centres use every
rank's rows, the LR scales with ``B * W``. ``train.virtual_world_size = W`` reproduces a
``W``-process run in one process: each sub-step forwards the ``W`` ranks' sub-batches together and
the objective (``ranks=W``) forms the loss whose gradient DDP would average (the student has no
batch norm, so rows of different ranks do not interact).
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tvt.config import Config
from tvt.data.folder import ClassFolder
from tvt.data.layout import Split, load_split, outliers_for
from tvt.data.paired import substep_plan
from tvt.data.transforms import tvt_train_transform
from tvt.distributed import DistInfo, setup, wrap_ddp
from tvt.engine import checkpoint as ckpt
from tvt.engine import loop
from tvt.engine.checkpoint import Position
from tvt.engine.common import (autocast, cancel_last_layer, clip_per_parameter, make_scaler, optimizer_step, param_groups,
                               resolve_precision, seed_everything, set_drop_path, set_lr_wd)
from tvt.engine.sampling import ResumablePairedLoader, VirtualRankLoader
from tvt.engine.schedules import align_uniform_schedule, cosine_scheduler, teacher_temp_schedule
from tvt.errors import ConfigError
from tvt.losses.dino import DINOCenter
from tvt.losses.hypersphere import CenterAlignment
from tvt.losses.objective import tvt_loss
from tvt.models.backbones import backbone_norm
from tvt.models.named import check_teacher_backbone
from tvt.models.weights import init_student_from_teacher, load_teacher

__all__ = ["TVTTask", "build", "check_config", "datasets", "rank_rows", "train"]


def check_config(cfg: Config, info: DistInfo) -> None:
    t, d = cfg.train, cfg.data
    for key in ("image_teacher", "sketch_teacher"):
        if not getattr(t, key):
            raise ConfigError(f"train.{key} is required: the path of the frozen {key.replace('_', ' ')} checkpoint "
                              "(stage B never starts from random weights [Q18])")
    if t.virtual_world_size > 1 and info.world_size > 1:
        raise ConfigError(f"train.virtual_world_size ({t.virtual_world_size}) must be 1 under torchrun "
                          f"(this run has {info.world_size} processes): it emulates several ranks in one process")
    if d.global_crops not in (1, 2):
        raise ConfigError(f"data.global_crops must be 1 or 2, got {d.global_crops} (the README setting is 1)")
    if (d.global_crops > 1 or d.local_crops) and t.virtual_world_size > 1:
        raise ConfigError("train.virtual_world_size > 1 supports one crop per image only (data.global_crops=1, "
                          "data.local_crops=0)")


def datasets(cfg: Config, split: Split) -> tuple[ClassFolder, ClassFolder]:
    """The augmented photo and sketch training sets of stage B (spec §1.6)."""
    d = cfg.data
    common = dict(size=d.img_size, scale=tuple(d.global_crops_scale), global_crops=d.global_crops,
                  local_crops=d.local_crops, local_size=d.local_crops_size, local_scale=tuple(d.local_crops_scale),
                  **backbone_norm(cfg.model.backbone))
    root, cache = Path(d.root) / d.dataset, d.cache_dir or None
    photos = ClassFolder(root / "photo", split.train_classes, tvt_train_transform(**common, solarize=True),
                         alpha_background=d.alpha_background, cache_dir=cache)
    sketches = ClassFolder(root / "sketch", split.train_classes, tvt_train_transform(**common, solarize=d.solarize_sketch),
                           outliers=outliers_for(d.dataset), alpha_background=d.alpha_background, cache_dir=cache)
    return photos, sketches


def rank_rows(x: torch.Tensor, world: int, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of each of the ``world`` equal rank blocks of ``x`` [world*n, ...], in rank order."""
    return x.unflatten(0, (world, -1))[:, rows].flatten(0, 1)


class TVTTask:
    """Stage B as the shared loop drives it (:class:`tvt.engine.loop.Task`)."""

    def __init__(self, cfg: Config, device: str = "auto") -> None:
        t, self.cfg = cfg.train, cfg
        self.info = setup(device)
        check_config(cfg, self.info)
        seed_everything(t.seed)
        self.virtual = t.virtual_world_size
        self.split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
        self.loader = self._loader()
        dev = self.info.device
        self.teacher_img = load_teacher(t.image_teacher).to(dev).eval().requires_grad_(False)
        self.teacher_skt = load_teacher(t.sketch_teacher).to(dev).eval().requires_grad_(False)
        for teacher, path in ((self.teacher_img, t.image_teacher), (self.teacher_skt, t.sketch_teacher)):
            check_teacher_backbone(cfg.model.backbone, teacher, path)  # transforms follow model.backbone
        student = init_student_from_teacher(self.teacher_img, num_classes=len(self.split.train_classes),
                                            token_num=cfg.model.token_num, pos_resample=cfg.model.pos_resample)
        if not t.disable_dropout:  # official: the student trains with drop-path 0.1 unless dropout is disabled
            set_drop_path(student.backbone, cfg.model.drop_path_rate)
        self.student = student.to(dev).train(not t.disable_dropout)  # [Q19]
        # [Q20]: with token_num 3 the sketch head is unused in image sub-steps, DDP must be told
        self.model = wrap_ddp(self.student, self.info, find_unused_parameters=cfg.model.token_num == 3)
        self.optimizer = torch.optim.AdamW(_groups(self.student, t.backbone_lr_mult, t.fc_lr_mult))
        self.precision = resolve_precision(t.precision, dev)
        self.scaler = make_scaler(self.precision)
        self.dino_center = DINOCenter(self.student.head.last_layer.weight_v.shape[0], names=("img", "skt"),
                                      momentum=t.center_momentum).to(dev)
        self.ca = CenterAlignment(len(self.split.train_classes), dim=self.student.head_fusion.fc.weight.shape[1],
                                  momentum=t.ca_momentum).to(dev)
        full = self.loader.full_len()
        self.n_iter = full if not t.max_steps_per_epoch else min(full, t.max_steps_per_epoch)
        self._schedules(self.info.world_size * self.virtual)
        self.out_dir = Path(t.output_dir)
        self.loop = loop.LoopSettings("stage B (tvt)", t.epochs, t.log_every, t.save_every, t.checkpoint_every_steps)

    def _loader(self) -> ResumablePairedLoader | VirtualRankLoader:
        """Real rank ``info.rank`` of ``info.world_size``, or all ``W`` virtual ranks of one process."""
        cfg, info = self.cfg, self.info
        photos, sketches = datasets(cfg, self.split)
        t, virtual = cfg.train, self.virtual
        ranks = range(virtual) if virtual > 1 else [info.rank]
        loaders = [ResumablePairedLoader(photos, sketches, t.batch_size, t.skt_factor, num_workers=cfg.data.num_workers,
                                         seed=t.seed, rank=r, world_size=max(virtual, info.world_size),
                                         pin_memory=info.device.type == "cuda", per_sample_seed=cfg.data.per_sample_seed)
                   for r in ranks]
        return VirtualRankLoader(loaders) if virtual > 1 else loaders[0]

    def _schedules(self, world: int) -> None:
        t, n = self.cfg.train, self.n_iter
        self.lr = cosine_scheduler(t.lr * t.batch_size * world / 256.0, t.min_lr, t.epochs, n,
                                   warmup_epochs=t.warmup_epochs, early_schedule_epochs=t.early_schedule_epochs)
        self.wd = cosine_scheduler(t.weight_decay, t.weight_decay_end, t.epochs, n,
                                   early_schedule_epochs=t.early_schedule_epochs)
        self.w_t = align_uniform_schedule(t.align_uniform_weight, t.epochs, n, t.align_uniform_epochs)
        self.teacher_temp = teacher_temp_schedule(t.warmup_teacher_temp, t.teacher_temp, t.warmup_teacher_temp_epochs,
                                                  t.epochs)

    # ---- the loop's interface -------------------------------------------------------------
    def batches(self, epoch: int, start_step: int) -> Iterator[Any]:
        self.loader.set_epoch(epoch)
        self.loader.skip(start_step)
        return iter(self.loader)

    def images(self, batch: Any) -> int:
        return (batch[0][0].shape[0] + batch[2][0].shape[0]) * self.info.world_size

    def schedule_values(self, epoch: int, it: int) -> dict[str, float]:
        lr = float(self.lr[it])
        return {"lr_backbone": lr * self.cfg.train.backbone_lr_mult, "lr": lr, "wd": float(self.wd[it]),
                "teacher_temp": float(self.teacher_temp[epoch]), "w_t": float(self.w_t[it])}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        return {}

    def state_dict(self, epoch: int, step: int = 0, totals: dict[str, float] | None = None) -> dict[str, Any]:
        """The checkpoint at ``(epoch, step)``: everything a bit-exact CPU resume needs."""
        cfg = self.cfg
        return {
            **ckpt.header("tvt", self.student, cfg, self.split.train_classes, self.split.test_classes),
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {},
            "dino_loss": self.dino_center.state_dict(), "ca_loss": self.ca.state_dict(),
            "epoch": epoch, "step": step, "steps_per_epoch": self.n_iter, "epoch_totals": dict(totals or {}),
            "world_size": self.info.world_size * self.virtual,
            "teachers": {"image": str(cfg.train.image_teacher), "sketch": str(cfg.train.sketch_teacher)},
            "rng": ckpt.rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> Position:
        if state.get("stage") != "tvt" or state.get("train_classes") != list(self.split.train_classes):
            raise ConfigError("it belongs to another run (its stage or training classes differ from this stage-B run's)")
        if state.get("step") and state.get("steps_per_epoch", self.n_iter) != self.n_iter:
            raise ConfigError(f"it is a mid-epoch checkpoint written with {state['steps_per_epoch']} steps per epoch, "
                              f"this run has {self.n_iter} (batch size, world size or data changed); resume with the "
                              "same settings")
        ckpt.load_matching(self.student, state["student"], "student")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.dino_center.load_state_dict(state["dino_loss"])
        self.ca.load_state_dict(state["ca_loss"])
        return ckpt.position(state)

    def saved(self, state: dict[str, Any], epoch: int, step: int) -> None:
        return None

    def result(self) -> Path:
        return self.out_dir / ckpt.LATEST

    # ---- one optimizer step ---------------------------------------------------------------
    def step(self, batch: Any, epoch: int, it: int) -> dict[str, float]:
        """One optimizer step over a photo batch and a sketch batch (spec Appendix A).

        ``batch = (photo crops, photo labels [W*B], sketch crops, sketch labels [W*B/s])``, crops
        as lists of tensors, ``W`` virtual ranks' rows stacked in rank order (``W = 1`` without
        emulation). Returns the step's loss terms: sums of the sub-losses divided by ``G' + G'/s``.
        """
        t = self.cfg.train
        photos, y_img, sketches, y_skt = batch
        dev, world = self.info.device, self.virtual
        x_img = [c.to(dev, non_blocking=True) for c in photos]
        x_skt = [c.to(dev, non_blocking=True) for c in sketches]
        y_img, y_skt = y_img.to(dev), y_skt.to(dev)
        set_lr_wd(self.optimizer, float(self.lr[it]), float(self.wd[it]))
        plan = substep_plan(x_img[0].shape[0] // world, t.accum_steps, t.skt_factor)
        n_sub = len(plan) + len(plan) / t.skt_factor  # [Q13] the official divisor G' + G'/s
        sums: dict[str, float] = {}
        for i, (img_sl, skt_sl) in enumerate(plan):
            parts = [("img", [rank_rows(c, world, img_sl) for c in x_img], rank_rows(y_img, world, img_sl))]
            if skt_sl is not None:
                parts.append(("skt", [rank_rows(c, world, skt_sl) for c in x_skt], rank_rows(y_skt, world, skt_sl)))
            for modality, x, y in parts:
                # spec §1.7: DDP syncs on both backward passes of the last sub-step, no_sync before
                terms = self._substep(x, y, modality, epoch, it, n_sub, sync=i == len(plan) - 1)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v / n_sub
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip_per_parameter(self.student.parameters(), t.clip_grad)
        cancel_last_layer(self.student, epoch, t.freeze_last_layer)
        optimizer_step(self.optimizer, self.scaler)
        return sums

    def _substep(self, x: list[torch.Tensor], y: torch.Tensor, modality: str, epoch: int, it: int, n_sub: float,
                 sync: bool) -> dict[str, float]:
        """Forward + backward of one sub-batch of one modality; returns its loss terms (undivided)."""
        teacher = self.teacher_img if modality == "img" else self.teacher_skt
        t, n_global = self.cfg.train, self.cfg.data.global_crops
        seen = x if t.teacher_crops == "all" else x[:n_global]
        ctx = self.model.no_sync() if (hasattr(self.model, "no_sync") and not sync) else contextlib.nullcontext()
        with ctx:
            with torch.no_grad(), autocast(self.precision, self.info.device):
                t_logits = teacher(seen[0] if len(seen) == 1 else seen).float()
            with autocast(self.precision, self.info.device):
                out = self.model(x[0] if len(x) == 1 else x, modality)
            out32 = types.SimpleNamespace(dino_logits=out.dino_logits.float(), cls_logits=out.cls_logits.float(),
                                          f=out.f.float())
            terms = tvt_loss(out32, t_logits, y, modality, dino_center=self.dino_center, ca=self.ca,
                             teacher_temp=float(self.teacher_temp[epoch]), w_t=float(self.w_t[it]),
                             n_crops=len(x), global_crops=n_global, align_weight=t.align_uniform_weight,
                             use_align_uniform=t.use_align_uniform, smoothing=t.label_smoothing,
                             student_temp=t.student_temp, ranks=self.virtual,
                             kd_weight=t.kd_img_weight if modality == "img" else t.kd_skt_weight)
            loss = terms.pop("objective") / n_sub
            if not math.isfinite(loss.item()):  # [Q14] checked on every sub-loss here, not only the last
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, iteration {it} ({modality}); stopping")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        return {k: float(v) for k, v in terms.items()}


def _groups(student: torch.nn.Module, backbone_lr_mult: float, fc_lr_mult: float) -> list[dict[str, Any]]:
    """Spec §3.4's four groups; with ``fc_lr_mult != 1`` the head_fusion.fc weight and bias move
    to two more groups with that LR multiplier (same weight-decay rule)."""
    groups = param_groups(student, backbone_lr_mult)
    if fc_lr_mult == 1.0:
        return groups
    fc = {id(p): p for p in student.head_fusion.fc.parameters()}
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in fc]
    fc_w, fc_b = student.head_fusion.fc.weight, student.head_fusion.fc.bias
    return groups + [{"params": [fc_w], "lr_mult": fc_lr_mult, "regularised": True},
                     {"params": [fc_b], "lr_mult": fc_lr_mult, "regularised": False}]


def build(cfg: Config, device: str = "auto") -> TVTTask:
    """Stage B built from a config: data, teachers, student, optimizer, loss state and schedules."""
    return TVTTask(cfg, device)


def train(cfg: Config, resume: bool = True, device: str = "auto", progress: bool = True) -> Path:
    """Run stage B (TVT) to ``cfg.train.epochs``; resume from the output directory when asked.

    Args:
        cfg: the config; ``cfg.train.image_teacher`` and ``cfg.train.sketch_teacher`` name the frozen
            teachers' checkpoints, ``cfg.train.output_dir`` the run folder.
        resume: continue from the run folder's checkpoint (False: start over).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; under torchrun each rank takes its own.
        progress: show a progress bar.
    Returns:
        The path of the final checkpoint (a plain dict with the student, config and class lists).
    Raises :class:`TrainingInterrupted` after saving when SIGTERM/SIGINT arrives.
    """
    return loop.fit(build(cfg, device), resume=resume, progress=progress)
