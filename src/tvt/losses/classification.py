"""Label-smoothed cross-entropy as TVT defines it (spec §4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """Cross-entropy against ``q_y = 1 - eps`` and ``q_k = eps / (C - 1)`` for ``k != y``.

    This is NOT ``F.cross_entropy(label_smoothing=eps)``, whose targets are ``1 - eps + eps/C``
    and ``eps/C`` (spec §4.3).

    Args:
        logits: [N, C] class scores.
        target: [N] integer labels in ``[0, C)``.
        smoothing: eps.

    Returns:
        scalar: ``-Σ_k q_k log softmax(logits)_k`` averaged over the batch.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"smoothed_cross_entropy expects logits [N, C] and target [N]; "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    num_classes = logits.shape[1]
    if num_classes < 2 and smoothing > 0:
        raise ValueError("label smoothing needs at least 2 classes")
    log_p = F.log_softmax(logits.float(), dim=-1)
    off = smoothing / (num_classes - 1) if num_classes > 1 else 0.0
    # Σ_k q_k log p_k = off * Σ_k log p_k + (1 - eps - off) * log p_y
    log_p_y = log_p.gather(1, target.long().unsqueeze(1)).squeeze(1)
    per_sample = -(off * log_p.sum(dim=-1) + (1.0 - smoothing - off) * log_p_y)
    return per_sample.mean()
