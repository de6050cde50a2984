"""Model wrappers (spec §2.4): the frozen teachers and the TVT student.

* :class:`Teacher` is DINO's multi-crop wrapper: backbone CLS features -> DINO head.
* :class:`Student` is the fusion ViT with its heads; ``forward`` returns a
  :class:`StudentOutput` for the objective and ``features`` gives the evaluation embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvt.errors import InputError
from tvt.models.fusion import FusionViT
from tvt.models.heads import DINOHead, FusionHead

MODALITIES = ("img", "skt")
RETURN_IDX = (0, 1, 2, 3)


class ModalityError(InputError, ValueError):
    """A modality other than ``"img"`` / ``"skt"`` (both a user error and a ValueError)."""


def check_modality(modality: str) -> str:
    """Return ``modality`` if valid, else raise :class:`ModalityError`."""
    if modality not in MODALITIES:
        raise ModalityError(f"modality must be 'img' (photos) or 'skt' (sketches), got {modality!r}")
    return modality


def run_grouped(fn: Callable[[Tensor], Tensor], x: Tensor | Sequence[Tensor]) -> Tensor:
    """Apply ``fn`` to a batch or to a list of crop batches, grouping equal consecutive widths.

    DINO's multi-crop trick: runs of crops with the same width are concatenated and go through
    ``fn`` in one pass; the outputs are concatenated in input order.

    Args:
        x: [N, 3, H, W] or a list of such tensors.
    Returns:
        ``fn`` outputs concatenated along dim 0 ([sum N, ...]).
    """
    if isinstance(x, Tensor):
        return fn(x)
    crops = list(x)
    if not crops:
        raise ValueError("empty list of crops")
    outs = []
    for _, group in itertools.groupby(crops, key=lambda c: c.shape[-1]):
        outs.append(fn(torch.cat(list(group), dim=0)))
    return torch.cat(outs, dim=0)


class Teacher(nn.Module):
    """Backbone (CLS output) + DINO head.

    ``forward(x: [N, 3, H, W] | list of crops) -> [sum N, out_dim]`` logits;
    ``embed(x) -> [sum N, D]`` CLS features (no head).
    """

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def embed(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """CLS features [sum N, D] after the final LayerNorm."""
        return run_grouped(self.backbone, x)

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """DINO logits [sum N, out_dim]."""
        return self.head(self.embed(x))


@dataclass
class StudentOutput:
    """What the TVT objective consumes (spec §2.4).

    dino_logits: [N, out_dim] distillation-head logits for the modality's distillation token.
    cls_logits: [N, C] fusion-head class logits.
    f: [N, bottleneck] L2-normalised fusion embedding.
    """

    dino_logits: Tensor
    cls_logits: Tensor
    f: Tensor


class Student(nn.Module):
    """TVT student: fusion ViT + DINO head (+ sketch DINO head for token_num 3) + fusion head.

    With ``token_num=2`` both modalities share the single distillation token and ``head`` [Q8];
    with ``token_num=3`` sketches use ``dist_skt_token`` and ``head_skt``.
    """

    def __init__(
        self,
        backbone: FusionViT,
        head: DINOHead,
        head_fusion: FusionHead,
        head_skt: DINOHead | None = None,
    ) -> None:
        super().__init__()
        if backbone.token_num == 3 and head_skt is None:
            raise ValueError("token_num=3 needs head_skt (the sketch DINO head)")
        if backbone.token_num == 2 and head_skt is not None:
            raise ValueError("token_num=2 has no sketch distillation token; pass head_skt=None")
        self.backbone = backbone
        self.head = head
        self.head_fusion = head_fusion
        self.head_skt = head_skt

    @property
    def token_num(self) -> int:
        return self.backbone.token_num

    def _tokens(self, x: Tensor | Sequence[Tensor], modality: str) -> tuple[Tensor, Tensor]:
        """(z_dist of the modality, z_fus), each [N, D]."""
        check_modality(modality)
        z = run_grouped(lambda t: torch.stack(self.backbone(t), dim=1), x)  # [N, token_num, D]
        dist_idx = 1 if (self.token_num == 3 and modality == "skt") else 0
        return z[:, dist_idx], z[:, -1]

    def _dist_head(self, modality: str) -> DINOHead:
        return self.head_skt if (self.token_num == 3 and modality == "skt") else self.head

    def forward(self, x: Tensor | Sequence[Tensor], modality: str) -> StudentOutput:
        """x: [N, 3, H, W] (or a list of crop batches); modality 'img' | 'skt'."""
        z_dist, z_fus = self._tokens(x, modality)
        cls_logits, f = self.head_fusion(z_fus)
        return StudentOutput(dino_logits=self._dist_head(modality)(z_dist), cls_logits=cls_logits, f=f)

    def features(self, x: Tensor, modality: str, return_idx: int = 0) -> Tensor:
        """Evaluation embedding (spec §2.4), not normalised unless stated.

        return_idx 0: z_fus [N, D]; 1: (z_fus + z_dist)/2 [N, D];
        2: f = normalize(MLP_F(z_fus)) [N, bottleneck];
        3: normalize((f + normalize(MLP_D(z_dist)))/2) [N, bottleneck],
        with z_dist / MLP_D the modality's distillation token / DINO head.
        """
        if return_idx not in RETURN_IDX:
            raise InputError(f"return_idx must be one of {RETURN_IDX}, got {return_idx!r}")
        z_dist, z_fus = self._tokens(x, modality)
        if return_idx == 0:
            return z_fus
        if return_idx == 1:
            return (z_fus + z_dist) / 2
        f = self.head_fusion.embed(z_fus)
        if return_idx == 2:
            return f
        d = self._dist_head(modality).bottleneck(z_dist)
        return F.normalize((f + d) / 2, dim=-1, p=2, eps=1e-12)
