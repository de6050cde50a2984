"""DINO self-distillation loss and its stateful teacher centres (spec §4.2, §5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tvt import distributed as _dist


def dino_loss(
    student_out: Sequence[torch.Tensor],
    teacher_out: Sequence[torch.Tensor],
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy between centred, sharpened teacher and student distributions.

    Args:
        student_out: one [N, K] logit tensor per student crop.
        teacher_out: one [N, K] logit tensor per teacher crop; teacher crop ``i`` and student
            crop ``i`` are the same view.
        center: [1, K] teacher centre of this modality.
        teacher_temp: τ_t for the current epoch.
        student_temp: τ_s.

    Returns:
        scalar: ``-Σ_k P_t[k] log P_s[k]`` averaged over the batch and over every (teacher crop iq,
        student crop v) pair with ``v != iq``. With exactly one student and one teacher crop the
        two see the same view and that single pair is used (spec §4.2). Stage A: 2 teacher and 12
        student crops give 22 pairs.
    """
    if len(student_out) == 0 or len(teacher_out) == 0:
        raise ValueError("dino_loss needs at least one student crop and one teacher crop")
    single_view = len(student_out) == 1 and len(teacher_out) == 1
    # Softmaxes run in float32 whatever the autocast dtype, as autocast itself does for softmax.
    center = center.detach().float()
    log_ps = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    total = torch.zeros((), device=log_ps[0].device)
    n_pairs = 0
    for iq, t in enumerate(teacher_out):
        p_t = F.softmax((t.detach().float() - center) / teacher_temp, dim=-1)
        for v, log_p in enumerate(log_ps):
            if v == iq and not single_view:
                continue
            total = total + torch.sum(-p_t * log_p, dim=-1).mean()
            n_pairs += 1
    return total / n_pairs


def _buffer_name(name: str) -> str:
    # Stage A keeps DINO's single buffer "center"; stage B uses center_img / center_skt. This
    # makes state dicts match the official `dino_loss` checkpoint entries in both stages.
    return "center" if name == "center" else f"center_{name}"


class DINOCenter(nn.Module):
    """EMA centres of the teacher logits, one [1, K] buffer per name, initialised to zeros [Q5].

    ``DINOCenter(K)`` holds ``center_img`` and ``center_skt`` (stage B);
    ``DINOCenter(K, names=("center",))`` holds a single ``center`` buffer (stage A).
    """

    def __init__(
        self, out_dim: int, names: Sequence[str] = ("img", "skt"), momentum: float = 0.9
    ) -> None:
        super().__init__()
        if not names:
            raise ValueError("DINOCenter needs at least one centre name")
        self.names = tuple(names)
        self.momentum = float(momentum)
        for name in self.names:
            # Written into _buffers directly (a registered, persistent buffer) because stage A's
            # key "center" collides with the center() method, which register_buffer refuses.
            self._buffers[_buffer_name(name)] = torch.zeros(1, out_dim)

    def center(self, name: str) -> torch.Tensor:
        """The [1, K] centre called ``name``."""
        if name not in self.names:
            raise ValueError(f"unknown DINO centre {name!r}; this module holds {self.names}")
        return self._buffers[_buffer_name(name)]

    @torch.no_grad()
    def update(self, name: str, teacher_out: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)``.

        Args:
            name: which centre.
            teacher_out: [M, K] teacher logits (all crops concatenated), or a list of [N, K]
                crops. The mean runs over the rows of every rank: all-reduced sum divided by
                ``M * world_size``.
        """
        c = self.center(name)
        t = teacher_out if isinstance(teacher_out, torch.Tensor) else torch.cat(list(teacher_out))
        batch_sum = _dist.all_reduce_sum(t.detach().float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (t.shape[0] * _dist.world_size())
        c.mul_(self.momentum).add_(batch_center.to(c.dtype), alpha=1.0 - self.momentum)
