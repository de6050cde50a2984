"""Deterministic, resumable data order for the training loops.

* :class:`SeededDataset` seeds every item's augmentation from ``(seed, epoch, stream, index)``.
  The crops of a sample then depend on neither the process, the rank, the DataLoader worker nor
  how many batches came before, which gives three things: a mid-epoch resume is bit-exact even
  with worker processes, ``W`` real ranks and ``W`` virtual ranks draw the same crops, and two
  ranks never share an augmentation stream (with one global seed they would [Q23]). Switch it off
  with ``data.per_sample_seed: false`` for the official process-global RNG behaviour.
* :class:`ResumableSampler` is a ``DistributedSampler`` that can start part-way into an epoch,
  so a resume skips consumed batches without loading them.
* :class:`ResumablePairedLoader` is the stage-B :class:`~tvt.data.paired.PairedLoader` built on
  those two; :class:`VirtualRankLoader` zips ``W`` of them for the [Q21] emulation.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tvt.data.paired import PairedLoader

STREAM_PHOTO, STREAM_SKETCH, STREAM_STAGE_A = 1, 2, 3


def sample_seed(seed: int, epoch: int, stream: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch (numpy ``SeedSequence``)."""
    words = np.random.SeedSequence([seed % 2**32, epoch, stream, index]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class SeededDataset(Dataset):
    """Wrap a map-style dataset so ``ds[i]`` runs under RNGs seeded from ``(seed, epoch, stream, i)``.

    The torch CPU generator, Python ``random`` and numpy's global RNG are seeded for the call and
    restored afterwards, so the caller's random streams (dropout, drop-path, ...) are untouched.
    CUDA generators are not involved (only ``torch.default_generator`` is reseeded).
    """

    def __init__(self, dataset: Dataset, seed: int, stream: int) -> None:
        self.dataset, self.seed, self.stream, self.epoch = dataset, int(seed), int(stream), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = sample_seed(self.seed, self.epoch, self.stream, int(index))
        saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            torch.default_generator.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose epoch can start after ``start`` samples (reset by ``set_epoch``).

    The order is the parent's (a function of ``seed`` and the epoch only), so skipping the first
    ``k * batch_size`` indices yields exactly the batches ``k, k+1, ...`` of the uninterrupted epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _worker_ignores_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which stops at a step
    boundary, saves and shuts the workers down (a worker killed mid-batch would abort the step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Shuffled, sharded ``drop_last`` loader over a :class:`ResumableSampler`."""
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      drop_last=True, worker_init_fn=_worker_ignores_signals if num_workers else None)


def seeded(dataset: Dataset, seed: int, stream: int, enabled: bool) -> Dataset:
    return SeededDataset(dataset, seed, stream) if enabled else dataset


class ResumablePairedLoader(PairedLoader):
    """:class:`PairedLoader` (same checks, batches and ``len``) with per-sample seeding and ``skip``.

    Iterating yields ``(photo_crops, photo_labels, sketch_crops, sketch_labels)`` with crops lists
    of ``[B, 3, H, W]`` / ``[B // skt_factor, 3, H, W]`` tensors.
    """

    def __init__(self, photo_ds: Dataset, sketch_ds: Dataset, batch_size: int, skt_factor: int, *,
                 num_workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 per_sample_seed: bool = True) -> None:
        photo_ds = seeded(photo_ds, seed, STREAM_PHOTO, per_sample_seed)
        sketch_ds = seeded(sketch_ds, seed, STREAM_SKETCH, per_sample_seed)
        super().__init__(photo_ds, sketch_ds, batch_size, skt_factor, num_workers=num_workers, seed=seed, rank=rank,
                         world_size=world_size, pin_memory=pin_memory)  # validates sizes
        common = dict(seed=seed, rank=rank, world_size=world_size, num_workers=num_workers, pin_memory=pin_memory)
        self.photo_loader = make_loader(photo_ds, batch_size, **common)
        self.sketch_loader = make_loader(sketch_ds, self.sketch_batch_size, **common)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle both samplers for ``epoch`` and start from its first batch."""
        super().set_epoch(epoch)
        for loader in (self.photo_loader, self.sketch_loader):
            if isinstance(loader.dataset, SeededDataset):
                loader.dataset.set_epoch(epoch)

    def skip(self, steps: int) -> None:
        """Start the current epoch at batch ``steps`` (call after :meth:`set_epoch`)."""
        self.photo_loader.sampler.start = steps * self.batch_size  # type: ignore[union-attr]
        self.sketch_loader.sampler.start = steps * self.sketch_batch_size  # type: ignore[union-attr]

    def full_len(self) -> int:
        """Batches in a whole epoch, whatever ``skip`` says."""
        n_photo = self.photo_loader.sampler.num_samples // self.batch_size  # type: ignore[union-attr]
        n_sketch = self.sketch_loader.sampler.num_samples // self.sketch_batch_size  # type: ignore[union-attr]
        return min(n_photo, n_sketch)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], torch.Tensor]]:
        # Both DataLoader iterators are created here, not on the first next(): creating one draws
        # a base seed from the global torch RNG, and a mid-epoch resume restores the saved RNG
        # state right after that draw, before the first batch is loaded.
        return _zipped(iter(self.photo_loader), iter(self.sketch_loader))


