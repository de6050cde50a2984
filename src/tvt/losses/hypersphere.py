"""Hypersphere losses on the fused embedding (spec §4.4-4.5).

Uniformity, instance alignment and the momentum class-centre alignment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tvt import distributed as _dist

MODALITIES: tuple[str, ...] = ("img", "skt")


def uniformity(f: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log(mean_{i<j} exp(-t ||f_i - f_j||^2))`` over the rows of ``f`` [N, D], N >= 2.

    Equals ``pdist(f) ** 2`` in the official form, but squared distances come from the Gram
    matrix (``|f_i|^2 + |f_j|^2 - 2 f_i.f_j``) and the pairs i<j from a mask: no square root (so
    the gradient stays finite when two rows coincide) and no ``f[i] - f[j]`` gather, whose CPU
    backward (``index_put_`` with accumulate) adds with parallel atomics once the batch is a few
    dozen rows, so two runs at >1 thread got different gradients in the last bits (the demo's
    run-to-run drift). Never gathered across ranks (spec §4.4).
    """
    n = f.shape[0]
    if f.dim() != 2 or n < 2:
        raise ValueError(f"uniformity needs f of shape [N >= 2, D]; got {tuple(f.shape)}")
    f = f.float()
    norms = f.pow(2).sum(dim=1)
    sq = (norms[:, None] + norms[None, :] - 2.0 * (f @ f.T)).clamp_min(0.0)
    upper = torch.ones(n, n, dtype=torch.bool, device=f.device).triu(1)
    return sq.mul(-t).exp().masked_fill(~upper, 0.0).sum().div(n * (n - 1) / 2).log()


def instance_alignment(fs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean_{crop pairs a<b} mean_i ||f^a_i - f^b_i||^2`` for >= 2 crops, each [N, D] [Q7]."""
    if len(fs) < 2:
        raise ValueError("instance_alignment needs at least two crops")
    terms = [
        (fs[a].float() - fs[b].float()).pow(2).sum(dim=-1).mean()
        for a in range(len(fs))
        for b in range(a + 1, len(fs))
    ]
    return torch.stack(terms).mean()


class CenterAlignment(nn.Module):
    """Momentum class centres per modality and the inter-modal centre distance (spec §4.5, [Q12]).

    Buffers ``center_img`` and ``center_skt`` [C, dim] start at zero and hold unit vectors once a
    class has been seen. One module serves both modalities: a call with modality ``m`` moves the
    centres of ``m`` for the classes present and measures them against the other modality's
    stored centres, which act as constants.
    """

    def __init__(self, num_classes: int, dim: int = 256, momentum: float = 0.9) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.register_buffer("center_img", torch.zeros(num_classes, dim))
        self.register_buffer("center_skt", torch.zeros(num_classes, dim))

    def centers(self, modality: str) -> torch.Tensor:
        """The [C, dim] centre buffer of ``modality`` ("img" or "skt")."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}; got {modality!r}")
        return getattr(self, f"center_{modality}")

    def forward(self, f: torch.Tensor, y: torch.Tensor, modality: str) -> torch.Tensor:
        """Update the centres of ``modality`` from a batch and return the alignment loss.

        Args:
            f: [N, dim] L2-normalised embeddings of this rank (with gradient).
            y: [N] integer labels in ``[0, C)`` (repeated once per crop by the caller).
            modality: "img" or "skt".

        Returns:
            scalar ``world_size * mean_{k in K} ||c^img_k - c^skt_k||^2`` over the sorted classes
            K present in the batch gathered from all ranks. The current modality's centres are
            ``normalize(μ c_k.detach() + (1 - μ) m_k)`` with ``m_k`` the plain class mean; the
            gradient reaches only this rank's rows. A class whose other centre is still zero
            contributes exactly 1 and no gradient [Q12].
        """
        own, other = self.centers(modality), self.centers("skt" if modality == "img" else "img")
        if f.dim() != 2 or f.shape[0] == 0 or f.shape[1] != own.shape[1] or y.shape != f.shape[:1]:
            raise ValueError(
                f"CenterAlignment expects f [N >= 1, {own.shape[1]}] and y [N]; "
                f"got {tuple(f.shape)} and {tuple(y.shape)}"
            )
        f_all = _dist.all_gather_with_grad_local(f.to(own.dtype))
        y_all = _dist.all_gather_with_grad_local(y.long())
        if int(y_all.min()) < 0 or int(y_all.max()) >= self.num_classes:
            raise ValueError(
                f"CenterAlignment labels must lie in [0, {self.num_classes}); "
                f"got [{int(y_all.min())}, {int(y_all.max())}]"
            )
        classes, inverse = torch.unique(y_all, sorted=True, return_inverse=True)
        sums = torch.zeros(len(classes), f_all.shape[1], device=f_all.device, dtype=f_all.dtype)
        sums = sums.index_add(0, inverse, f_all)
        counts = torch.bincount(inverse, minlength=len(classes)).to(f_all.dtype)
        means = sums / counts.unsqueeze(1)
        new = F.normalize(self.momentum * own[classes] + (1.0 - self.momentum) * means, dim=1)
        with torch.no_grad():
            own[classes] = new.detach()
        dist_sq = (new - other[classes]).pow(2).sum(dim=1)
        return _dist.world_size() * dist_sq.mean()
