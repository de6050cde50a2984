"""The training objectives, assembled in one place: stage A (DINO, spec §5) and stage B (TVT, §4.1).

Nothing else combines loss terms. Both functions return named terms for logging
(``{"loss": ..., "loss/kd": ...}``) and ``"objective"``, the differentiable tensor to
back-propagate. The DINO centres (:class:`DINOCenter`) and the class centres
(:class:`CenterAlignment`) are passed in and move inside the call, after the loss used their old
values, as in the official code. [Q21] per-rank blocks are an argument (``ranks``): one process
then plays ``ranks`` ranks of a ``torchrun`` run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from tvt.losses.classification import smoothed_cross_entropy
from tvt.losses.dino import DINOCenter, dino_loss
from tvt.losses.hypersphere import MODALITIES, CenterAlignment, instance_alignment, uniformity


class StudentOutputLike(Protocol):
    """What the objective reads from a student forward (``tvt.models.wrappers.StudentOutput``)."""

    dino_logits: torch.Tensor  # [N, K] DINO-head logits of the distillation token
    cls_logits: torch.Tensor  # [N, C] fusion-head logits
    f: torch.Tensor  # [N, D] L2-normalised fused embedding


def sketch_dino_loss(student_out: Sequence[torch.Tensor], teacher_out: Sequence[torch.Tensor], center: DINOCenter,
                     teacher_temp: float, student_temp: float, *, update: bool = True) -> dict[str, torch.Tensor]:
    """Stage-A loss of one sub-batch (spec §5): DINO over every (teacher crop, other student crop) pair.

    Args:
        student_out: one [N, K] tensor per crop (2 global + local crops).
        teacher_out: one [N, K] tensor per global crop (the teacher sees the 2 global crops [Q40]).
        center: the single ``center`` buffer; moved from ``teacher_out`` afterwards when ``update``.
        teacher_temp: τ_t of this epoch. student_temp: τ_s (official: the per-GPU batch [Q41]).
        update: False when the caller moves the centre once for several virtual ranks.
    """
    kd = dino_loss(list(student_out), list(teacher_out), center.center("center"), teacher_temp, student_temp)
    if update:
        center.update("center", torch.cat([t.detach() for t in teacher_out]))
    return {"objective": kd, "loss": kd.detach(), "loss/kd": kd.detach()}


def _uni_weight(w_t: float, align_weight: float) -> float:
    # w_t ramps 0 -> λ, so the uniformity coefficient ramps 0 -> 0.5 (spec §4.1). λ = 0 means
    # the schedule is identically 0; guard the 0/0.
    return 0.0 if align_weight == 0 else w_t * 0.5 / align_weight


def tvt_loss(
    out: StudentOutputLike,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    modality: str,
    *,
    dino_center: DINOCenter,
    ca: CenterAlignment,
    teacher_temp: float,
    w_t: float,
    n_crops: int = 1,
    global_crops: int = 1,
    align_weight: float = 2.0,
    use_align_uniform: bool = True,
    smoothing: float = 0.1,
    student_temp: float = 0.1,
    ranks: int = 1,
    kd_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Stage-B loss of one sub-batch of one modality, as ``main_myvit.train_one_epoch`` forms it.

    ``L = L_KD + L_CLS + (w_t 0.5/λ) L_UNI + w_t L_CA`` (spec §4.1), and with several crops:

    * L_KD pairs every teacher crop with every *other* student crop (one crop: the same view);
    * L_CLS is averaged over crops; L_UNI is one term over the rows of all crops together; L_CA
      sees all crops with labels repeated;
    * [Q7] when ``global_crops > 1``: instance alignment over all crops is added with weight 1,
      and L_UNI and L_CA are added whatever ``use_align_uniform`` says.

    Args:
        out: student output, crops stacked crop-major: dino_logits [n_crops*N, K], cls_logits
            [n_crops*N, C], f [n_crops*N, D]. With ``ranks > 1`` (one crop only) the N rows are
            ``ranks`` equal blocks in rank order.
        teacher_logits: [T*N, K] frozen-teacher logits of the first T crops (T = n_crops: official;
            T = global_crops: DINO's reading), crop-major.
        labels: [N] class indices.
        modality: "img" or "skt"; picks the DINO centre and the CA centres that move.
        dino_center, ca: the state; the ``modality`` centres move after the loss is formed.
        teacher_temp: τ_t for this epoch. w_t: scheduled alignment weight (§4.7). align_weight: λ.
        ranks: [Q21] virtual ranks. L_UNI is then the mean of the per-rank terms, L_CA sees the
            ``N`` rows as the gathered batch, and the objective's gradient is the DDP average.
        kd_weight: factor on L_KD (1 = the paper; 0 for the ablations without a teacher's term).

    Returns:
        ``objective`` (differentiable) and the logged terms ``loss``, ``loss/kd``, ``loss/ce``,
        ``loss/uni``, ``loss/ca`` (and ``loss/inst`` with several global crops), as one real rank
        reports them (with ``ranks > 1``, ``loss/ca`` and ``loss`` carry the factor W of §4.5).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}; got {modality!r}")
    if ranks > 1 and n_crops > 1:
        raise ValueError("virtual ranks support one crop per image only")
    d_crops, c_crops = out.dino_logits.chunk(n_crops), out.cls_logits.chunk(n_crops)
    teachers = list(teacher_logits.chunk(teacher_logits.shape[0] // labels.shape[0]))
    kd = dino_loss(list(d_crops), teachers, dino_center.center(modality), teacher_temp, student_temp)
    ce = torch.stack([smoothed_cross_entropy(c, labels, smoothing) for c in c_crops]).mean()
    objective = kd_weight * kd + ce
    zero = torch.zeros((), device=kd.device)
    logs = {"loss/kd": kd, "loss/ce": ce, "loss/uni": zero, "loss/ca": zero}
    multi_global = global_crops > 1
    if use_align_uniform or multi_global:  # [Q7]
        uni = (uniformity(out.f) if ranks == 1
               else torch.stack([uniformity(f) for f in out.f.chunk(ranks)]).mean())
        ca_loss = ca(out.f, labels.repeat(n_crops), modality)  # one process: the gathered batch, factor 1
        objective = objective + _uni_weight(w_t, align_weight) * uni + w_t * ca_loss
        logs["loss/uni"], logs["loss/ca"] = uni, ranks * ca_loss
    if multi_global:
        logs["loss/inst"] = instance_alignment(list(out.f.chunk(n_crops)))
        objective = objective + logs["loss/inst"]
    # The centre moves only after this sub-batch's loss used the old value (DINO order).
    dino_center.update(modality, teacher_logits.detach())
    # logged total as a real rank reports it: its CA term carries the factor W (spec §4.5)
    reported = objective + w_t * (ranks - 1) * (logs["loss/ca"] / ranks)
    return {"objective": objective, "loss": reported.detach(), **{k: v.detach() for k, v in logs.items()}}


__all__ = ["StudentOutputLike", "sketch_dino_loss", "tvt_loss"]
