"""Process groups and guarded collectives: the bottom layer, used by every package.

Every function also works as a single process (no ``torch.distributed`` process group): the
collectives then fall back to the identity, so losses, training and extraction run unchanged on
one CPU, one GPU or under ``torchrun``.

Launch with ``torchrun --nproc_per_node N tvt train ...`` (multi-node: ``--nnodes``,
``--rdzv_backend c10d --rdzv_endpoint HOST:PORT``): the usual environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) select the process group; NCCL on GPUs, gloo on CPUs.
Without them everything runs as rank 0 of 1 and no collective is called.

Feature extraction shards a dataset with :func:`shard_dataset` (contiguous, no padding, so no
item is seen twice) and reassembles the rows in dataset order with :func:`gather_rows`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun; return rank, world size, device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(device=pick_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def is_dist() -> bool:
    """True when a default process group is initialised (and distributed is available)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_dist() else (0, 1)


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return rank_and_world()[1]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``t`` over all ranks (a new tensor; ``t`` is left untouched). No grad."""
    out = t.detach().clone()
    if is_dist():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_with_grad_local(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` [N, ...] from every rank along dim 0 -> [N * world_size, ...].

    Only this rank's slice keeps its autograd history; the slices of the other ranks are constants
    (spec §4.5 step 1). Every rank must pass the same shape (drop_last loaders guarantee it).
    """
    if not is_dist():
        return t
    rank, world = rank_and_world()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank] = t
    return torch.cat(parts, dim=0)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _comm_device(device: torch.device | None = None) -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return device if device is not None and device.type != "cuda" else torch.device("cpu")


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a Python float across ranks (the value itself on one process)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], device=_comm_device(device), dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def all_reduce_max(value: int, device: torch.device) -> int:
    """Largest of an integer across ranks (the value itself on one process)."""
    if not is_dist():
        return int(value)
    t = torch.tensor([int(value)], device=_comm_device(device), dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _standard_strides(grad: torch.Tensor) -> torch.Tensor:
    """The gradient with the row-major strides DDP's bucket views have.

    The gradient of a token parameter such as [1, 1, D] arrives as a slice of a larger gradient
    (strides [2D, D, 1]); the strides of its size-1 dimensions differ from the bucket view's, and
    DDP warns "Grad strides do not match bucket view strides" on every backward.
    """
    if grad.stride() == torch.empty(grad.shape, device="meta").stride():
        return grad
    return grad.clone(memory_format=torch.contiguous_format)


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap a *trained* model when there are several processes; the model itself otherwise.

    Never call it on a frozen teacher: it has no gradients to average and DDP would only add
    parameter broadcasts.
    """
    if info.world_size <= 1:
        return model
    for p in model.parameters():
        if p.requires_grad and p.dim() > 1 and 1 in p.shape:
            p.register_hook(_standard_strides)
    ids = [info.local_rank] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``: contiguous, sizes differ by at most one, no padding."""
    return rank * n // world_size, (rank + 1) * n // world_size


def shard_dataset(dataset: Dataset) -> Dataset:
    """This rank's contiguous shard of ``dataset`` (the dataset itself on one process)."""
    rank, world = rank_and_world()
    if world == 1:
        return dataset
    start, stop = shard_bounds(len(dataset), rank, world)  # type: ignore[arg-type]
    return Subset(dataset, range(start, stop))


def gather_rows(local: np.ndarray, n_total: int) -> np.ndarray:
    """Reassemble per-rank shards (from :func:`shard_dataset`) into ``[n_total, D]`` on every rank.

    ``local`` is this rank's ``[n_r, D]`` array (``[0, 0]`` for an empty shard). Shards are padded
    to the largest one for one ``all_gather`` (works with gloo and NCCL), then trimmed.
    """
    rank, world = rank_and_world()
    if world == 1:
        return local
    dev = _comm_device()
    dim = all_reduce_max(local.shape[1] if local.ndim == 2 and len(local) else 0, dev)
    sizes = [shard_bounds(n_total, r, world)[1] - shard_bounds(n_total, r, world)[0] for r in range(world)]
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, expected {sizes[rank]} of {n_total}")
    dtype = torch.from_numpy(np.zeros(0, dtype=local.dtype)).dtype
    padded = torch.zeros(max(sizes), dim, dtype=dtype, device=dev)
    if sizes[rank]:
        padded[: sizes[rank]] = torch.from_numpy(np.ascontiguousarray(local)).to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu().numpy()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s picklable ``obj`` on every rank (the object itself on one process)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
