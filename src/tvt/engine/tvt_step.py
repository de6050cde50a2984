"""One stage-B optimizer step (spec Appendix A), for real ranks and for [Q21] virtual ranks.

With ``W = train.virtual_world_size > 1`` one process plays ``W`` ranks of a ``torchrun`` run:
each sub-step forwards the ``W`` ranks' sub-batches together (``W*b`` rows) and forms the loss
so that its gradient is the one DDP would average:

* L_KD and L_CLS are means over rows, so the mean over the ``W*b`` rows equals the mean of the
  per-rank means; the DINO centre is updated once from all ``W*b`` teacher rows (the all-reduce).
* L_UNI is computed per rank's ``b`` rows and averaged (spec §4.4: never gathered).
* L_CA sees the ``W*b`` rows as the gathered batch; with one process it returns the plain mean
  distance, whose gradient is what ``W x`` (spec §4.5) and DDP's ``1/W`` give together. The
  logged ``loss/ca`` and ``loss`` are the per-rank values, i.e. with the factor ``W``.

The student's forward is row-independent (no batch norm), so rows of different virtual ranks do
not interact. ``tests/engine/test_distributed.py`` checks the result against 2 gloo processes.
"""

from __future__ import annotations

import contextlib
import math
import types
from typing import TYPE_CHECKING

import torch

from tvt.data.paired import substep_plan
from tvt.engine.common import autocast, cancel_last_layer, clip_per_parameter, set_lr_wd
from tvt.losses.hypersphere import uniformity
from tvt.losses.objective import _uni_weight, tvt_loss

if TYPE_CHECKING:
    from tvt.engine.train_tvt import Run
    from tvt.models.wrappers import StudentOutput


def virtual_tvt_loss(out: types.SimpleNamespace, t_logits: torch.Tensor, y: torch.Tensor, modality: str,
                     world: int, **kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of ``world`` virtual ranks' sub-batches stacked in rank order ([Q21] emulation).

    Args:
        out: student output with dino_logits [W*b, K], cls_logits [W*b, C], f [W*b, D].
        t_logits: [W*b, K] teacher logits. y: [W*b] labels. kw: :func:`tvt_loss` keywords.

    Returns:
        (objective to back-propagate, logged terms as a real rank would report them).
    """
    use_au = kw.pop("use_align_uniform", True)
    terms = tvt_loss(out, t_logits, y, modality, use_align_uniform=False, **kw)  # KD + CE, DINO centre moves
    objective, logs = terms["loss"], dict(terms)
    if use_au:
        uni = torch.stack([uniformity(f) for f in out.f.chunk(world)]).mean()
        ca = kw["ca"](out.f, y, modality)  # one process: the "gathered" batch, factor 1
        coef = _uni_weight(kw["w_t"], kw.get("align_weight", 2.0))
        objective = objective + coef * uni + kw["w_t"] * ca
        logs["loss/uni"], logs["loss/ca"] = uni.detach(), world * ca.detach()
        logs["loss"] = (objective + kw["w_t"] * (world - 1) * ca).detach()
    return objective, logs


def _per_crop(out: StudentOutput, n_crops: int) -> list[types.SimpleNamespace]:
    """Split a student output over ``n_crops`` equal crop blocks (fp32)."""
    parts = [t.float().chunk(n_crops) for t in (out.dino_logits, out.cls_logits, out.f)]
    return [types.SimpleNamespace(dino_logits=d, cls_logits=c, f=f) for d, c, f in zip(*parts)]


def _substep(run: Run, x: list[torch.Tensor], y: torch.Tensor, modality: str, epoch: int, it: int, n_sub: int,
             sync: bool) -> dict[str, float]:
    """Forward + backward of one sub-batch of one modality; returns the loss terms (unscaled).

    ``x`` holds the crops of the sub-batch: ``data.global_crops`` global crops, then the local
    ones (README setting: one global crop). The frozen teacher sees only the global crops, as in
    DINO; with several crops the objective pairs them as DINO does and adds instance alignment [Q7].
    """
    teacher = run.teacher_img if modality == "img" else run.teacher_skt
    ctx = run.student.no_sync() if (hasattr(run.student, "no_sync") and not sync) else contextlib.nullcontext()
    t = run.cfg.train
    kw = dict(dino_center=run.dino_center, ca=run.ca, teacher_temp=float(run.sched.teacher_temp[epoch]),
              w_t=float(run.sched.w_t[it]), align_weight=t.align_uniform_weight, use_align_uniform=t.use_align_uniform,
              smoothing=t.label_smoothing, student_temp=t.student_temp)
    n_global = run.cfg.data.global_crops
    with ctx:
        with torch.no_grad(), autocast(run.precision, run.dist.device):
            t_logits = teacher(x[0] if len(x) == 1 else x[:n_global]).float()
        with autocast(run.precision, run.dist.device):
            out = run.student(x[0] if len(x) == 1 else x, modality)
        crops = _per_crop(out, len(x))
        if run.virtual > 1:  # one crop only (checked when the data are built)
            objective, terms = virtual_tvt_loss(crops[0], t_logits, y, modality, run.virtual, **kw)
        elif len(x) == 1:
            terms = tvt_loss(crops[0], t_logits, y, modality, **kw)
            objective = terms["loss"]
        else:
            terms = tvt_loss(crops[0], list(t_logits.chunk(n_global)), y, modality, extra_crops=crops[1:], **kw)
            objective = terms["loss"]
        loss = objective / n_sub
        if not math.isfinite(loss.item()):  # [Q14] checked on every sub-loss here, not only the last
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, iteration {it} ({modality}); stopping")
        (run.scaler.scale(loss) if run.scaler else loss).backward()
    return {k: float(v.detach()) for k, v in terms.items()}


def rank_rows(x: torch.Tensor, world: int, rows: slice) -> torch.Tensor:
    """Rows ``rows`` of each of the ``world`` equal rank blocks of ``x`` [world*n, ...], in rank order."""
    return x.unflatten(0, (world, -1))[:, rows].flatten(0, 1)


def train_step(run: Run, batch: tuple, epoch: int, it: int) -> dict[str, float]:
    """One optimizer step over a photo batch and a sketch batch (spec Appendix A).

    ``batch`` = (photo crops, photo labels [W*B], sketch crops, sketch labels [W*B/s]) with ``W``
    virtual ranks' rows stacked in rank order (``W = 1`` without emulation).
    """
    t = run.cfg.train
    photos, y_img, sketches, y_skt = batch
    dev, world = run.dist.device, run.virtual
    x_img = [c.to(dev, non_blocking=True) for c in photos]
    x_skt = [c.to(dev, non_blocking=True) for c in sketches]
    y_img, y_skt = y_img.to(dev), y_skt.to(dev)
    set_lr_wd(run.optimizer, float(run.sched.lr[it]), float(run.sched.wd[it]))
    plan = substep_plan(x_img[0].shape[0] // world, t.accum_steps, t.skt_factor)
    n_sub = sum(1 + (s is not None) for _, s in plan)
    sums: dict[str, float] = {}
    for i, (img_sl, skt_sl) in enumerate(plan):
        parts = [("img", [rank_rows(c, world, img_sl) for c in x_img], rank_rows(y_img, world, img_sl))]
        if skt_sl is not None:
            parts.append(("skt", [rank_rows(c, world, skt_sl) for c in x_skt], rank_rows(y_skt, world, skt_sl)))
        for modality, x, y in parts:
            # spec §1.7: DDP syncs on both backward passes of the last sub-step, no_sync before
            terms = _substep(run, x, y, modality, epoch, it, n_sub, sync=i == len(plan) - 1)
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
