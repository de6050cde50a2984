"""Stage-B batching: zipped photo/sketch loaders and the gradient-accumulation plan (spec §1.7)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tvt.errors import ConfigError, DataError


def substep_plan(batch_size: int, accum_steps: int, skt_factor: int) -> list[tuple[slice, slice | None]]:
    """Row slices of one optimizer step's photo and sketch batches, one entry per sub-step.

    With ``b = batch_size // accum_steps``, sub-step ``i`` takes photo rows ``[i*b, min((i+1)*b, B))``;
    when ``(i+1) % skt_factor == 0`` it also takes sketch rows ``[(k-1)*b, k*b)`` with
    ``k = (i+1) // skt_factor``, else ``None``. If ``B % G != 0`` there are
    ``G + ceil((B % G) / b)`` sub-steps and the last photo slice is shorter (spec §1.7). Sketch
    slices are clipped to the sketch batch ``B // skt_factor`` (with these slices none is ever empty).
    ``accum_steps`` need not be a multiple of ``skt_factor``: as in the official loop, the sub-steps
    after the last full group of ``skt_factor`` have no sketch slice.
    """
    for name, value in (("batch_size", batch_size), ("accum_steps", accum_steps), ("skt_factor", skt_factor)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if batch_size < accum_steps:
        raise ConfigError(f"batch_size ({batch_size}) must be >= accum_steps ({accum_steps}): "
                          "each sub-step needs at least one image")
    b = batch_size // accum_steps
    steps = accum_steps + math.ceil((batch_size % accum_steps) / b)
    n_skt = batch_size // skt_factor
    plan: list[tuple[slice, slice | None]] = []
    for i in range(steps):
        img = slice(i * b, min((i + 1) * b, batch_size))
        skt: slice | None = None
        if (i + 1) % skt_factor == 0:
            k = (i + 1) // skt_factor
            start, stop = (k - 1) * b, min(k * b, n_skt)
            skt = slice(start, stop) if start < stop else None
        plan.append((img, skt))
    return plan


def _as_crops(x: Any) -> list[torch.Tensor]:
    """A collated image batch as a list of crops (a single-tensor transform gives one crop)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


class PairedLoader:
    """Two independently shuffled loaders, photos (batch ``B``) and sketches (``B // skt_factor``), zipped.

    Each has a :class:`DistributedSampler` (shuffle, ``seed``, explicit ``num_replicas`` and
    ``rank``, so no process group is needed) and a ``DataLoader(drop_last=True)``. An epoch ends
    with the shorter loader: ``len = min(len(photo_loader), len(sketch_loader))`` [Q23].

    Iterating yields ``(photo_crops, photo_labels, sketch_crops, sketch_labels)``: crops are lists
    of ``[B, 3, H, W]`` / ``[B // skt_factor, 3, H, W]`` tensors, labels ``[B]`` / ``[B // skt_factor]``.
    """

    def __init__(self, photo_ds: Dataset, sketch_ds: Dataset, batch_size: int, skt_factor: int, *,
                 num_workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> None:
        if batch_size < 1 or skt_factor < 1:
            raise ConfigError(f"batch_size ({batch_size}) and skt_factor ({skt_factor}) must be >= 1")
        if batch_size // skt_factor < 1:
            raise ConfigError(f"batch_size ({batch_size}) // skt_factor ({skt_factor}) is 0: "
                              "the sketch batch would be empty; lower skt_factor or raise batch_size")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank ({rank}) must be in [0, world_size) with world_size ({world_size}) >= 1")
        self.batch_size = batch_size
        self.sketch_batch_size = batch_size // skt_factor
        self.photo_loader = self._loader(photo_ds, "photo", batch_size, num_workers, seed, rank, world_size, pin_memory)
        self.sketch_loader = self._loader(sketch_ds, "sketch", self.sketch_batch_size, num_workers, seed, rank,
                                          world_size, pin_memory)

    @staticmethod
    def _loader(ds: Dataset, name: str, batch: int, num_workers: int, seed: int, rank: int, world_size: int,
                pin_memory: bool) -> DataLoader:
        n = len(ds)  # type: ignore[arg-type]
        per_rank = math.ceil(n / world_size)  # DistributedSampler pads to a multiple of world_size
        if per_rank < batch:
            need = (batch - 1) * world_size + 1  # smallest n with ceil(n / world_size) >= batch
            raise DataError(f"the {name} set has {n} images ({per_rank} per rank on {world_size} rank(s)), fewer "
                            f"than one {name} batch of {batch} per rank: short by {need - n} images (needs at "
                            f"least {need}); lower the batch size or add images")
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=num_workers,
                          pin_memory=pin_memory, drop_last=True, persistent_workers=False)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle both samplers for ``epoch`` (call before iterating, every epoch)."""
        self.photo_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        self.sketch_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]

    def __len__(self) -> int:
        return min(len(self.photo_loader), len(self.sketch_loader))

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], torch.Tensor]]:
        for (photos, photo_y), (sketches, sketch_y) in zip(self.photo_loader, self.sketch_loader):
            yield _as_crops(photos), photo_y, _as_crops(sketches), sketch_y