def _crops(x: Any) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _zipped(photos: Iterator, sketches: Iterator) -> Iterator[tuple[list[torch.Tensor], torch.Tensor,
                                                                     list[torch.Tensor], torch.Tensor]]:
    for (p, p_y), (s, s_y) in zip(photos, sketches):
        yield _crops(p), p_y, _crops(s), s_y


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], (list, tuple)):
        return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
    return torch.cat(parts)


class VirtualRankLoader:
    """``W`` :class:`ResumablePairedLoader` s for virtual ranks ``0..W-1`` of one process [Q21].

    Virtual rank ``r`` sees what ``DistributedSampler(num_replicas=W, rank=r)`` gives rank ``r``
    of a real ``W``-process run. A batch is the ranks' batches concatenated in rank order:
    photo rows ``[r*B, (r+1)*B)`` and sketch rows ``[r*B/s, (r+1)*B/s)`` belong to rank ``r``.
    """

    def __init__(self, loaders: list[ResumablePairedLoader]) -> None:
        self.loaders = loaders
        self.batch_size = loaders[0].batch_size
        self.sketch_batch_size = loaders[0].sketch_batch_size

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch)

    def skip(self, steps: int) -> None:
        for loader in self.loaders:
            loader.skip(steps)

    def full_len(self) -> int:
        return min(loader.full_len() for loader in self.loaders)

    def __len__(self) -> int:
        return min(len(loader) for loader in self.loaders)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], torch.Tensor]]:
        return self._concat([iter(loader) for loader in self.loaders])  # eager, as ResumablePairedLoader

    @staticmethod
    def _concat(iterators: list[Iterator]) -> Iterator:
        for parts in zip(*iterators):
            yield tuple(_cat([p[k] for p in parts]) for k in range(4))


class RankLoaders:
    """Stage-A batches of ``W`` virtual ranks [Q21]: one :func:`make_loader` per rank ``r`` of ``W``,
    each batch the ranks' batches concatenated in rank order (crops: rows ``[r*B, (r+1)*B)``).
    With one loader it is that loader with ``set_epoch`` / ``skip``."""

    def __init__(self, loaders: list[DataLoader]) -> None:
        self.loaders = loaders
        self.batch_size = int(loaders[0].batch_size or 1)

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
            if isinstance(loader.dataset, SeededDataset):
                loader.dataset.set_epoch(epoch)

    def skip(self, steps: int) -> None:
        for loader in self.loaders:
            loader.sampler.start = steps * self.batch_size  # type: ignore[union-attr]

    def full_len(self) -> int:
        return min(loader.sampler.num_samples // self.batch_size for loader in self.loaders)  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        if len(self.loaders) == 1:
            return ((_crops(x), y) for x, y in self.loaders[0])
        return self._concat([iter(loader) for loader in self.loaders])

    @staticmethod
    def _concat(iterators: list[Iterator]) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        for parts in zip(*iterators):
            yield _cat([_crops(p[0]) for p in parts]), torch.cat([p[1] for p in parts])
