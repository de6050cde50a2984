"""Guarded collectives for the losses.

Every function works in a single process (no ``torch.distributed`` process group) by falling back
to the identity, so the losses run unchanged on one CPU, one GPU or under ``torchrun``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True when a default process group is initialised (and distributed is available)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    """Rank of this process in the default group, 0 when not distributed."""
    return dist.get_rank() if is_dist() else 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over all ranks (a new tensor; ``t`` is left untouched). No grad."""
    out = t.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of ``t`` over all ranks (a new tensor). No grad."""
    return all_reduce_sum(t) / world_size()


def all_gather_with_grad_local(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` [N, ...] from every rank along dim 0 -> [N * world_size, ...].

    Only this rank's slice keeps its autograd history; the slices of the other ranks are constants
    (spec §4.5 step 1). Every rank must pass the same shape (drop_last loaders guarantee it).
    """
    if not is_dist():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank()] = t
    return torch.cat(parts, dim=0)
