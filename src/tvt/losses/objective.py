"""The TVT stage-B objective for one sub-batch of one modality (spec §4.1, §4.6)."""

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


def _uni_weight(w_t: float, align_weight: float) -> float:
    # w_t ramps 0 -> λ, so the uniformity coefficient ramps 0 -> 0.5 (spec §4.1). λ = 0 means
    # the schedule is identically 0; guard the 0/0.
    return 0.0 if align_weight == 0 else w_t * 0.5 / align_weight


def tvt_loss(
    out: StudentOutputLike,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    modality: str,
    *,
    dino_center: DINOCenter,
    ca: CenterAlignment,
    teacher_temp: float,
    w_t: float,
    align_weight: float = 2.0,
    use_align_uniform: bool = True,
    smoothing: float = 0.1,
    student_temp: float = 0.1,
    extra_crops: Sequence[StudentOutputLike] | None = None,
) -> dict[str, torch.Tensor]:
    """``L = L_KD + L_CLS + (w_t 0.5 / λ) L_UNI + w_t L_CA`` for one sub-batch (spec §4.1).

    Args:
        out: student output for the (first) crop: dino_logits [N, K], cls_logits [N, C], f [N, D].
        teacher_logits: the frozen teacher's [N, K] logits of the same crop, or one [N, K]
            tensor per teacher crop when ``extra_crops`` is given (teacher crop i = student crop i).
        labels: [N] class indices.
        modality: "img" or "skt"; picks the DINO centre and the CA centres that move.
        dino_center: DINO centres; the one of ``modality`` is updated AFTER the loss is formed.
        ca: class-centre alignment module (its ``modality`` centres are updated).
        teacher_temp: τ_t for this epoch. w_t: scheduled alignment weight (§4.7).
        align_weight: λ. use_align_uniform: add L_UNI and L_CA (and update the CA centres).
        extra_crops: student outputs of further global crops of the same rows. Then L_KD pairs
            crops as DINO does, L_CLS and L_UNI are averaged over crops, L_CA sees all crops with
            labels repeated, and instance alignment is added with weight 1 whatever
            ``use_align_uniform`` says [Q7]. Uniformity per crop (not over the union of crops) is
            this implementation's choice: the spec leaves the multi-crop case open.

    Returns:
        ``{"loss": total (with grad), "loss/kd", "loss/ce", "loss/uni", "loss/ca"}`` (components
        detached; disabled terms are 0), plus ``"loss/inst"`` when several crops are given.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}; got {modality!r}")
    crops = [out, *(extra_crops or [])]
    if isinstance(teacher_logits, torch.Tensor):
        teachers = [teacher_logits]
    else:
        teachers = list(teacher_logits)

    kd = dino_loss(
        [c.dino_logits for c in crops], teachers, dino_center.center(modality),
        teacher_temp, student_temp,
    )
    ce = torch.stack([smoothed_cross_entropy(c.cls_logits, labels, smoothing) for c in crops])
    ce = ce.mean()
    total = kd + ce
    zero = torch.zeros((), device=kd.device)
    uni, ca_loss = zero, zero
    if use_align_uniform:
        uni = torch.stack([uniformity(c.f) for c in crops]).mean()
        ca_loss = ca(torch.cat([c.f for c in crops]), labels.repeat(len(crops)), modality)
        total = total + _uni_weight(w_t, align_weight) * uni + w_t * ca_loss
    logs = {"loss/kd": kd, "loss/ce": ce, "loss/uni": uni, "loss/ca": ca_loss}
    if len(crops) > 1:
        inst = instance_alignment([c.f for c in crops])
        total = total + inst
        logs["loss/inst"] = inst
    # The centre moves only after this sub-batch's loss used the old value (DINO order).
    dino_center.update(modality, torch.cat([t.detach() for t in teachers]))
    return {"loss": total, **{k: v.detach() for k, v in logs.items()}}
